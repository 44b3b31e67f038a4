"""Sampler explorer as a user drives it: typed fields, the Sample / Re-roll / Cancel buttons,
a worker thread, closing the dock or the viewer mid-run, settings that become invalid."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from qtpy.QtCore import Qt, QThreadPool

from napari_patchwork.core.samplers.coverage import empirical_coverage
from napari_patchwork.widgets import SamplerExplorerWidget
from napari_patchwork.widgets._layers import boxes_to_vectors, locations_to_boxes
from napari_patchwork.widgets._napari import slice_position
from napari_patchwork.widgets.sampler_explorer import (
    CENTRES,
    EMPIRICAL,
    EXPECTED,
    MAX_BOXES,
    OUTPUTS,
    PATCHES,
    PROBABILITY,
)


def wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def no_threads_left(qtbot):
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=60_000)


def type_into(qtbot, field, text):
    """Select the field's text and type over it, as a user does."""
    field.native.selectAll()
    qtbot.keyClicks(field.native, text)


def click(qtbot, button):
    qtbot.mouseClick(button.native, Qt.MouseButton.LeftButton)


def drawn_centres(viewer):
    return viewer.layers[CENTRES].data


def test_sample_button_draws_in_a_worker(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    type_into(qtbot, widget.patch_size, "8, 8, 6")
    widget.num_patches.native.setValue(300)
    assert widget.patch_size.value == "8, 8, 6" and widget.num_patches.value == 300
    click(qtbot, widget.run_button)
    assert widget.running
    assert not widget.run_button.enabled and not widget.reroll_button.enabled
    assert widget.cancel_button.enabled and not widget.patch_size.enabled
    wait(qtbot, widget)
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    locations = widget.locations
    shape = viewer.layers["image"].data.shape
    assert len(locations) == 300 and all(loc.size == (8, 8, 6) for loc in locations)
    assert all(loc.inside(shape) for loc in locations)
    assert np.array_equal(drawn_centres(viewer), [loc.center for loc in locations])
    empirical = viewer.layers[EMPIRICAL].data
    assert np.array_equal(empirical, empirical_coverage(locations, shape).numpy())
    assert np.isclose(viewer.layers[EXPECTED].data.sum(), 300 * 8 * 8 * 6, rtol=1e-4)
    assert widget.progress.value == widget.progress.max == 300
    assert widget.info.value.startswith("300 patches of 8×8×6 voxels from the uniform sampler")
    assert "drawing" not in widget.info.value  # 300 boxes: none thinned
    no_threads_left(qtbot)


def test_past_2000_patches_boxes_are_thinned_and_all_centres_drawn(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    widget.patch_size.value, widget.num_patches.value = "6", 20_000
    widget.run()
    wait(qtbot, widget)
    assert "drawing 2,000 of 20,000 boxes; all centres shown" in widget.info.value
    assert len(drawn_centres(viewer)) == 20_000
    axis, position = slice_position(viewer, viewer.layers["image"])
    ini, fin = locations_to_boxes(widget.locations[:MAX_BOXES], axis, position)
    assert 0 < len(ini) < MAX_BOXES
    vectors = viewer.layers[PATCHES].data
    assert np.array_equal(vectors, boxes_to_vectors(ini, fin, axis, position))
    every = locations_to_boxes(widget.locations, axis, position)[0]
    assert len(every) > len(ini)  # more boxes cut this slice than are drawn
    no_threads_left(qtbot)


def test_cancel_mid_run_draws_nothing_new(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    widget.patch_size.value, widget.num_patches.value = "6", 100_000
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.value >= 1_000, timeout=60_000)
    click(qtbot, widget.cancel_button)
    wait(qtbot, widget)
    assert widget.info.value.startswith("cancelled at ")
    assert widget.locations == [] and widget.result is None
    assert not any(name in viewer.layers for name in OUTPUTS)
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    no_threads_left(qtbot)


def test_closing_the_dock_during_a_run_drops_the_late_result(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    inserted = len(viewer.layers.events.inserted.callbacks)
    steps = len(viewer.dims.events.current_step.callbacks)
    themes = len(viewer.events.theme.callbacks)
    widget = SamplerExplorerWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, area="right")
    widget.patch_size.value, widget.num_patches.value = "6", 100_000
    worker = widget.run()
    qtbot.waitUntil(lambda: widget.progress.value >= 1_000, timeout=60_000)
    viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: widget.lifecycle.closed, timeout=5_000)
    assert widget.worker is None and worker.abort_requested
    no_threads_left(qtbot)
    qtbot.wait(50)
    assert not any(name in viewer.layers for name in OUTPUTS)
    assert len(viewer.layers.events.inserted.callbacks) == inserted
    assert len(viewer.dims.events.current_step.callbacks) == steps
    assert len(viewer.events.theme.callbacks) == themes


CLOSE_VIEWER_DURING_RUN = textwrap.dedent(
    """
    import time
    import numpy as np
    import napari
    from napari_patchwork.widgets import SamplerExplorerWidget

    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((40, 40, 40), dtype=np.float32))
    widget = SamplerExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.patch_size.value, widget.num_patches.value = "6", 100_000
    widget.run()
    app = napari.qt.get_qapp()
    deadline = time.time() + 60
    while widget.progress.value < 1_000 and time.time() < deadline:
        app.processEvents()
        time.sleep(0.01)
    assert widget.running, "the run never started"
    done = widget.progress.value
    viewer.close()
    for _ in range(300):
        app.processEvents()
        time.sleep(0.01)
    assert widget.lifecycle.closed and widget.worker is None
    print("closed cleanly after", done, "patches")
    """
)


def test_closing_the_viewer_during_a_run_ends_cleanly(tmp_path):
    script = tmp_path / "close_viewer_during_sampling.py"
    script.write_text(CLOSE_VIEWER_DURING_RUN)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "closed cleanly" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_reroll_sets_a_new_seed_and_redraws(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    widget.patch_size.value, widget.num_patches.value, widget.seed.value = "8", 50, 3
    widget.run()
    wait(qtbot, widget)
    first = drawn_centres(viewer).copy()
    click(qtbot, widget.reroll_button)
    wait(qtbot, widget)
    seed = widget.seed.value
    assert seed != 3
    second = drawn_centres(viewer)
    assert len(second) == 50 and not np.array_equal(first, second)
    widget.seed.value = 3  # the old seed gives the old patches back
    widget.sample()
    assert np.array_equal(drawn_centres(viewer), first)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("patch_size", "48", "patch size 48×48×48 voxels is larger than image 'image'"),
        ("patch_size", "8, 8", "patch size must be 1 or 3 integers, got '8, 8'"),
        ("patch_size", "0", "patch size must be positive"),
        ("sampler", "weighted", "the weighted sampler needs a probability map"),
        ("label_probabilities", "1: 0.5, 2", "label probabilities must look like"),
    ],
)
def test_invalid_settings_clear_the_stale_results(
    viewer_with_sample, qtbot, setting, value, message
):
    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    widget.labels_layer.value = viewer.layers["labels"]
    widget.patch_size.value, widget.num_patches.value = "8", 200
    widget.run()
    wait(qtbot, widget)
    assert all(name in viewer.layers for name in OUTPUTS)
    assert widget.figure.axes[0].patches  # bars
    if setting == "label_probabilities":
        widget.sampler.value = "label"
    getattr(widget, setting).value = value
    assert message in widget.info.value and widget.info.value.startswith("⚠")
    assert not any(name in viewer.layers for name in OUTPUTS)
    assert widget.locations == [] and widget.composition() is None
    assert not widget.figure.axes[0].patches  # the plot says what to do, no stale bars
    assert widget.run() is None and message in widget.info.value


def test_an_error_found_while_sampling_clears_the_stale_results(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    widget.patch_size.value, widget.num_patches.value = "8", 100
    widget.run()
    wait(qtbot, widget)
    broken = np.array(viewer.layers["probability"].data, copy=True)
    broken[3, 3, 3] = -1.0
    viewer.add_image(broken, name="negative map")
    widget.sampler.value = "weighted"
    widget.probability.value = viewer.layers["negative map"]
    widget.run()
    wait(qtbot, widget)
    assert "probability map 'negative map' contains negative values" in widget.info.value
    assert "probability_map" not in widget.info.value  # the widget's words, not the API's
    assert not any(name in viewer.layers for name in OUTPUTS)


def test_a_valid_change_says_the_layers_are_from_the_last_sample(viewer_with_sample, qtbot):
    widget = SamplerExplorerWidget(viewer_with_sample)
    widget.patch_size.value = "8"
    widget.sample()
    widget.num_patches.value = 150
    assert "Sample to redraw" in widget.info.value
    assert CENTRES in viewer_with_sample.layers


def test_the_dock_keeps_its_width(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, area="right")
    qtbot.wait(50)
    width = dock.width()
    widget.sampler.value = "label"
    widget.labels_layer.value = viewer.layers["labels"]
    widget.label_probabilities.value = ", ".join(f"{v}: 0.1" for v in range(3, 40))
    widget.patch_size.value, widget.num_patches.value = "6", 20_000
    widget.run()
    wait(qtbot, widget)
    assert "⚠" in widget.info.value and len(widget.info.value) > 200  # a long error
    widget.label_probabilities.value = "0: 0.2, 1: 0.4, 2: 0.4, 7: 0.5"
    widget.run()
    wait(qtbot, widget)
    assert "drawing 2,000 of 20,000 boxes" in widget.info.value
    assert "no voxel of label 7" in widget.info.value  # the warning, in the status
    qtbot.wait(50)
    assert dock.width() <= width + 2
    assert viewer.window._qt_window.width() < 4000
    no_threads_left(qtbot)


def test_layers_are_named_coloured_and_have_colour_bars(viewer_with_sample):
    viewer = viewer_with_sample
    widget = SamplerExplorerWidget(viewer)
    widget.patch_size.value = "8"
    widget.sample()
    centres, boxes = viewer.layers[CENTRES], viewer.layers[PATCHES]
    assert not np.allclose(centres.face_color[0], boxes.edge_color[0])
    assert viewer.layers[PROBABILITY].colormap.name == "inferno"
    for name in (PROBABILITY, EXPECTED, EMPIRICAL):
        assert viewer.layers[name].colorbar.visible
