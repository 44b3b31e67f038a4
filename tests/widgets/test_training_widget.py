"""The "Train from annotations" widget in a real napari viewer, training a real network."""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import signal
import sys
import time

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_patchwork.core.training import process as training_process
from napari_patchwork.core.training import scribbles_from_labels
from napari_patchwork.io.models import model_class_values
from napari_patchwork.widgets import training
from napari_patchwork.widgets.training import (
    SAVE_CALLBACKS,
    SAVED_MODELS,
    TrainingWidget,
    sparkline,
)

SCALE = (0.5, 0.5, 0.8)


@pytest.fixture
def widget(make_napari_viewer, small_sample, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(small_sample.image, name="image", scale=SCALE, translate=(3, 2, 1))
    strokes = scribbles_from_labels(small_sample.labels, slices=3, disks=2, seed=0)
    viewer.add_labels(strokes.astype(np.int32), name="strokes", scale=SCALE, translate=(3, 2, 1))
    widget = TrainingWidget(viewer)
    widget.annotations.value = viewer.layers["strokes"]
    widget.patch_size.value = 16
    widget.device.value = "cpu"
    yield widget
    if widget.trainer is not None:
        widget.trainer.close()  # the training process of this test, ended with it


def wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def test_new_annotation_layer_is_placed_like_the_image(widget) -> None:
    layer = widget.new_annotations()
    image = widget.viewer.layers["image"]
    assert layer.name == "image annotations" and layer.data.shape == image.data.shape
    assert not layer.data.any()
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert widget.annotations.value is layer and layer.mode == "paint"


def test_train_shows_a_prediction_and_saves_the_painted_values(widget, qtbot, tmp_path) -> None:
    widget.seconds.value = 3.0
    assert widget.train() is not None
    wait(qtbot, widget)
    assert widget.trainer is not None and widget.trainer.iteration > 0
    prediction = widget.viewer.layers["image training prediction"]
    assert prediction.data.shape == widget.viewer.layers["image"].data.shape
    assert set(np.unique(prediction.data).tolist()) <= {1, 2, 3}  # the whole volume at the end
    np.testing.assert_allclose(prediction.scale, SCALE)
    assert "stopped after" in widget.status.value
    assert "painted voxels reproduced: " in widget.status.value
    assert widget.curve.value.strip()[0] in "▁▂▃▄▅▆▇█"
    widget.save_file.value = tmp_path / "cells"
    saved = []
    SAVE_CALLBACKS.append(lambda name, where: saved.append((name, where)))
    try:
        path = widget.save()
    finally:
        SAVE_CALLBACKS.pop()
    assert saved == [("cells", tmp_path / "cells.pt2")]
    assert path == tmp_path / "cells.pt2" and model_class_values(path) == [1, 2, 3]
    assert SAVED_MODELS["cells"] == path


def test_stop_keeps_the_weights_and_continue_resumes(widget, qtbot) -> None:
    widget.seconds.value = 600.0
    widget.train()
    qtbot.waitUntil(lambda: widget.last_step is not None, timeout=60_000)
    assert gc.get_freeze_count() > 0 and gc.isenabled()  # set up: frozen, collecting again
    widget.stop()
    wait(qtbot, widget)
    qtbot.waitUntil(lambda: gc.get_freeze_count() == 0, timeout=5_000)
    done = widget.trainer.iteration
    assert 0 < done and widget.continue_button.enabled
    strokes = widget.viewer.layers["strokes"]
    strokes.data[0, 0, 0] = 1  # a correction
    widget.seconds.value = 1.0
    widget.resume()
    wait(qtbot, widget)
    assert widget.trainer.iteration > done


def test_status_line_is_redrawn_a_few_times_a_second_not_at_every_step(widget, qtbot) -> None:
    widget.seconds.value = 1.0
    widget.train()
    wait(qtbot, widget)
    texts, label = [], widget.status.native
    set_text = label.setText
    label.setText = lambda text: (texts.append(text), set_text(text))  # what Qt is asked to draw
    step = widget.last_step
    widget._status_shown = -math.inf  # a run's first step
    for _ in range(50):  # steps arriving faster than STATUS_SECONDS: one redraw
        widget._on_step(step)
    assert len(texts) == 1 and texts[0].startswith(f"iteration {step.iteration}")
    time.sleep(training.STATUS_SECONDS)
    widget._on_step(step)  # the next one after STATUS_SECONDS: redrawn
    assert len(texts) == 2
    preview = widget.trainer.predict(region=(slice(0, 1), slice(0, 36), slice(0, 32)))
    widget._on_step(dataclasses.replace(step, preview=preview))  # a preview: at once
    assert len(texts) == 3


def test_after_stop_the_status_says_stopping_then_the_whole_volume_prediction(
    widget, qtbot
) -> None:
    """Stop: "stopping…" stays (steps still arriving do not replace it with a stale line),
    then the final prediction is announced, then the result."""
    texts, label = [], widget.status.native
    set_text = label.setText
    label.setText = lambda text: (texts.append(text), set_text(text))  # what Qt is asked to draw
    widget.seconds.value = 600.0
    widget.train()
    qtbot.waitUntil(lambda: widget.last_step is not None, timeout=60_000)
    widget.stop()
    wait(qtbot, widget)
    assert "stopping…" in texts, texts
    after = texts[texts.index("stopping…") :]
    assert after[1].endswith("predicting the whole volume…"), after
    assert after[-1].startswith("stopped after") and "reproduced" in after[-1]
    assert len(after) == 3, after


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_training_killed_by_the_system_leaves_napari_and_the_strokes(widget, qtbot) -> None:
    strokes = widget.viewer.layers["strokes"]
    painted = strokes.data.copy()
    widget.seconds.value = 600.0
    widget.train()
    qtbot.waitUntil(lambda: widget.last_step is not None, timeout=60_000)
    os.kill(widget.trainer._process.pid, signal.SIGKILL)  # as the kernel does out of memory
    wait(qtbot, widget)
    assert widget.status.value.startswith("⚠") and "ended unexpectedly" in widget.status.value
    assert "out of memory" in widget.status.value  # why a process is killed, in words
    np.testing.assert_array_equal(strokes.data, painted)  # the user's work is untouched
    assert "image training prediction" in widget.viewer.layers and widget.train_button.enabled
    assert not widget.continue_button.enabled and not widget.save_button.enabled  # nothing left
    widget.seconds.value = 2.0
    widget.train()  # a new process
    wait(qtbot, widget)
    assert "stopped after" in widget.status.value


def test_closing_the_viewer_mid_run_ends_the_training_process(widget, qtbot) -> None:
    widget.viewer.window.add_dock_widget(widget)
    widget.seconds.value = 600.0
    widget.train()
    qtbot.waitUntil(lambda: widget.last_step is not None, timeout=60_000)
    process = widget.trainer._process
    widget.viewer.close()  # the user quits napari while training runs
    qtbot.waitUntil(lambda: process.poll() is not None, timeout=15_000)
    assert widget.lifecycle.closed and not widget.running


def test_closing_napari_while_the_trainer_starts_leaves_no_process(widget, qtbot) -> None:
    widget.viewer.window.add_dock_widget(widget)
    widget.seconds.value = 600.0
    widget.train()  # the worker is building the trainer (the child loads the pair)
    widget.viewer.close()  # before the first step
    qtbot.waitUntil(lambda: widget.trainer is not None, timeout=60_000)
    process = widget.trainer._process
    qtbot.waitUntil(lambda: process.poll() is not None, timeout=30_000)  # not 600 s of training


def test_closing_the_dock_ends_the_prewarmed_process(widget, qtbot) -> None:
    spare = training_process._spare  # started when the dock opened, for the first Train
    assert spare is not None and spare.poll() is None
    widget.viewer.window.add_dock_widget(widget)
    widget.viewer.close()  # the user opened the dock, never trained, and quit
    qtbot.waitUntil(lambda: spare.poll() is not None, timeout=15_000)  # not ~280 MB kept
    assert training_process._spare is None


def test_a_frozen_napari_trains_in_its_own_process(widget, qtbot, monkeypatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)  # PyInstaller: no child Python
    widget.seconds.value = 2.0
    widget.train()
    wait(qtbot, widget)
    assert isinstance(widget.trainer, training_process.LocalTrainer)
    assert "stopped after" in widget.status.value and widget.continue_button.enabled


def test_typing_a_patch_size_gives_that_patch_size(widget, qtbot) -> None:
    field = widget.patch_size.native
    for typed in ("16", "128", "24"):
        field.selectAll()
        qtbot.keyClicks(field, typed)  # key by key, as a user types
        qtbot.keyClick(field, Qt.Key.Key_Return)
        assert widget.patch_size.value == int(typed)
    field.selectAll()
    qtbot.keyClicks(field, "3")
    qtbot.keyClick(field, Qt.Key.Key_Return)
    assert widget.train() is None and "patch size must be even and >= 4" in widget.status.value


def test_a_patch_larger_than_the_image_is_refused(widget, qtbot) -> None:
    widget.patch_size.value = 256  # the sample is 40 x 36 x 32: all padding, out of memory
    widget.train()
    wait(qtbot, widget)
    assert widget.status.value.startswith("⚠")
    assert "patch size 256 is larger than image in every direction" in widget.status.value


def test_saving_where_it_cannot_shows_why(widget, qtbot, tmp_path) -> None:
    widget.seconds.value = 2.0
    widget.train()
    wait(qtbot, widget)
    widget.save_file.value = str(tmp_path / "no such folder" / "model.pt2")
    assert widget.save() is None  # no exception out of the button
    assert widget.status.value.startswith("⚠") and "no such folder" in widget.status.value
    assert widget.save_button.enabled  # the model is still there: choose another place
    widget.save_file.value = str(tmp_path / "model.pt2")
    assert widget.save() == tmp_path / "model.pt2"


def test_live_preview_of_the_visible_slice(widget, qtbot) -> None:
    viewer = widget.viewer
    viewer.dims.ndisplay = 2
    widget.image.value = viewer.layers["image"]
    widget._track_view()
    region = widget._region
    assert region is not None and sum(s.stop - s.start == 1 for s in region) == 1
    assert region[0].stop - region[0].start == 1
    viewer.dims.order = (2, 0, 1)  # the user turns the view: axis 2 is sliced now
    assert widget._region[2].stop - widget._region[2].start == 1
    assert widget._region[0] == slice(0, viewer.layers["image"].data.shape[0])


def test_bad_settings_are_shown_in_widget_words(widget, qtbot) -> None:
    widget.patch_size.value = 5
    assert widget.train() is None
    assert "patch size must be even" in widget.status.value
    widget.patch_size.value = 16
    widget.viewer.layers.remove("strokes")
    assert widget.annotations.value is None
    assert widget.train() is None
    assert "annotations layer: choose or create one" in widget.status.value
    assert widget.resume() is None
    assert widget.save() is None and "train a model first" in widget.status.value


def test_one_class_painted_is_refused_in_the_status(widget, qtbot) -> None:
    widget.viewer.layers["strokes"].data[:] = np.minimum(widget.viewer.layers["strokes"].data, 1)
    widget.train()
    wait(qtbot, widget)
    assert "at least two classes" in widget.status.value
    assert "layer layer" not in widget.status.value  # reworded once, not at each hand-over
    assert "image training prediction" not in widget.viewer.layers  # a failed start adds none


def test_sparkline_follows_the_loss() -> None:
    assert sparkline([]) == ""
    assert sparkline([1.0, 1.0]) == "▁▁"
    assert sparkline(list(np.linspace(2, 0, 100)), width=8) == "█▇▆▅▄▃▂▁"


def test_network_choice_shows_for_scratch_only_and_reaches_the_config(widget) -> None:
    def shown(control) -> bool:  # not hidden (visible once the dock is on screen)
        return not control.native.isHidden()

    assert shown(widget.network) and widget.config().network == "filters"
    widget.network.value = "unet"
    assert widget.config().network == "unet"
    widget.init.value = "demo"
    assert not shown(widget.network)
    widget.init.value = "scratch"
    assert shown(widget.network)
