"""The CPU batch buffer kept between runs: reused, never shared, never of the wrong kind."""

import pytest
import torch

import napari_patchwork as pw
from napari_patchwork.core.inference import buffers


@pytest.fixture(autouse=True)
def nothing_kept(monkeypatch):
    monkeypatch.setattr(buffers, "_kept", [])


def batches_seen(volume, **settings):
    """The data pointers of the batches the model was given, run by run."""
    seen = []

    def model(x):
        seen.append(x.data_ptr())
        return x

    pw.infer(model, volume, patch_size=8, patch_overlap=4, batch_size=2, **settings)
    return seen


def test_the_next_run_reuses_the_last_runs_batch_buffer():
    volume = torch.rand(1, 12, 12, 12)
    first, second = batches_seen(volume), batches_seen(volume)
    assert set(first) == set(second) == {first[0]}  # one buffer, in both runs


def test_a_buffer_kept_in_inference_mode_is_not_given_to_a_run_outside_it():
    """An inference tensor cannot be written outside inference_mode: such a run gets its own."""
    volume = torch.rand(1, 12, 12, 12)
    with torch.inference_mode():
        inside = batches_seen(volume)
    steps = pw.iter_infer(lambda x: 2 * x, volume, patch_size=8, patch_overlap=4, batch_size=2)
    for step in steps:  # grad mode on, no inference mode: the kept inference tensor is not used
        assert step.done > 0
    assert inside


def test_two_runs_at_once_never_share_a_buffer():
    shape = (2, 1, 8, 8, 8)
    buffers.keep_batch_buffer(buffers.take_batch_buffer(shape))
    first, second = buffers.take_batch_buffer(shape), buffers.take_batch_buffer(shape)
    assert first.data_ptr() != second.data_ptr()


def test_a_large_buffer_is_not_kept(monkeypatch):
    monkeypatch.setattr(buffers, "KEPT_BATCH_BYTES", 1000)
    buffers.keep_batch_buffer(torch.empty(2, 1, 8, 8, 8))  # 4 KiB
    assert buffers._kept == []
