"""The inference widget cancelled at random steps, in a real viewer: no thread left, finished
patches exact in the output layers, the input layer untouched."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from qtpy.QtCore import QThreadPool

import napari_patchwork as pw
from napari_patchwork.data import make_sample
from napari_patchwork.widgets import TiledInferenceWidget

CANCEL_AFTER = sorted(random.Random(5).sample(range(1, 30), 3))  # steps, drawn once


@pytest.mark.parametrize("cancel_after", CANCEL_AFTER)
def test_cancel_at_a_random_step(make_napari_viewer, qtbot, cancel_after):
    viewer = make_napari_viewer()
    image = viewer.add_image(make_sample((24, 24, 24), seed=1).image - 0.3, name="image")
    before = np.array(image.data, copy=True)
    widget = TiledInferenceWidget(viewer)
    widget.source.value = "module:factory"
    widget.factory.value = "tests.widgets.test_inference_widget:slow_net"
    widget.patch_size.value, widget.patch_overlap.value = "8", "0"
    widget.mode.value, widget.batch_size.value = "crop", 1
    widget.run()
    qtbot.waitUntil(
        lambda: widget.last_step is not None and widget.last_step.done >= cancel_after,
        timeout=60_000,
    )
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=10_000)
    done = widget.last_step.done
    assert cancel_after <= done < 27 and "cancelled" in widget.status.value
    labels = viewer.layers["image prediction"].data
    probabilities = viewer.layers["image probability class 1"].data
    plan = pw.GridPlan(before.shape, (8, 8, 8))
    logits = torch.from_numpy(np.stack([before, -before]))
    for rank in range(len(plan)):
        box = plan.location(rank).to_slices()
        if rank < done:  # finished: exactly what the model gave
            assert np.array_equal(labels[box], (before[box] < 0).astype(labels.dtype))
            expected = torch.softmax(logits[(slice(None), *box)], 0).numpy()[1]
            assert np.allclose(probabilities[box], expected, atol=1e-6)
        else:  # never reached: still empty
            assert not labels[box].any() and not probabilities[box].any()
    assert np.array_equal(image.data, before)
    assert widget.run_button.enabled and not widget.cancel_button.enabled
