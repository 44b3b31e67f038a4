"""Widgets on real-world scans: every layer they create sits where the input sits.

An oblique, anisotropic LAS NIfTI written with nibabel is opened through the plugin's reader
(as File > Open does); each widget runs; every layer it created must map voxels to the same
world points as the input (``data_to_world``), in 2D and 3D views and after an ROI crop.
Saving the prediction through the plugin's writer must give back the scan's affine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest

from napari_patchwork.napari_contributions import read_layers
from napari_patchwork.widgets import PatchGridWidget, SamplerExplorerWidget, TiledInferenceWidget
from napari_patchwork.widgets._napari import (
    data_to_world_matrix,
    slice_position,
    voxel_on_screen,
)
from napari_patchwork.widgets.inference import roi_box

# napari's own note on oblique data in 2D views (it shows the data plane without the rotation)
pytestmark = pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning")
VOXELS = [(0, 0, 0), (5, 3, 2), (17, 11, 9), (3.5, 7.25, 1.0)]


def oblique_las_affine() -> np.ndarray:
    """3 × 1.2 × 2 mm voxels, LAS, rotated 20° about z and 10° about x, off the origin."""
    angle, tilt = np.deg2rad(20), np.deg2rad(10)
    about_z = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    about_x = np.array(
        [[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = about_z @ about_x @ np.diag([-3.0, 1.2, 2.0])
    affine[:3, 3] = [90.0, -126.0, -72.0]
    return affine


@pytest.fixture
def scan(tmp_path):
    rng = np.random.default_rng(4)
    volume = rng.normal(size=(24, 20, 16)).astype(np.float32)
    volume[6:18, 5:15, 4:12] += 3  # something to segment
    path = tmp_path / "oblique_las_t1.nii.gz"
    nib.save(nib.Nifti1Image(volume, oblique_las_affine()), str(path))
    return path


@pytest.fixture
def viewer_with_scan(make_napari_viewer, scan):
    viewer = make_napari_viewer()
    for data, meta, kind in read_layers(str(scan)):  # the plugin's reader, as File > Open
        getattr(viewer, f"add_{kind}")(data, **meta)
    return viewer


def assert_placed_like(layer, like, offset=(0, 0, 0)):
    lead = [0] * (layer.ndim - 3)
    for voxel in VOXELS:
        world = np.asarray(layer.data_to_world([*lead, *voxel]))[-3:]
        expected = np.asarray(like.data_to_world(np.add(voxel, offset)))[-3:]
        assert np.allclose(world, expected, atol=1e-6), (layer.name, voxel, world, expected)


def created(viewer, before):
    return [layer for layer in viewer.layers if layer.name not in before]


def test_reader_places_the_scan_at_its_affine(viewer_with_scan):
    image = viewer_with_scan.layers[0]
    assert np.allclose(data_to_world_matrix(image), oblique_las_affine(), atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_the_slice_on_screen_is_the_slice_napari_shows(viewer_with_scan, axis):
    """Previews and refreshes follow the slice napari draws of the oblique scan, not the
    slice the whole 3D point maps to (those were 13 slices apart here)."""
    viewer = viewer_with_scan
    image = viewer.layers[0]
    viewer.dims.order = (axis, *(a for a in range(3) if a != axis))
    steps = viewer.dims.nsteps[axis]
    for step in np.linspace(0, steps - 1, 7).astype(int):
        viewer.dims.set_current_step(axis, int(step))
        shown = image._data_slice.point[axis]  # napari's own slice of the layer's data
        assert slice_position(viewer, image) == (axis, int(round(shown))), (step, shown)


def test_patch_grid_never_moves_the_slider_on_an_oblique_scan(viewer_with_scan, qtbot):
    """Turned so that the slider starts outside the oblique volume, the grid drew lines
    there, which widened the slider's range and moved the slice further out; stepping the
    slider then stuck and napari raised RecursionError (a user test, nibabel's EPI)."""
    viewer = viewer_with_scan
    image = viewer.layers[0]
    widget = PatchGridWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    viewer.dims.roll()
    viewer.dims.roll()
    axis = viewer.dims.order[0]
    ranges = [tuple(r) for r in viewer.dims.range]
    viewer.dims.set_current_step(axis, 0)
    qtbot.wait(20)
    outside = 0
    for step in range(1, viewer.dims.nsteps[axis]):
        viewer.dims.set_current_step(axis, step)
        assert viewer.dims.current_step[axis] == step
        data_axis, index = slice_position(viewer, image)
        lines = viewer.layers["patch grid"].data
        inside = 0 <= index < image.data.shape[data_axis]
        outside += not inside
        assert bool(len(lines)) == inside, (step, index)
    assert [tuple(r) for r in viewer.dims.range] == ranges
    assert outside > 0  # the slider did pass outside the volume


@pytest.mark.parametrize("ndisplay", [2, 3])
def test_patch_grid_layers_are_placed_like_the_scan(viewer_with_scan, ndisplay):
    viewer = viewer_with_scan
    viewer.dims.ndisplay = ndisplay
    image = viewer.layers[0]
    before = {layer.name for layer in viewer.layers}
    widget = PatchGridWidget(viewer)
    widget.patch_size.value = "8"
    widget.patch_overlap.value = "2"
    widget.select_voxel((5, 5, 5))
    layers = created(viewer, before)
    assert {layer.name for layer in layers} == {"patch grid", "patch overlap", "selected patch"}
    for layer in layers:
        assert_placed_like(layer, image)


def test_sampler_explorer_layers_are_placed_like_the_scan(viewer_with_scan):
    viewer = viewer_with_scan
    image = viewer.layers[0]
    before = {layer.name for layer in viewer.layers}
    widget = SamplerExplorerWidget(viewer)
    widget.patch_size.value = "6"
    widget.num_patches.value = 20
    assert len(widget.sample()) == 20
    layers = created(viewer, before)
    assert len(layers) == 5
    for layer in layers:
        assert_placed_like(layer, image)


def wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def run_demo_model(viewer, qtbot):
    """Type patch 16 / overlap 4 into a new Tiled inference widget, click Run, wait."""
    widget = TiledInferenceWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "16", "4"
    widget.run()
    wait(qtbot, widget)
    return widget


def test_inference_outputs_are_placed_like_the_scan_and_saved_with_its_affine(
    viewer_with_scan, qtbot, tmp_path
):
    viewer = viewer_with_scan
    image = viewer.layers[0]
    before = {layer.name for layer in viewer.layers}
    widget = run_demo_model(viewer, qtbot)
    assert widget.status.value.startswith("done"), widget.status.value
    layers = created(viewer, before)
    names = {layer.name for layer in layers}
    assert "oblique_las_t1 prediction" in names
    assert {"oblique_las_t1 probability class 1", "oblique_las_t1 probability class 2"} <= names
    for layer in layers:
        assert_placed_like(layer, image)
    target = tmp_path / "prediction.nii.gz"
    viewer.layers["oblique_las_t1 prediction"].save(str(target), plugin="napari-patchwork")
    saved = nib.load(str(target))
    assert np.allclose(saved.affine, oblique_las_affine(), atol=1e-4)
    assert saved.shape == image.data.shape
    probability = tmp_path / "probability.nii.gz"
    viewer.layers["oblique_las_t1 probability class 1"].save(
        str(probability), plugin="napari-patchwork"
    )
    assert np.allclose(nib.load(str(probability)).affine, oblique_las_affine(), atol=1e-4)


def run_region(viewer, qtbot) -> TiledInferenceWidget:
    """The demo model over the region of voxels (10, 4..15, 3..14) of the scan (patch 8)."""
    image = viewer.layers[0]
    corners = np.array([[10, 4, 3], [10, 4, 14], [10, 15, 14], [10, 15, 3]], float)
    world = [image.data_to_world(corner) for corner in corners]
    shapes = viewer.add_shapes([np.array(world)], shape_type="polygon", name="roi")
    widget = TiledInferenceWidget(viewer)
    widget.roi.value = shapes
    widget.patch_size.value, widget.patch_overlap.value = "8", "0"
    widget.outputs.value = "labels"
    widget.run()
    wait(qtbot, widget)
    return widget


def test_roi_crop_offset_goes_through_the_scan_transform(viewer_with_scan, qtbot):
    viewer = viewer_with_scan
    image = viewer.layers[0]
    widget = run_region(viewer, qtbot)
    layer = viewer.layers["oblique_las_t1 prediction"]
    offset = [widget._box[axis].start for axis in range(3)]
    assert offset[1:] == [4, 3] and layer.data.shape[1:] == (12, 12)  # no offset on axis 0
    assert_placed_like(layer, image, offset)


def test_region_predictions_start_at_0_on_the_sliced_axis(viewer_with_scan, qtbot):
    """Slicing axis 1 of the oblique scan, a region from row 4: napari draws a 2D slice by
    the displayed axes' part of the transform, so an offset on axis 1 would move the output
    within the plane. Its data starts at row 0 (zeros before the region), on that axis only."""
    viewer = viewer_with_scan
    image = viewer.layers[0]
    viewer.dims.order = (1, 0, 2)
    run_region(viewer, qtbot)
    layer = viewer.layers["oblique_las_t1 prediction"]
    assert layer.data.shape == (24, 16, 12) and not layer.data[:, :4].any()
    start = (0, 0, 3)  # the region's corner (0, 4, 3), row 0 on the sliced axis
    assert_placed_like(layer, image, start)
    shown = list(viewer.dims.displayed)  # where napari draws them
    drawn, under = (item._data_to_world.set_slice(shown) for item in (layer, image))
    for voxel in VOXELS:
        there = np.add(voxel, start)
        assert np.allclose(drawn(np.take(voxel, shown)), under(np.take(there, shown)))


def test_region_predictions_follow_a_turned_view(viewer_with_scan, qtbot):
    """After a region run slicing axis 1, the user turns the view to slice axis 2: the
    predictions move to start at 0 on axis 2 (else napari draws them shifted in the plane),
    their values kept; the zeros added on axis 1 go, unless the user painted there."""
    viewer = viewer_with_scan
    image = viewer.layers[0]
    viewer.dims.order = (1, 0, 2)
    run_region(viewer, qtbot)
    layer = viewer.layers["oblique_las_t1 prediction"]
    region = layer.data[:, 4:].copy()  # the region: voxels (0..23, 4..15, 3..14)
    assert region.any()
    viewer.dims.order = (2, 0, 1)
    assert layer.data.shape == (24, 12, 15) and not layer.data[:, :, :3].any()
    assert np.array_equal(layer.data[:, :, 3:], region)
    start = (0, 4, 0)
    assert_placed_like(layer, image, start)
    shown = list(viewer.dims.displayed)
    assert shown == [0, 1]
    drawn, under = (item._data_to_world.set_slice(shown) for item in (layer, image))
    for voxel in VOXELS:
        there = np.add(voxel, start)
        assert np.allclose(drawn(np.take(voxel, shown)), under(np.take(there, shown)))
    layer.data[3, 2, 1] = 2  # painted left of the region, on the zeros just added
    viewer.dims.order = (1, 0, 2)
    assert layer.data.shape == (24, 16, 15) and layer.data[3, 6, 1] == 2
    assert np.array_equal(layer.data[:, 4:, 3:], region)
    assert_placed_like(layer, image, (0, 0, 0))


def test_region_predictions_follow_a_switch_from_3d_to_2d(viewer_with_scan, qtbot):
    """Run in 3D (placed exactly, nothing padded), then 2D slicing axis 1: moved to start at
    0 on axis 1."""
    viewer = viewer_with_scan
    image = viewer.layers[0]
    viewer.dims.order = (1, 0, 2)
    viewer.dims.ndisplay = 3
    run_region(viewer, qtbot)
    layer = viewer.layers["oblique_las_t1 prediction"]
    assert layer.data.shape == (24, 12, 12)
    region = layer.data.copy()
    viewer.dims.ndisplay = 2
    assert layer.data.shape == (24, 16, 12) and np.array_equal(layer.data[:, 4:], region)
    assert_placed_like(layer, image, (0, 0, 3))


def test_region_predictions_follow_after_another_run_and_with_the_dock_closed(
    viewer_with_scan, qtbot
):
    """The region's predictions belong to the user: they stay in place when the widget has
    since run on another image and its dock is closed (before: only the widget's last run
    followed, and none once the dock was closed)."""
    viewer = viewer_with_scan
    image = viewer.layers[0]
    viewer.dims.order = (1, 0, 2)
    widget = run_region(viewer, qtbot)
    layer = viewer.layers["oblique_las_t1 prediction"]
    region = layer.data[:, 4:].copy()
    other = viewer.add_image(image.data.copy(), name="other", affine=image.affine)
    widget.image.value, widget.roi.value = other, None
    widget.run()
    wait(qtbot, widget)
    assert viewer.layers["other prediction"].data.shape == (24, 20, 16)
    dock = viewer.window.add_dock_widget(widget, area="right")
    viewer.window.remove_dock_widget(dock)
    qtbot.wait(10)
    assert widget.lifecycle.closed
    viewer.dims.order = (2, 0, 1)
    assert layer.data.shape == (24, 12, 15) and np.array_equal(layer.data[:, :, 3:], region)
    assert_placed_like(layer, image, (0, 4, 0))
    assert viewer.layers["other prediction"].data.shape == (24, 20, 16)  # whole: unmoved
    # a duplicate, and the layer removed and added back, follow too; the scan may go
    from napari.layers._layer_actions import _duplicate_layer  # Layers > Duplicate

    viewer.layers.selection.active = layer
    _duplicate_layer(viewer.layers)
    copy = viewer.layers[f"{layer.name} copy"]
    viewer.layers.remove(layer)
    viewer.layers.remove(image)
    viewer.layers.append(layer)
    viewer.dims.order = (1, 0, 2)
    for each in (layer, copy):
        assert each.data.shape == (24, 16, 12) and np.array_equal(each.data[:, 4:], region)
        assert_placed_like(each, image, (0, 0, 3))


def test_a_rerun_after_a_turn_keeps_what_was_painted(viewer_with_scan, qtbot):
    viewer = viewer_with_scan
    viewer.dims.order = (1, 0, 2)
    widget = run_region(viewer, qtbot)
    layer = viewer.layers["oblique_las_t1 prediction"]  # voxels (0..23, 0..15, 3..14)
    layer.data[3, 1, 5] = 7  # painted on the zeros before the region on axis 1
    viewer.dims.order = (2, 0, 1)  # both paddings now: (0..23, 0..15, 0..14)
    layer.data[3, 6, 1] = 8  # and on the zeros added on axis 2
    widget.run()
    wait(qtbot, widget)
    assert widget.status.value.startswith("done")
    again = viewer.layers["oblique_las_t1 prediction"]
    assert again.data.shape == (24, 16, 15)
    assert again.data[3, 1, 8] == 7 and again.data[3, 6, 1] == 8
    assert_placed_like(again, viewer.layers[0], (0, 0, 0))


def test_turning_the_view_mid_run_after_removing_an_output(viewer_with_scan, qtbot):
    """The user removes the prediction layer, then turns the view, while the run goes on:
    the probabilities keep filling in, placed for the new view, and the run finishes."""
    viewer = viewer_with_scan
    image = viewer.layers[0]
    viewer.dims.order = (1, 0, 2)
    corners = np.array([[10, 4, 3], [10, 4, 14], [10, 15, 14], [10, 15, 3]], float)
    world = [image.data_to_world(corner) for corner in corners]
    shapes = viewer.add_shapes([np.array(world)], shape_type="polygon", name="roi")
    widget = TiledInferenceWidget(viewer)
    widget.roi.value = shapes
    widget.source.value = "module:factory"
    widget.factory.value = "tests.widgets.test_inference_widget:slow_net"  # 0.15 s a batch
    widget.patch_size.value, widget.patch_overlap.value = "4", "0"
    widget.batch_size.value = 4
    widget.outputs.value = "both"
    widget.run()
    qtbot.waitUntil(lambda: widget.last_step is not None, timeout=60_000)
    assert widget.running
    viewer.layers.remove("oblique_las_t1 prediction")
    viewer.dims.order = (2, 0, 1)
    wait(qtbot, widget)
    assert widget.status.value.startswith("done"), widget.status.value
    [probability] = [layer for layer in viewer.layers if "probability" in layer.name][:1]
    assert probability.data.shape == (24, 12, 15)
    inside = probability.data[:, :, 3:]
    assert np.isfinite(inside).all() and (inside > 0).all()  # every patch written
    assert_placed_like(probability, image, (0, 4, 0))


def test_a_box_in_a_2d_shapes_layer_spans_the_sliced_axis(viewer_with_scan):
    """A Shapes layer made 2D (no slice coordinate) is placed through the whole transform:
    no error, a box through the whole volume along the missing axis."""
    from napari.layers import Shapes

    image = viewer_with_scan.layers[0]
    flat = Shapes([np.array([[2.0, 3], [2, 10], [12, 10], [12, 3]])], shape_type="rectangle")
    box = roi_box(flat, image)
    assert all(isinstance(b, slice) and 0 <= b.start < b.stop for b in box)


def test_boxes_drawn_on_two_slices_bound_the_region_on_the_sliced_axis(viewer_with_scan):
    """A rectangle on slice 5 and one on slice 15 of the oblique scan (2D view slicing axis
    0), each over voxels (4..15, 3..14) as napari draws the slice: the region is those
    rows and columns, slices 5 to 15."""
    viewer = viewer_with_scan
    image = viewer.layers[0]
    viewer.dims.ndisplay = 2
    shown = list(viewer.dims.displayed)
    assert shown == [1, 2]
    place = image._data_to_world.set_slice(shown)
    offset = float(image.world_to_data(np.zeros(3))[0])
    gain = float(image.world_to_data(np.array([1.0, 0, 0]))[0]) - offset
    rectangles = []
    for index in (5, 15):
        depth = (index - offset) / gain  # the world position of the slider showing that slice
        corners = [(depth, *place([j, k])) for j, k in [(4, 3), (4, 14), (15, 14), (15, 3)]]
        rectangles.append(np.array(corners))
    shapes = viewer.add_shapes(rectangles, shape_type="rectangle", name="roi")
    assert roi_box(shapes, image) == (slice(5, 16), slice(4, 16), slice(3, 15))


def test_a_box_drawn_in_2d_on_the_oblique_scan_is_the_region_seen_under_it(viewer_with_scan, qtbot):
    """As a user draws it: flat on the sliced world axis, at the slice on screen; its
    corners over voxels (·, 4..15, 3..14) as napari draws the image there. The region run is
    those rows and columns, through the whole volume along the sliced axis."""
    viewer = viewer_with_scan
    image = viewer.layers[0]
    viewer.dims.ndisplay = 2
    shown = list(viewer.dims.displayed)
    assert shown == [1, 2]
    place = image._data_to_world.set_slice(shown)  # how napari draws the slice on screen
    depth = float(viewer.dims.point[0])
    drawn = [(depth, *place([j, k])) for j, k in [(4, 3), (4, 14), (15, 14), (15, 3)]]
    shapes = viewer.add_shapes([np.array(drawn)], shape_type="rectangle", name="roi")
    box = roi_box(shapes, image)
    assert box == (slice(0, 24), slice(4, 16), slice(3, 15))
    # corners between voxel centres: only the voxels under the box (5-15, 4-13), no margin
    drawn = [
        (depth, *place([j, k])) for j, k in [(4.6, 3.7), (4.6, 13.2), (15.4, 13.2), (15.4, 3.7)]
    ]
    shapes.data = [np.array(drawn)]
    assert roi_box(shapes, image) == (slice(0, 24), slice(5, 16), slice(4, 14))


def test_failed_run_adds_no_layer_and_shows_its_own_error(viewer_with_scan, qtbot):
    viewer = viewer_with_scan
    widget = run_demo_model(viewer, qtbot)
    assert widget.status.value.startswith("done")
    names = [layer.name for layer in viewer.layers]
    widget.source.value = "file"
    widget.model_file.value = "/nonexistent/model.pt"
    widget.run()
    wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == names
    assert "does not exist" in widget.status.value and "done" not in widget.status.value
    widget.model_file.value = ""
    assert widget.run() is None
    assert "choose" in widget.status.value and "directory" not in widget.status.value


def test_outputs_are_offered_as_inputs(viewer_with_scan, qtbot):
    viewer = viewer_with_scan
    run_demo_model(viewer, qtbot)
    explorer = SamplerExplorerWidget(viewer)
    labels = [choice.name for choice in explorer.labels_layer.choices if choice is not None]
    assert "oblique_las_t1 prediction" in labels
    maps = [choice.name for choice in explorer.probability.choices if choice is not None]
    assert "oblique_las_t1 probability class 1" in maps
    assert "patch grid" not in maps


def test_dock_keeps_its_width_with_long_messages(viewer_with_scan, qtbot):
    viewer = viewer_with_scan
    widget = PatchGridWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, area="right")
    qtbot.wait(50)
    width = dock.width()
    widget.patch_size.value = "48"  # larger than the scan: a long error message
    assert "⚠" in widget.info.value
    widget.patch_size.value, widget.patch_overlap.value = "8", "6"
    ranks = widget.select_voxel((10, 10, 8))
    assert len(ranks) > 20 and len(widget.selection.value) < 80
    qtbot.wait(50)
    assert dock.width() <= width + 2
    assert viewer.window._qt_window.width() < 4000


def test_stacked_docks_scroll_and_never_grow_the_window(viewer_with_scan, qtbot):
    """All four widgets docked on the right of a 900-pixel window, a long status: the
    window keeps its height (before: 3094 pixels for 1000, saved by napari for the next
    start); each dock scrolls, its controls at the top."""
    from napari_patchwork.widgets.training import TrainingWidget

    viewer = viewer_with_scan
    window = viewer.window._qt_window
    window.show()  # a hidden window is never resized to fit its docks
    window.resize(1200, 900)
    qtbot.wait(50)
    height = window.height()
    widgets = [
        TrainingWidget(viewer),
        TiledInferenceWidget(viewer),
        PatchGridWidget(viewer),
        SamplerExplorerWidget(viewer),
    ]
    for widget in widgets:  # back to back, as a script or a saved layout does
        viewer.window.add_dock_widget(widget, area="right")
    widgets[0].status.value = (
        "stopped after 36 iterations · paint corrections and press Continue " * 3
    )
    qtbot.wait(50)
    assert window.height() <= height + 2
    for widget in widgets:
        area = widget.native
        assert type(area).__name__ == "QScrollArea" and area.widget().height() >= area.height() - 2
        assert area.height() >= 150  # docked back to back, each keeps a usable share
        first = widget[0].native
        assert first.mapTo(area.widget(), first.rect().topLeft()).y() < 40  # controls on top


def docked(viewer, name):
    """The widget called ``name``, docked on the right of a shown 1200 × 900 window."""
    from napari_patchwork.widgets.training import TrainingWidget

    window = viewer.window._qt_window
    window.show()
    window.resize(1200, 900)
    kind = {
        "grid": PatchGridWidget,
        "sampler": SamplerExplorerWidget,
        "inference": TiledInferenceWidget,
        "training": TrainingWidget,
    }[name]
    widget = kind(viewer)
    return widget, viewer.window.add_dock_widget(widget, area="right")


@pytest.mark.parametrize("name", ["grid", "sampler", "inference", "training"])
def test_docks_never_scroll_sideways(viewer_with_scan, qtbot, name):
    """Each dock is at least as wide as its controls, also after a long status (the Sampler
    explorer's and Tiled inference's content scrolled sideways by 2–21 pixels)."""
    viewer = viewer_with_scan
    widget, dock = docked(viewer, name)
    area = widget.native
    qtbot.waitUntil(  # Qt lays the dock out over a few event-loop turns
        lambda: area.viewport().width() >= area.widget().minimumSizeHint().width(), timeout=3000
    )
    assert area.horizontalScrollBar().maximum() == 0
    width = dock.width()
    status = next(w for w in widget if w.label in ("status", "grid"))
    status.value = "a long message a user could see after a failed run " * 4
    qtbot.wait(100)
    assert area.horizontalScrollBar().maximum() == 0
    assert dock.width() <= width + 2  # wrapped, not widened


@pytest.mark.parametrize("name", ["grid", "sampler", "inference", "training"])
def test_a_long_layer_name_does_not_widen_the_window(viewer_with_scan, qtbot, name):
    """Layer pickers ask for 16 characters, not their longest name: a 198-character name
    made the dock, and the window napari saves, 2193 pixels wide."""
    viewer = viewer_with_scan
    viewer.layers[0].name = "scan" + "_with_a_very_long_name" * 9
    window = viewer.window._qt_window
    widget, dock = docked(viewer, name)
    qtbot.wait(100)
    assert window.width() <= 1202
    assert widget.native.minimumWidth() <= 420 and dock.width() < 700
    assert widget.native.widget().minimumSizeHint().width() <= 420


def test_closing_the_dock_disconnects_every_callback(viewer_with_scan, qtbot):
    viewer = viewer_with_scan
    drag = len(viewer.mouse_drag_callbacks)
    steps = len(viewer.dims.events.current_step.callbacks)
    inserted = len(viewer.layers.events.inserted.callbacks)
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "8", "2"
    dock = viewer.window.add_dock_widget(widget, area="right")
    assert len(viewer.mouse_drag_callbacks) == drag + 1
    viewer.window.remove_dock_widget(dock)
    qtbot.wait(10)
    assert widget.lifecycle.closed
    assert len(viewer.mouse_drag_callbacks) == drag
    assert len(viewer.dims.events.current_step.callbacks) == steps
    assert len(viewer.layers.events.inserted.callbacks) == inserted
    grid = viewer.layers["patch grid"].data.copy()
    viewer.dims.set_point(0, viewer.dims.point[0] + 9)  # no redraw any more
    assert np.array_equal(viewer.layers["patch grid"].data, grid)


CLOSE_DURING_RUN = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np, torch
    import napari
    from napari_patchwork.widgets import TiledInferenceWidget

    class Slow(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.2)
            return torch.cat([x, -x], 1)

    sys.modules["slow_model"] = type(sys)("slow_model")
    sys.modules["slow_model"].make = Slow
    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((32, 32, 32), dtype=np.float32))
    widget = TiledInferenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.source.value = "module:factory"
    widget.factory.value = "slow_model:make"
    widget.patch_size.value, widget.patch_overlap.value, widget.batch_size.value = "8", "0", 1
    widget.run()
    app = napari.qt.get_qapp()
    deadline = time.time() + 60
    while (widget.last_step is None or widget.last_step.done < 2) and time.time() < deadline:
        app.processEvents()
        time.sleep(0.01)
    assert widget.last_step is not None, "the run never started"
    {close}
    for _ in range(100):
        app.processEvents()
        time.sleep(0.01)
    print("closed cleanly at", widget.last_step.done, "patches")
    """
)


@pytest.mark.parametrize(
    "close",
    [
        "viewer.close()",
        "viewer.window.remove_dock_widget(widget.native.parent())",
        "pass  # the script ends with the run going on",
    ],
    ids=["viewer", "dock", "script ends"],
)
def test_closing_during_a_run_ends_cleanly(tmp_path, close):
    script = tmp_path / "close_during_run.py"
    script.write_text(CLOSE_DURING_RUN.format(close=close))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "closed cleanly" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


CLOSE_WHILE_TRAINING_STARTS = textwrap.dedent(
    """
    import time
    import numpy as np
    import napari
    from napari_patchwork.data import make_sample
    from napari_patchwork.core.training import scribbles_from_labels
    from napari_patchwork.widgets import TrainingWidget

    sample = make_sample((24, 24, 24), seed=1)
    viewer = napari.Viewer(show=True)
    viewer.add_image(sample.image, name="image")
    strokes = scribbles_from_labels(sample.labels, slices=3, disks=2, seed=0)
    viewer.add_labels(strokes.astype(np.int32), name="strokes")
    widget = TrainingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.annotations.value = viewer.layers["strokes"]
    widget.patch_size.value, widget.seconds.value = 16, 600.0
    widget.train()
    print("status at close:", widget.status.value)
    viewer.close()
    app = napari.qt.get_qapp()
    for _ in range(20):  # 0.2 s of events, then the script ends: the worker is still starting
        app.processEvents()
        time.sleep(0.01)
    print("closed")
    """
)


def test_a_script_closing_napari_while_training_starts_exits_cleanly(tmp_path):
    """The viewer closed while training is still "preparing…", the script ending at once:
    the worker used to finish after the exit had deleted its Qt signals, and PyQt aborted
    the process (exit 134, 3 runs of 3 in a user test). Exit waits for it now."""
    script = tmp_path / "close_while_training_starts.py"
    script.write_text(CLOSE_WHILE_TRAINING_STARTS)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "status at close: preparing" in result.stdout and "closed" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_a_scan_with_swapped_axes_gives_no_error_under_the_cursor_or_in_a_box():
    """Voxel axes swapped against the world's (a sagittal file, not reoriented): the
    displayed axes' part of the transform cannot be inverted; the widgets' mapping falls back
    to the whole transform instead of raising on every mouse move. (napari's own canvas
    cannot add such a layer in 2D: the model alone, without a window.)"""
    from napari.components import ViewerModel

    viewer = ViewerModel()
    swap = np.array([[0, 0, 2.0, 0], [0, 1.0, 0, 0], [1.5, 0, 0, 0], [0, 0, 0, 1]])
    image = viewer.add_image(np.zeros((20, 16, 12), np.float32), affine=swap, name="swapped")
    voxel = (3.0, 5.0, 7.0)
    world = np.asarray(image.data_to_world(voxel))
    assert np.allclose(voxel_on_screen(viewer, image, world), voxel)
    depth = float(viewer.dims.point[0])
    drawn = [(depth, 2.0, 2.0), (depth, 2.0, 9.0), (depth, 9.0, 9.0), (depth, 9.0, 2.0)]
    shapes = viewer.add_shapes([np.array(drawn)], shape_type="polygon", name="roi")
    box = roi_box(shapes, image)
    assert all(b.stop > b.start for b in box)
