"""Patch grid readability: tiling cells, the patch under the cursor, the tints, line widths.

Scans are written with nibabel and opened through the plugin's reader (as File > Open does);
the cursor is moved through the viewer's mouse-move callbacks with the world position napari
gives them.
"""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

import napari_patchwork as pw
from napari_patchwork.napari_contributions import read_layers
from napari_patchwork.widgets import PatchGridWidget
from napari_patchwork.widgets._layers import boxes_to_vectors
from napari_patchwork.widgets.grid_overlay import (
    CURSOR_HINT,
    CURSOR_LAYER,
    GRID_LAYER,
    OVERLAP_LAYER,
    SHARED_LAYER,
)
from tests.widgets.segments import traced

# napari's own note on oblique data in 2D views (it shows the data plane without the rotation)
pytestmark = pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning")
SHAPE = (30, 28, 12)
VOXEL_SIZE = (0.5, 0.5, 3.0)


def vectors_of(layer):
    ends = np.asarray(layer.data, float).reshape(-1, 2, 3)
    return np.stack([ends[:, 0], ends[:, 1] - ends[:, 0]], 1)


def write_scan(path, rotate: bool) -> None:
    """A 0.5 × 0.5 × 3 mm scan, rotated 25° about the last axis (or not), off the origin."""
    angle = np.deg2rad(25 if rotate else 0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(VOXEL_SIZE)
    affine[:3, 3] = [40.0, -20.0, 12.0]
    volume = np.zeros(SHAPE, np.float32)
    nib.save(nib.Nifti1Image(volume, affine), str(path))


def open_scan(viewer, path) -> None:
    for data, meta, kind in read_layers(str(path)):  # the plugin's reader, as File > Open
        getattr(viewer, f"add_{kind}")(data, **meta)


@pytest.fixture
def oblique_viewer(make_napari_viewer, tmp_path):
    write_scan(tmp_path / "oblique.nii.gz", rotate=True)
    viewer = make_napari_viewer()
    open_scan(viewer, tmp_path / "oblique.nii.gz")
    return viewer


def patches_per_voxel(shape, patch, overlap, padding_mode=None) -> np.ndarray:
    """Brute force: add 1 over every GridSampler patch."""
    subject = pw.Subject(t1=pw.ScalarImage(torch.zeros((1, *shape))))
    counts = np.zeros(shape, int)
    for location in pw.GridSampler(subject, patch, overlap, padding_mode).locations:
        ini = np.maximum(location.index_ini, 0)
        fin = np.minimum(location.index_fin, shape)
        counts[tuple(slice(a, b) for a, b in zip(ini, fin))] += 1
    return counts


def move_cursor(viewer, world) -> None:
    """What napari does on a mouse move: call every mouse-move callback with the position."""
    event = SimpleNamespace(type="mouse_move", position=tuple(float(w) for w in world))
    for callback in list(viewer.mouse_move_callbacks):
        callback(viewer, event)


def current_slice(viewer, image) -> int:
    """The data slice napari shows (its own slicing of the layer)."""
    return int(round(float(image._data_slice.point[0])))


def current_slice_on(viewer, image, axis) -> int:
    """The data slice napari shows on ``axis``."""
    return int(round(float(image._data_slice.point[axis])))


def on_screen(viewer, image, voxel) -> np.ndarray:
    """The world position a 2D mouse event gives over ``voxel`` of the slice on screen: napari
    places the slice by the displayed axes' part of the layer's transform (an oblique scan's
    full ``data_to_world`` lands elsewhere), the other axes at the viewer's point."""
    displayed = list(viewer.dims.displayed)
    world = np.asarray(viewer.dims.point, float).copy()
    place = image._data_to_world.set_slice(displayed)
    world[displayed] = place(np.asarray(voxel, float)[displayed])
    return world


def world_points(layer, points) -> set[tuple[float, ...]]:
    return {tuple(np.round(np.asarray(layer.data_to_world(p), float), 6)) for p in points}


def test_tiling_has_one_cell_per_patch(viewer_with_sample):
    viewer = viewer_with_sample
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "12", "4"
    plan = widget.plan
    shape = plan.spatial_shape
    owners = np.array(
        [
            widget.owner((i, j, k))
            for i in range(shape[0])
            for j in range(shape[1])
            for k in range(shape[2])
        ]
    ).reshape(shape)
    assert sorted(np.unique(owners)) == list(range(len(plan)))  # every patch owns a cell
    cells = []
    for rank in range(len(plan)):
        where = np.argwhere(owners == rank)
        low, high = where.min(0), where.max(0) + 1
        assert len(where) == np.prod(high - low)  # a box
        location = plan.location(rank)
        assert np.all(low >= location.index_ini) and np.all(high <= location.index_fin)
        cells.append((low, high))
    viewer.dims.set_point(0, 7 * 0.5)  # slice i = 7
    low, high = (np.array(c) for c in zip(*cells))
    cut = (low[:, 0] <= 7) & (7 < high[:, 0])
    expected = boxes_to_vectors(low[cut], high[cut], 0, 7)
    assert traced(vectors_of(viewer.layers[GRID_LAYER])) == traced(expected)
    assert len(viewer.layers[GRID_LAYER].data) == (4 + 1) + (4 + 1)  # no mesh: 5 + 5 lines


def test_cursor_patch_is_outlined_where_the_scan_is(oblique_viewer):
    viewer = oblique_viewer
    image = viewer.layers[0]
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "8, 8, 4", "4, 4, 2"
    position = current_slice(viewer, image)
    voxel = (position, 9, 5)
    move_cursor(viewer, on_screen(viewer, image, voxel))
    rank = widget.cursor_rank
    assert rank is not None and rank == widget.owner(voxel)
    location = widget.plan.location(rank)
    assert all(a <= v < b for a, v, b in zip(location.index_ini, voxel, location.index_fin))
    ini, fin = np.array(location.index_ini) - 0.5, np.array(location.index_fin) - 0.5
    corners = [(position, j, k) for j in (ini[1], fin[1]) for k in (ini[2], fin[2])]
    layer = viewer.layers[CURSOR_LAYER]
    drawn = [point for line in layer.data for point in line]
    assert len(layer.data) == 4 and world_points(layer, drawn) == world_points(image, corners)
    assert f"patch #{rank}" in widget.cursor.value and "voxels" in widget.cursor.value

    # the zones it shares with its neighbours: patches per voxel inside the box, placed there
    counts = patches_per_voxel(SHAPE, (8, 8, 4), (4, 4, 2))
    shared = viewer.layers[SHARED_LAYER]
    low = np.maximum(location.index_ini, 0)
    high = np.minimum(location.index_fin, SHAPE)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    # on the oblique scan in 2D the tint starts at slice 0 (zeros above the patch): napari
    # draws a 2D slice by the displayed axes' part of the transform, and an offset on the
    # sliced axis would move the tint within the plane (11 world units in the user test)
    start = np.array(low)
    start[0] = 0
    tint = np.asarray(shared.data)
    assert np.array_equal(tint[low[0] :], counts[box]) and not tint[: low[0]].any()
    assert shared.contrast_limits[0] == 1  # the patch's own voxels are not tinted
    points = [(0, 0, 0), (1, 2, 3), (2.5, 0.5, 1)]
    assert world_points(shared, points) == world_points(image, [np.add(p, start) for p in points])
    shown = list(viewer.dims.displayed)  # where napari draws them on screen
    drawn = shared._data_to_world.set_slice(shown)
    under = image._data_to_world.set_slice(shown)
    for p in points:
        assert np.allclose(drawn(np.take(p, shown)), under(np.take(np.add(p, start), shown)))
    assert np.array_equal(np.asarray(viewer.layers[OVERLAP_LAYER].data), counts)
    listed = " / ".join(str(n) for n in np.unique(counts) if n > 1)
    assert f"voxels in {listed} patches" in widget.legend.value
    assert OVERLAP_LAYER in widget.legend.value and SHARED_LAYER in widget.legend.value

    # another voxel of the same cell redraws nothing; outside the scan clears the cursor
    before = np.asarray(layer.data).copy()
    assert widget.hover_voxel(voxel) == rank and np.array_equal(np.asarray(layer.data), before)
    move_cursor(viewer, on_screen(viewer, image, (position, -5, 5)))
    assert widget.cursor_rank is None and layer.nshapes == 0
    assert not np.asarray(shared.data).any() and widget.cursor.value == CURSOR_HINT


def test_padded_grid_cursor_box_reaches_into_the_padding(oblique_viewer):
    viewer = oblique_viewer
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "8, 8, 4", "4, 4, 2"
    widget.padding_mode.value = "reflect"
    rank = widget.hover_voxel((0, 0, 0))
    location = widget.plan.location(rank)
    assert location.index_ini == (-2, -2, -1)  # half the overlap before the first voxel
    counts = patches_per_voxel(SHAPE, (8, 8, 4), (4, 4, 2), "reflect")
    shared = np.asarray(viewer.layers[SHARED_LAYER].data)
    assert np.array_equal(shared, counts[:6, :6, :3])  # the box, clipped to the scan


def test_invalid_settings_clear_the_highlight(oblique_viewer):
    viewer = oblique_viewer
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "8, 8, 4", "4, 4, 2"
    assert widget.hover_voxel((10, 9, 5)) is not None
    widget.select_voxel((10, 9, 5))
    widget.patch_size.value = "100"
    assert "⚠" in widget.info.value and widget.legend.value == ""
    assert widget.cursor_rank is None and widget.cursor.value == CURSOR_HINT
    for name in (GRID_LAYER, OVERLAP_LAYER, CURSOR_LAYER, SHARED_LAYER):
        assert name not in viewer.layers
    assert widget.hover_voxel((10, 9, 5)) is None and CURSOR_LAYER not in viewer.layers
    widget.patch_size.value = "8, 8, 4"
    assert widget.hover_voxel((10, 9, 5)) is not None and CURSOR_LAYER in viewer.layers


def test_cursor_in_3d_is_a_wireframe_and_moves_are_ignored(oblique_viewer):
    viewer = oblique_viewer
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "8, 8, 4", "4, 4, 2"
    rank = widget.hover_voxel((10, 9, 5))
    viewer.dims.ndisplay = 3
    layer = viewer.layers[CURSOR_LAYER]
    location = widget.plan.location(rank)
    expected = boxes_to_vectors(np.array(location.index_ini), np.array(location.index_fin))
    assert layer.nshapes == 12 and traced(vectors_of(layer)) == traced(expected)
    move_cursor(viewer, viewer.layers[0].data_to_world((2, 2, 2)))  # no picking in depth
    assert widget.cursor_rank == rank


def test_the_tint_follows_a_turned_view(oblique_viewer):
    """The overlap tint of the patch under the cursor is redrawn when another axis is
    sliced: it starts at 0 on the axis sliced now, where napari draws it in place."""
    viewer = oblique_viewer
    image = viewer.layers[0]
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "8, 8, 4", "4, 4, 2"
    viewer.dims.order = (2, 0, 1)  # slicing axis 2
    voxel = [12, 12, current_slice_on(viewer, image, 2)]
    move_cursor(viewer, on_screen(viewer, image, voxel))
    assert widget.cursor_rank is not None
    viewer.dims.order = (0, 1, 2)  # slicing axis 0 now, the cursor still on the patch
    shared = viewer.layers[SHARED_LAYER]
    location = widget.plan.location(widget.cursor_rank)
    start = np.maximum(location.index_ini, 0)
    start[0] = 0
    shown = list(viewer.dims.displayed)
    drawn, under = (item._data_to_world.set_slice(shown) for item in (shared, image))
    for point in [(0, 0, 0), (1, 2, 3)]:
        there = np.add(point, start)
        assert np.allclose(drawn(np.take(point, shown)), under(np.take(there, shown)))


def test_following_the_cursor_can_be_switched_off(oblique_viewer):
    viewer = oblique_viewer
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "8", "4"
    widget.follow_cursor.value = False
    image = viewer.layers[0]
    move_cursor(viewer, on_screen(viewer, image, (current_slice(viewer, image), 9, 5)))
    assert widget.cursor_rank is None and CURSOR_LAYER not in viewer.layers


def test_closing_the_dock_disconnects_the_cursor(oblique_viewer, qtbot):
    viewer = oblique_viewer
    camera = viewer.scene.camera
    moves = len(viewer.mouse_move_callbacks)
    zooms = len(camera.events.zoom.callbacks)
    turns = len(camera.events.angles.callbacks)
    orders = len(viewer.dims.events.order.callbacks)
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "8", "4"
    dock = viewer.window.add_dock_widget(widget, area="right")
    assert len(viewer.mouse_move_callbacks) == moves + 1
    assert len(camera.events.zoom.callbacks) == zooms + 1
    viewer.window.remove_dock_widget(dock)
    qtbot.wait(10)
    assert len(viewer.mouse_move_callbacks) == moves
    assert len(camera.events.zoom.callbacks) == zooms
    assert len(camera.events.angles.callbacks) == turns
    assert len(viewer.dims.events.order.callbacks) == orders
    move_cursor(viewer, viewer.layers[0].data_to_world((10, 9, 5)))
    assert CURSOR_LAYER not in viewer.layers


def line_runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True along each row of ``mask`` (rows not on a crossing line)."""
    runs = []
    for row in mask:
        if row.mean() > 0.2:  # along a line, not across it
            continue
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
        runs += list(edges[1::2] - edges[::2])
    return runs


def yellow_runs(viewer) -> tuple[list[int], list[int]]:
    shot = viewer.screenshot(canvas_only=True, flash=False)
    yellow = (shot[..., 0] > 60) & (shot[..., 1] > 60) & (shot[..., 2] < 40)
    return line_runs(yellow), line_runs(yellow.T)


@pytest.fixture
def thick_slice_viewer(make_napari_viewer, tmp_path):
    """A black 0.5 × 0.5 × 3 mm scan with its grid (only the yellow lines on screen)."""
    write_scan(tmp_path / "thick_slices.nii.gz", rotate=False)
    viewer = make_napari_viewer(show=True)
    open_scan(viewer, tmp_path / "thick_slices.nii.gz")
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "8, 8, 4", "4, 4, 2"
    viewer.layers[OVERLAP_LAYER].visible = False
    return viewer


def test_lines_are_one_screen_pixel_wide_on_anisotropic_voxels(thick_slice_viewer):
    """The j/k plane on screen: data widths equal on both axes would draw the lines along j
    six times wider than those along k."""
    viewer = thick_slice_viewer
    viewer.reset_view()
    for zoom in (1.0, 2.5):
        viewer.scene.camera.zoom *= zoom
        across_rows, across_columns = yellow_runs(viewer)
        assert len(across_rows) > 10 and len(across_columns) > 10  # both directions drawn
        assert max(across_rows) <= 2 and max(across_columns) <= 2, (zoom, across_rows)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_lines_are_one_screen_pixel_wide_in_3d(thick_slice_viewer, order):
    """3D: napari draws tubes, whose width on screen depends on the view direction."""
    viewer = thick_slice_viewer
    viewer.dims.ndisplay = 3
    viewer.dims.order = order  # looking along each axis in turn
    viewer.reset_view()
    across_rows, across_columns = yellow_runs(viewer)
    assert len(across_rows) > 10 and len(across_columns) > 10
    assert max(across_rows) <= 2 and max(across_columns) <= 2, (order, across_rows)


def test_every_field_has_a_tooltip(viewer_with_sample):
    widget = PatchGridWidget(viewer_with_sample)
    for field in widget:
        assert field.tooltip, field.label
    assert "64, 64, 32" in widget.patch_size.tooltip and "voxels" in widget.patch_size.tooltip
    assert "even" in widget.patch_overlap.tooltip


def test_the_users_layer_stays_active_and_removing_the_image_is_safe(oblique_viewer):
    viewer = oblique_viewer
    image = viewer.layers[0]
    viewer.layers.selection.active = image
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "8", "4"
    move_cursor(viewer, on_screen(viewer, image, (current_slice(viewer, image), 9, 5)))
    widget.select_voxel((10, 9, 5))
    assert CURSOR_LAYER in viewer.layers and viewer.layers.selection.active is image
    viewer.layers.remove(image)
    move_cursor(viewer, (10.0, 9.0, 5.0))  # nothing to follow any more: no error
    assert widget.select_voxel((10, 9, 5)) == []
