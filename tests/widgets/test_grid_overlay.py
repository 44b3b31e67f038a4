import numpy as np
import torch

import napari_patchwork as pw
from napari_patchwork.widgets import PatchGridWidget
from napari_patchwork.widgets._layers import boxes_to_vectors
from napari_patchwork.widgets.grid_overlay import EDGES, GRID_LAYER, OVERLAP_LAYER, SELECTED_LAYER
from tests.widgets.segments import traced


def vectors_of(layer):
    """A Shapes layer of lines as napari vectors ``(start, step)`` (what ``traced`` reads)."""
    ends = np.asarray(layer.data, float).reshape(-1, 2, 3)
    return np.stack([ends[:, 0], ends[:, 1] - ends[:, 0]], 1)


def sampler_locations(viewer, patch, overlap, padding_mode=None):
    volume = torch.from_numpy(np.asarray(viewer.layers["image"].data))[None]
    sampler = pw.GridSampler(pw.Subject(t1=pw.ScalarImage(volume)), patch, overlap, padding_mode)
    return sampler.locations


def box_edges(locations, sliced_axis=None, position=0):
    ini = np.array([loc.index_ini for loc in locations])
    fin = np.array([loc.index_fin for loc in locations])
    return boxes_to_vectors(ini, fin, sliced_axis, position)


def test_grid_matches_grid_sampler_in_the_current_slice(viewer_with_sample):
    viewer = viewer_with_sample
    widget = PatchGridWidget(viewer)
    widget.grid_lines.value = EDGES  # the start and end of every patch
    widget.patch_size.value = "12"
    widget.patch_overlap.value = "4"
    locations = sampler_locations(viewer, 12, 4)
    assert widget.info.value.startswith(f"{len(locations)} patches")
    viewer.dims.set_point(0, 7 * 0.5)  # slice i = 7
    vectors = vectors_of(viewer.layers[GRID_LAYER])
    in_slice = [loc for loc in locations if loc.index_ini[0] <= 7 < loc.index_fin[0]]
    assert np.all(vectors[:, 0, 0] == 7) and np.all(vectors[:, 1, 0] == 0)
    assert traced(vectors) == traced(box_edges(in_slice, 0, 7))
    layer = viewer.layers[GRID_LAYER]
    assert tuple(layer.scale) == tuple(viewer.layers["image"].scale)


def test_wireframes_in_3d_and_overlap_zones(viewer_with_sample):
    viewer = viewer_with_sample
    widget = PatchGridWidget(viewer)
    widget.grid_lines.value = EDGES
    widget.patch_size.value = "16"
    widget.patch_overlap.value = "6"
    viewer.dims.ndisplay = 3
    locations = sampler_locations(viewer, 16, 6)
    assert traced(vectors_of(viewer.layers[GRID_LAYER])) == traced(box_edges(locations))
    coverage = np.zeros(viewer.layers["image"].data.shape, int)
    for location in locations:
        coverage[location.to_slices()] += 1
    assert np.array_equal(np.asarray(viewer.layers[OVERLAP_LAYER].data), coverage)


def test_padding_mode_and_live_update(viewer_with_sample):
    widget = PatchGridWidget(viewer_with_sample)
    widget.patch_size.value = "16"
    widget.patch_overlap.value = "8"
    before = widget.info.value
    widget.padding_mode.value = "reflect"
    expected = len(sampler_locations(viewer_with_sample, 16, 8, "reflect"))
    assert widget.info.value.startswith(f"{expected} patches") and widget.info.value != before


def test_click_selects_the_patches_holding_a_voxel(viewer_with_sample):
    widget = PatchGridWidget(viewer_with_sample)
    widget.patch_size.value = "12"
    widget.patch_overlap.value = "4"
    viewer_with_sample.dims.set_point(0, 10 * 0.5)  # the slice of the clicked voxel
    ranks = widget.select_voxel((10, 3, 5))
    locations = [widget.plan.location(rank) for rank in ranks]
    assert locations and all(loc.index_ini[0] <= 10 < loc.index_fin[0] for loc in locations)
    all_holding = [
        loc
        for loc in sampler_locations(viewer_with_sample, 12, 4)
        if all(a <= v < b for a, v, b in zip(loc.index_ini, (10, 3, 5), loc.index_fin))
    ]
    assert sorted(loc.index for loc in locations) == sorted(loc.index for loc in all_holding)
    assert f"#{ranks[0]}" in widget.selection.value
    selected = viewer_with_sample.layers[SELECTED_LAYER]
    assert traced(vectors_of(selected)) == traced(box_edges(all_holding, 0, 10))  # rectangles
    viewer_with_sample.dims.ndisplay = 3
    assert len(selected.data) == 12 * len(ranks)  # wireframes
    assert traced(vectors_of(selected)) == traced(box_edges(all_holding))
    assert widget._on_click in viewer_with_sample.mouse_drag_callbacks


def test_bad_settings_show_a_message_not_a_traceback(viewer_with_sample):
    widget = PatchGridWidget(viewer_with_sample)
    widget.patch_overlap.value = "5"
    assert "patch overlap must be even" in widget.info.value
    assert "5 × 5 × 5 voxels" in widget.info.value
    widget.patch_overlap.value = "4"
    widget.patch_size.value = "100"
    assert "larger than the volume (40 × 36 × 32 voxels)" in widget.info.value
    assert "padding" in widget.info.value
    widget.padding_mode.value = "reflect"
    assert "larger than the padded volume (44 × 40 × 36 voxels)" in widget.info.value
    widget.patch_size.value = "a lot"
    assert "patch size must be one whole number of voxels" in widget.info.value
    widget.patch_size.value = "8, 8"
    assert "'8, 8'" in widget.info.value
    widget.patch_size.value, widget.patch_overlap.value = "8", "8"
    assert "must be smaller than the patch size (8 × 8 × 8 voxels)" in widget.info.value
    widget.patch_overlap.value = "-2"
    assert "patch overlap must be 0 voxels or more" in widget.info.value
    for name in ("patch_size", "patch_overlap", "padding_mode"):  # API names, not the labels
        assert name not in widget.info.value


def test_huge_grids_are_counted_not_drawn(viewer_with_sample):
    widget = PatchGridWidget(viewer_with_sample)
    widget.patch_overlap.value = "10"
    widget.patch_size.value = "11"  # a 1-voxel step: 30 x 26 x 22 patches
    viewer_with_sample.dims.ndisplay = 3
    widget.update()
    assert "too many to draw" in widget.info.value or len(widget.plan) <= 50_000


def test_huge_lazy_multiscale_volume_is_never_read(make_napari_viewer, tmp_path):
    """An 8-gigavoxel zarr volume (32 GB as float32): the grid and overlap layers come from
    its shape; only the slice on screen is ever read."""
    zarr = __import__("pytest").importorskip("zarr")
    levels = [
        zarr.create_array(
            tmp_path / f"{n}.zarr", shape=(s, s, s), chunks=(64, 64, 64), dtype="float32"
        )
        for n, s in enumerate((2000, 1000))
    ]
    viewer = make_napari_viewer()
    viewer.add_image(levels, multiscale=True, contrast_limits=(0, 1), name="image")
    widget = PatchGridWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "128", "32"
    assert widget.info.value.startswith(f"{21**3} patches")
    overlap = viewer.layers[OVERLAP_LAYER].data
    assert overlap.shape == (2000, 2000, 2000)
    assert overlap[1000, 94:98, 96].tolist() == [2, 2, 4, 4]  # patches holding each voxel
    assert len(viewer.layers[GRID_LAYER].data) > 0
