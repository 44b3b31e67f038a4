"""Widgets opened on a thin real scan: the default patch fits it until the user types one.

nibabel's example EPI volume (128 × 96 × 24, shipped in nibabel's wheel) has fewer slices
than the Patch grid's default patch (64) and the Sampler explorer's (32): opening either
dock on it used to show an error before the user had done anything.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_patchwork.napari_contributions import read_layers
from napari_patchwork.widgets import PatchGridWidget, SamplerExplorerWidget


@pytest.fixture
def epi_path(tmp_path):
    """The first frame of nibabel's example4d EPI, saved with its own affine and header."""
    source = nib.load(str(Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"))
    frame = np.asarray(source.dataobj[..., 0])
    path = tmp_path / "epi.nii.gz"
    nib.save(nib.Nifti1Image(frame, source.affine, source.header), str(path))
    return path


@pytest.fixture
def viewer_with_epi(make_napari_viewer, epi_path):
    viewer = make_napari_viewer()
    for data, meta, kind in read_layers(str(epi_path)):  # as File > Open does
        getattr(viewer, f"add_{kind}")(data, **meta)
    assert viewer.layers[0].data.shape == (128, 96, 24)
    return viewer


def test_patch_grid_opens_on_a_thin_scan_with_a_fitted_patch(viewer_with_epi):
    widget = PatchGridWidget(viewer_with_epi)
    assert (widget.patch_size.value, widget.patch_overlap.value) == ("64, 64, 24", "16, 16, 6")
    assert "⚠" not in widget.info.value
    assert widget.info.value.endswith("(3 × 2 × 1)"), widget.info.value
    assert widget.plan is not None and widget.plan.patch_size == (64, 64, 24)
    assert "patch grid" in viewer_with_epi.layers


def test_patch_grid_keeps_what_the_user_typed_when_the_image_changes(viewer_with_epi):
    viewer = viewer_with_epi
    widget = PatchGridWidget(viewer)
    widget.patch_size.value = "16"  # typed
    cube = viewer.add_image(np.zeros((100, 100, 100), np.float32), name="cube")
    widget.image.value = cube
    assert widget.patch_size.value == "16"
    assert widget.patch_overlap.value == "16"  # the default for 100³: quarter of 64
    assert "⚠" in widget.info.value  # overlap 16 is not smaller than patch 16: the user's call
    widget.patch_overlap.value = "4"
    assert widget.plan is not None and widget.plan.patch_size == (16, 16, 16)


def test_patch_grid_follows_every_image_until_typed(viewer_with_epi):
    viewer = viewer_with_epi
    widget = PatchGridWidget(viewer)
    cube = viewer.add_image(np.zeros((100, 100, 100), np.float32), name="cube")
    widget.image.value = cube
    assert (widget.patch_size.value, widget.patch_overlap.value) == ("64", "16")
    widget.image.value = viewer.layers[0]
    assert widget.patch_size.value == "64, 64, 24"


def test_sampler_explorer_samples_a_thin_scan_without_typing(viewer_with_epi):
    widget = SamplerExplorerWidget(viewer_with_epi)
    assert widget.patch_size.value == "32, 32, 24"
    widget.num_patches.value = 20
    locations = widget.sample()
    assert len(locations) == 20
    sizes = {tuple(np.subtract(loc.index_fin, loc.index_ini)) for loc in locations}
    assert sizes == {(32, 32, 24)}
    assert "larger than" not in widget.info.value


@pytest.mark.parametrize("slices", [3, 4])
def test_a_scan_of_3_or_4_slices_opens_as_a_volume_not_colours(
    make_napari_viewer, tmp_path, slices
):
    """napari takes a last axis of 3 or 4 for RGB(A) unless told: the file then failed to
    open (a matrix of the wrong size) and left a broken layer behind."""
    volume = np.random.default_rng(0).random((64, 48, slices)).astype(np.float32)
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    path = tmp_path / f"slab{slices}.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-patchwork")
    assert layer.ndim == 3 and not layer.rgb and layer.data.shape == (64, 48, slices)
    assert np.allclose(layer.data_to_world((1, 2, slices - 1)), (0.8, 1.6, 5.0 * (slices - 1)))
    widget = PatchGridWidget(viewer)
    if slices == 4:
        assert widget.patch_size.value == "64, 48, 4" and "⚠" not in widget.info.value
    else:  # no patch (even, >= 4) fits 3 slices: the default stays and the grid says why
        assert widget.patch_size.value == "64, 48, 64"
        assert "larger than the volume (64 × 48 × 3 voxels)" in widget.info.value


def test_a_zarr_volume_of_3_slices_opens_as_a_volume(make_napari_viewer, tmp_path):
    import zarr

    path = tmp_path / "slab.zarr"
    array = zarr.open_array(str(path), mode="w", shape=(64, 48, 3), dtype="float32")
    array[:] = 1.0
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-patchwork")
    assert layer.ndim == 3 and not layer.rgb and layer.data.shape == (64, 48, 3)


def test_docks_opened_before_the_scan_follow_it(make_napari_viewer, epi_path):
    """The usual order: open the plugin's docks, then File > Open."""
    viewer = make_napari_viewer()
    grid, sampler = PatchGridWidget(viewer), SamplerExplorerWidget(viewer)
    assert "⚠" in sampler.info.value  # asks for an image at once
    for data, meta, kind in read_layers(str(epi_path)):
        getattr(viewer, f"add_{kind}")(data, **meta)
    assert grid.patch_size.value == "64, 64, 24" and "⚠" not in grid.info.value
    assert sampler.patch_size.value == "32, 32, 24"
    assert sampler.info.value == "ready: click Sample"
    assert len(sampler.sample()) == sampler.num_patches.value


def test_overlays_stay_above_a_newly_chosen_image(viewer_with_epi):
    """A second scan opened and chosen: the grid and the sampled boxes drawn again on it
    were reused below it, hidden (user test)."""
    from napari_patchwork.widgets._sampler_drawing import CENTRES, PATCHES

    viewer = viewer_with_epi
    grid, sampler = PatchGridWidget(viewer), SamplerExplorerWidget(viewer)
    sampler.num_patches.value = 10
    sampler.sample()
    other = viewer.add_image(np.zeros((64, 64, 32), np.float32), name="second scan")
    grid.image.value = other
    sampler.image.value = other
    sampler.sample()
    names = [layer.name for layer in viewer.layers]
    for overlay in ("patch grid", "patch overlap", PATCHES, CENTRES):
        assert names.index(overlay) > names.index("second scan"), (overlay, names)
    assert names.index("patch grid") > names.index("patch overlap")  # lines above the tint


def test_tiled_inference_with_the_demo_runs_on_a_thin_scan_without_typing(viewer_with_epi, qtbot):
    from napari_patchwork.widgets import TiledInferenceWidget

    widget = TiledInferenceWidget(viewer_with_epi)
    assert (widget.patch_size.value, widget.patch_overlap.value) == ("64, 64, 24", "16, 16, 6")
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    prediction = viewer_with_epi.layers["epi prediction"]
    assert prediction.data.shape == (128, 96, 24) and "larger than" not in widget.status.value
    widget.patch_size.value = "32"  # typed: kept while the image changes, but choosing
    widget.source.value = "file"  # a model again sets its own patch (as a trained
    widget.source.value = "demo"  # model's does)
    assert widget.patch_size.value == "64, 64, 24"
