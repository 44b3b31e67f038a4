"""Lazy inputs (zarr, dask, memmap) and out-of-core zarr outputs equal the in-memory results."""

import tracemalloc

import numpy as np
import pytest
import torch

import napari_patchwork as pw
from napari_patchwork.core.config import InferenceConfig
from napari_patchwork.core.inference import TiledInference
from napari_patchwork.core.lazy import LazyVolume, multiscale_paths, open_zarr
from napari_patchwork.core.streaming import zarr_target

zarr = pytest.importorskip("zarr")


def ramp_model(x):
    """Position-dependent and elementwise: stitching mistakes show, arithmetic is exact."""
    ramp = torch.arange(x.shape[-1], dtype=x.dtype)
    return torch.cat([x, x * 2 + ramp], 1)


@pytest.fixture
def zarr_volume(tmp_path):
    data = np.random.default_rng(0).random((1, 45, 30, 28)).astype(np.float32)
    array = zarr.create_array(
        tmp_path / "in.zarr", shape=data.shape, chunks=(1, 16, 16, 16), dtype="float32"
    )
    array[:] = data
    return array, data


@pytest.mark.parametrize("mode", ["crop", "average", "hann", "gaussian"])
@pytest.mark.parametrize("padding_mode", [None, "reflect", 0.5])
def test_zarr_in_zarr_out_equals_in_memory_bit_for_bit(zarr_volume, tmp_path, mode, padding_mode):
    array, data = zarr_volume
    settings = {
        "patch_size": 12,
        "patch_overlap": 4,
        "overlap_mode": mode,
        "batch_size": 3,
        "padding_mode": padding_mode,
    }
    expected = pw.infer(ramp_model, torch.from_numpy(data), **settings)
    result = pw.infer(ramp_model, array, output=tmp_path / "out.zarr", **settings)
    assert isinstance(result, zarr.Array) and result.shape == tuple(expected.shape)
    assert np.array_equal(result[:], expected.numpy())


@pytest.mark.parametrize("mode", ["crop", "gaussian"])
def test_blocks_of_rows_put_together_equal_one_run(zarr_volume, tmp_path, mode):
    array, data = zarr_volume
    config = InferenceConfig(12, 4, mode, 2)
    expected = pw.infer(
        ramp_model,
        torch.from_numpy(data),
        patch_size=12,
        patch_overlap=4,
        overlap_mode=mode,
        batch_size=2,
    )
    zarr.create_array(
        tmp_path / "out.zarr", shape=expected.shape, chunks=(2, 10, 30, 28), dtype="float32"
    )
    for start in range(0, 45, 10):  # blocks in any order: each writes only its own rows
        engine = TiledInference(
            ramp_model, config, zarr_target(tmp_path / "out.zarr", rows=(start, start + 10))
        )
        for _ in engine.run(array):
            pass
        engine.result()
    assert np.array_equal(zarr.open_array(tmp_path / "out.zarr")[:], expected.numpy())


def test_dask_and_memmap_inputs(tmp_path):
    dask_array = pytest.importorskip("dask.array")
    data = np.random.default_rng(1).random((20, 18, 16)).astype(np.float32)
    memmap = np.lib.format.open_memmap(
        tmp_path / "v.npy", mode="w+", dtype=np.float32, shape=data.shape
    )
    memmap[:] = data
    expected = pw.infer(ramp_model, torch.from_numpy(data)[None], patch_size=8, patch_overlap=2)
    lazy_inputs = [dask_array.from_array(data, chunks=8), LazyVolume(memmap)]
    for source in lazy_inputs:
        result = pw.infer(ramp_model, source, patch_size=8, patch_overlap=2)
        assert torch.equal(result, expected)


def test_memory_stays_bounded_by_a_slab(tmp_path):
    """Input 480×96×96 (17.7 MB) and output (35 MB) are 5× a 10 MB budget: numpy/zarr
    allocations (traced) stay under it, and the torch buffers (not traced) are one patch
    height of rows."""
    shape = (1, 480, 96, 96)
    source = zarr.create_array(
        tmp_path / "big.zarr", shape=shape, chunks=(1, 16, 96, 96), dtype="float32"
    )
    for start in range(0, shape[1], 16):
        source[:, start : start + 16] = np.random.default_rng(start).random((1, 16, 96, 96))
    budget = 10 * 2**20
    config = InferenceConfig(12, 2, "hann", 4)
    engine = TiledInference(
        ramp_model, config, zarr_target(tmp_path / "out.zarr", chunks=(16, 96, 96))
    )
    tracemalloc.start()
    for _ in engine.run(source):
        pass
    engine.result()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert 3 * 4 * np.prod(shape) > 5 * budget and peak < budget
    assert engine.mergers[next(iter(engine.mergers))].values.shape == (2, 12 + 12 // 8, 96, 96)
    assert zarr.open_array(tmp_path / "out.zarr").shape == (2, 480, 96, 96)


def test_ome_zarr_levels(tmp_path):
    group = zarr.open_group(tmp_path / "image.ome.zarr", mode="w")
    for level, size in enumerate((32, 16)):
        group.create_array(str(level), shape=(size, size, size), dtype="float32")
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}]}]
    assert multiscale_paths(dict(group.attrs)) == ["0", "1"]
    assert open_zarr(tmp_path / "image.ome.zarr", level=1).shape == (16, 16, 16)
    with pytest.raises(ValueError, match="level must be in"):
        open_zarr(tmp_path / "image.ome.zarr", level=2)
    with pytest.raises(FileNotFoundError, match="missing.zarr"):
        open_zarr(tmp_path / "missing.zarr")


def test_existing_output_is_refused(zarr_volume, tmp_path):
    array, _ = zarr_volume
    (tmp_path / "out.zarr").mkdir()
    with pytest.raises(ValueError, match="overwrite"):
        pw.infer(ramp_model, array, patch_size=12, output=tmp_path / "out.zarr")


def test_statistic_padding_needs_the_volume_in_memory(zarr_volume):
    array, _ = zarr_volume
    with pytest.raises(ValueError, match="padding_mode='mean'"):
        pw.infer(ramp_model, array, patch_size=12, patch_overlap=4, padding_mode="mean")


def test_images_backed_by_zarr_stay_lazy(zarr_volume, tmp_path):
    array, data = zarr_volume
    image = pw.ScalarImage(array, affine=np.diag([0.5, 0.5, 2.0, 1.0]))
    assert image.shape == (1, 45, 30, 28) and image.itemsize == 4 and not image.is_loaded
    assert "lazy" in repr(image)
    subject = pw.Subject(t1=image)
    for patch in pw.UniformSampler(subject, 8, num_patches=5, seed=0):  # reads patches only
        slices = patch.patch_location.to_slices()
        assert torch.equal(patch.t1.data, torch.from_numpy(data[(slice(None), *slices)]))
    grid = list(pw.GridSampler(subject, 15))
    assert len(grid) == 3 * 2 * 2 and not image.is_loaded
    expected = pw.infer(ramp_model, torch.from_numpy(data), patch_size=12)
    result = pw.infer(
        ramp_model, subject, image_name="t1", patch_size=12, output=tmp_path / "o.zarr"
    )
    assert np.array_equal(result[:], expected.numpy()) and not image.is_loaded
    assert torch.equal(image.data, torch.from_numpy(data))  # loading is explicit


@pytest.mark.parametrize("padding_mode", ["reflect", "edge", "symmetric", "wrap", "constant", 2.5])
def test_padded_grid_sampler_on_a_lazy_image_equals_in_memory(zarr_volume, padding_mode):
    array, data = zarr_volume
    lazy = pw.Subject(t1=pw.ScalarImage(array))
    eager = pw.Subject(t1=pw.ScalarImage(torch.from_numpy(data)))
    lazy_patches = pw.GridSampler(lazy, 12, 6, padding_mode, fill=-1)
    eager_patches = pw.GridSampler(eager, 12, 6, padding_mode, fill=-1)
    assert len(lazy_patches) == len(eager_patches)
    for index in (0, 1, len(eager_patches) // 2, len(eager_patches) - 1):
        a, b = lazy_patches[index], eager_patches[index]
        assert a.patch_location == b.patch_location
        assert torch.equal(a.t1.data, b.t1.data)
        assert np.allclose(a.t1.affine, b.t1.affine)
    assert not lazy.t1.is_loaded
