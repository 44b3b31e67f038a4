"""TrainerProcess: a real Trainer in a real child process, driven through its pipes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import types

import numpy as np
import pytest
import torch

from napari_patchwork.core.training import Trainer, TrainingConfig
from napari_patchwork.core.training import process as process_module
from napari_patchwork.core.training.process import (
    LocalTrainer,
    TrainerProcess,
    prewarm,
    shutdown_spare,
    start_trainer,
)
from napari_patchwork.io.models import model_class_values

CONFIG = TrainingConfig(patch_size=8, width=2, seed=0, iterations=4, preview_every=0.01)


@pytest.fixture(scope="module")
def pair():
    image = torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(0))
    strokes = torch.zeros(16, 16, 16, dtype=torch.int64)
    strokes[2:5, 2:5, 2:5], strokes[10:13, 10:13, 10:13] = 1, 3
    return image.numpy(), strokes.numpy()


@pytest.fixture
def trainer(pair):
    with TrainerProcess(pair, CONFIG) as trainer:
        yield trainer


def test_trains_as_the_trainer_here_does(trainer, pair) -> None:
    steps = list(trainer.run())
    here = Trainer(pair, CONFIG)
    expected = [step.loss for step in here.run()]
    assert [step.iteration for step in steps] == [1, 2, 3, 4] == list(range(1, 5))
    assert trainer.iteration == 4 and trainer.class_values == [1, 3]
    np.testing.assert_allclose(trainer.losses, expected, rtol=1e-3)
    prediction = trainer.predict()
    assert prediction.labels.shape == (16, 16, 16)
    assert set(np.unique(prediction.labels).tolist()) <= {1, 3}


def test_errors_come_back_as_themselves(pair) -> None:
    image, strokes = pair
    with pytest.raises(ValueError, match="class"):
        TrainerProcess((image, np.where(strokes > 0, 1, 0)), CONFIG)  # one class painted
    with pytest.raises(TypeError, match="config must be a TrainingConfig"):
        TrainerProcess(pair, {"patch_size": 8})


def test_a_bad_run_setting_is_raised_and_the_trainer_goes_on(trainer) -> None:
    with pytest.raises(ValueError, match="seconds"):
        list(trainer.run(seconds=-1.0))
    assert [step.iteration for step in trainer.run(iterations=2)] == [1, 2]


def test_stop_from_another_thread_keeps_the_weights(trainer, tmp_path) -> None:
    steps = trainer.run(seconds=600.0, iterations=10**6)
    next(steps)
    threading.Timer(0.2, trainer.stop).start()
    done = [step.iteration for step in steps]
    assert len(done) < 200 and trainer.running
    iteration = trainer.iteration
    assert [step.iteration for step in trainer.run(iterations=2)] == [iteration + 1, iteration + 2]
    path = trainer.save(tmp_path / "model.pt2")
    assert path.exists() and model_class_values(path) == [1, 3]


def test_previews_follow_the_region_the_caller_shows(trainer) -> None:
    first = (slice(3, 4), slice(0, 16), slice(0, 16))
    moved = (slice(0, 16), slice(9, 10), slice(0, 16))
    regions, previews = [first], []
    steps = trainer.run(seconds=120.0, iterations=10**6, preview=lambda: regions[-1])
    for step in steps:
        if step.preview is not None:
            previews.append(step.preview.region)
            regions.append(moved)  # the user moves to another slice after the first preview
        if previews and previews[-1] == moved:
            break
    steps.close()
    assert previews[0] == first and previews[-1] == moved


def test_closing_a_run_early_leaves_the_trainer_usable(trainer) -> None:
    steps = trainer.run(seconds=600.0, iterations=10**6)
    next(steps)
    steps.close()  # the caller stops iterating: the child's run is stopped and drained
    done = trainer.iteration  # the steps drained count too: the next run goes on from here
    assert len(trainer.losses) == done
    assert [step.iteration for step in trainer.run(iterations=1)] == [done + 1]


def test_a_stop_after_a_run_does_not_cancel_the_next_one(trainer) -> None:
    assert [step.iteration for step in trainer.run(iterations=2)] == [1, 2]
    trainer.stop()  # e.g. Stop pressed during the final prediction
    assert [step.iteration for step in trainer.run(iterations=2)] == [3, 4]


def test_a_call_during_a_run_is_refused_and_the_run_goes_on(trainer) -> None:
    steps = trainer.run(iterations=3)
    assert next(steps).iteration == 1
    with pytest.raises(RuntimeError, match="in progress"):
        trainer.predict()
    assert [step.iteration for step in steps] == [2, 3]
    assert trainer.predict().labels.shape == (16, 16, 16)  # its own reply, not a step


def test_previews_carry_labels_without_probabilities(trainer) -> None:
    region = (slice(0, 16), slice(0, 16), slice(0, 16))  # a 3D view: the whole volume
    previews = [s.preview for s in trainer.run(iterations=20, preview=region) if s.preview]
    assert previews, "no preview was due"
    assert previews[0].labels.shape == (16, 16, 16)
    assert previews[0].probabilities.shape == (2, 0, 0, 0)  # not piped: predict() gives them
    assert trainer.predict().probabilities.shape == (2, 16, 16, 16)


def test_input_the_child_cannot_read_is_an_error_not_a_hang(pair) -> None:
    module = types.ModuleType("patchwork_test_only_in_the_parent")

    class ParentOnlyArray(np.ndarray):
        pass

    ParentOnlyArray.__module__ = module.__name__
    ParentOnlyArray.__qualname__ = "ParentOnlyArray"
    module.ParentOnlyArray = ParentOnlyArray
    sys.modules[module.__name__] = module
    try:
        image = pair[0].view(ParentOnlyArray)
        with pytest.raises(TypeError, match="could not read its input"):
            TrainerProcess((image, pair[1]), CONFIG)
    finally:
        del sys.modules[module.__name__]


def test_a_refused_input_keeps_the_idle_child_for_the_next_trainer(pair) -> None:
    image, strokes = pair
    prewarm()
    spare = process_module._spare
    with pytest.raises(ValueError, match="two classes"):
        TrainerProcess((image, np.where(strokes > 0, 1, 0)), CONFIG)
    assert process_module._spare is spare and spare.poll() is None  # no 2-4 s for a new one
    with TrainerProcess(pair, CONFIG) as trainer:
        assert trainer._process is spare


def test_a_frozen_application_trains_here(pair, monkeypatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)  # PyInstaller's mark
    trainer = start_trainer(pair, CONFIG)
    assert isinstance(trainer, LocalTrainer)
    assert [step.iteration for step in trainer.run(iterations=2)] == [1, 2]
    trainer.stop()  # between runs (a Stop during the final prediction): does nothing
    assert [step.iteration for step in trainer.run(iterations=2)] == [3, 4]
    trainer.close()


def test_an_interpreter_that_cannot_start_trains_here(pair, monkeypatch, tmp_path) -> None:
    shutdown_spare()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "moved" / "python"))
    prewarm()  # no spare, no error: the trainer that needs one decides
    assert process_module._spare is None
    trainer = start_trainer(pair, CONFIG)
    assert isinstance(trainer, LocalTrainer)
    trainer.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_process_is_reported_not_hung(trainer) -> None:
    steps = trainer.run(seconds=600.0, iterations=10**6)
    next(steps)
    os.kill(trainer._process.pid, signal.SIGKILL)  # what the kernel does when memory runs out
    with pytest.raises(RuntimeError, match="ended unexpectedly"):
        list(steps)
    assert not trainer.running
    with pytest.raises(RuntimeError):
        trainer.predict()


def test_close_ends_the_child_and_a_spare_is_taken(pair) -> None:
    prewarm()
    trainer = TrainerProcess(pair, CONFIG)
    process = trainer._process
    trainer.close()
    assert process.poll() is not None
    shutdown_spare()


def test_closing_from_a_gui_does_not_wait_for_a_message_being_written(pair) -> None:
    trainer = TrainerProcess(pair, CONFIG)
    process = trainer._process
    trainer._write_lock.acquire()  # as while another thread pipes Continue's volume
    try:
        start = time.perf_counter()
        trainer.close(wait=False)  # napari closing, on its GUI thread
        assert time.perf_counter() - start < 0.5 and process.poll() is None
    finally:
        trainer._write_lock.release()  # the write ends: the child is closed after it
    process.wait(15)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, /proc")
@pytest.mark.parametrize("user_setting", [None, "262144"], ids=["ours", "the-users"])
def test_the_child_keeps_freed_memory_unless_the_user_set_malloc(user_setting, monkeypatch):
    """The training child starts with glibc told to keep what it frees (a step's activations
    then do not fault in afresh: 289 -> 364-390 iterations in 20 s on nibabel's EPI); a user's own
    malloc setting is left as it is."""
    if user_setting is None:
        monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    else:
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", user_setting)
    child = process_module._spawn()
    try:  # the environment shows once exec has set it up (Popen returns a moment before)
        variables: dict[str, str] = {}
        deadline = time.monotonic() + 10
        while not variables and time.monotonic() < deadline:
            with open(f"/proc/{child.pid}/environ", "rb") as environ:
                entries = [entry for entry in environ.read().split(b"\0") if entry]
            variables = dict(entry.decode().split("=", 1) for entry in entries)
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()
    if user_setting is None:
        assert variables["MALLOC_MMAP_THRESHOLD_"] == str(32 << 20)
        assert variables["MALLOC_TRIM_THRESHOLD_"] == str(1 << 30)
    else:
        assert variables["MALLOC_MMAP_THRESHOLD_"] == user_setting
        assert "MALLOC_TRIM_THRESHOLD_" not in variables
