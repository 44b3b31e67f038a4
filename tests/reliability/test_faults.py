"""Injected faults: a queue worker raising, cancels at random steps, out-of-memory.

What must hold after every fault: the original error reaches the caller, no thread is left
running, the user's input is untouched, and what was computed is kept and exact.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_patchwork as pw

FAST = settings(max_examples=15, deadline=None)


def ramp_model(x: torch.Tensor) -> torch.Tensor:
    """Position-dependent outputs (so a stitching mistake cannot hide)."""
    ramp = torch.arange(x.shape[-1], dtype=x.dtype)
    return torch.cat([x, x * 2 + ramp], 1)


def extra_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            return []
        time.sleep(0.01)
    return extra


# ---------------------------------------------------------------- queue worker raising
def subjects(count: int) -> list[pw.Subject]:
    return [pw.Subject(t1=pw.ScalarImage(torch.full((1, 8, 8, 8), float(i)))) for i in range(count)]


@pytest.mark.parametrize("failing", [0, 3, 9])
def test_queue_worker_error_reaches_the_consumer_promptly(failing):
    loaded: list[int] = []
    fail = {"on": True}

    def transform(subject: pw.Subject) -> pw.Subject:
        index = int(subject.t1.data[0, 0, 0, 0])
        loaded.append(index)
        if fail["on"] and index == failing:
            raise OSError(f"subject {index} is unreadable")
        time.sleep(0.01)
        return subject

    before = set(threading.enumerate())
    queue = pw.Queue(
        subjects(40),
        pw.UniformSampler(None, 4),
        max_length=6,
        patches_per_volume=2,
        num_workers=2,
        transform=transform,
        shuffle_subjects=False,
        shuffle_patches=False,
    )
    with pytest.raises(OSError, match=f"subject {failing} is unreadable"):
        list(queue)
    # promptly: the consumer got the error long before the other 39 subjects were loaded
    assert max(loaded) <= failing + 2 + 2
    assert extra_threads(before) == []
    fail["on"] = False
    assert len(list(queue)) == 80  # the next epoch works
    assert extra_threads(before) == []


# ---------------------------------------------------------------- cancel through the API
def ownership(plan: pw.GridPlan, done: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxels all of whose patches are finished; voxels no finished patch touched."""
    finished = torch.zeros(plan.spatial_shape, dtype=torch.int64)
    pending = torch.zeros_like(finished)
    for rank in range(len(plan)):
        (finished if rank < done else pending)[plan.location(rank).to_slices()] += 1
    return (finished > 0) & (pending == 0), finished == 0


@FAST
@given(
    stop_after=st.integers(1, 30),
    mode=st.sampled_from(["crop", "average", "hann", "gaussian"]),
    batch_size=st.integers(1, 5),
)
def test_closing_the_generator_at_any_step_keeps_an_exact_partial_output(
    stop_after, mode, batch_size
):
    volume = torch.rand(1, 18, 17, 16)
    original = volume.clone()
    arguments = {"patch_size": 8, "patch_overlap": 4, "overlap_mode": mode}
    steps = pw.iter_infer(ramp_model, volume, batch_size=batch_size, **arguments)
    before = set(threading.enumerate())
    step = next(steps)
    while step.done < step.total and stop_after > 1:
        step, stop_after = next(steps), stop_after - 1
    steps.close()
    partial = step.full_output()
    final = pw.infer(ramp_model, volume, batch_size=batch_size, **arguments)
    plan = pw.GridPlan(volume.shape[1:], (8, 8, 8), (4, 4, 4))
    finished, untouched = ownership(plan, step.done)
    if mode == "crop":
        assert torch.equal(partial[:, finished], final[:, finished])
    else:
        assert torch.allclose(partial[:, finished], final[:, finished], atol=1e-5)
    assert (partial[:, untouched] == 0).all() and torch.isfinite(partial).all()
    assert torch.equal(volume, original)
    assert extra_threads(before) == []


# ---------------------------------------------------------------- out of memory
class OutOfMemoryAt:
    """Raises CUDA's out-of-memory error at its n-th call (once), else runs ``ramp_model``."""

    def __init__(self, fail_at: int) -> None:
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return ramp_model(x)


@FAST
@given(fail_at=st.integers(1, 12), mode=st.sampled_from(["crop", "hann"]))
def test_out_of_memory_at_any_batch_falls_back_with_the_same_result(fail_at, mode):
    volume = torch.rand(1, 16, 16, 16)
    arguments = {"patch_size": 8, "patch_overlap": 4, "overlap_mode": mode, "batch_size": 2}
    expected = pw.infer(ramp_model, volume, **arguments)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        output = pw.infer(OutOfMemoryAt(fail_at), volume, **arguments)
    assert torch.allclose(output, expected, atol=1e-6)


def test_a_model_raising_mid_run_keeps_what_was_computed():
    volume = torch.rand(1, 16, 16, 16)
    calls = {"n": 0}

    def breaks_at_third_batch(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("bad batch")
        return x

    steps = pw.iter_infer(breaks_at_third_batch, volume, patch_size=8, batch_size=1)
    seen = []
    with pytest.raises(ValueError, match="bad batch"):
        for step in steps:
            seen.append(step)
    partial = seen[-1].full_output()
    assert seen[-1].done == 2
    for location in seen[-1].locations + seen[0].locations:
        region = (slice(None), *location.to_slices())
        assert torch.allclose(partial[region], volume[region], atol=1e-6)
