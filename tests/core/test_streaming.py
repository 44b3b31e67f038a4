"""Lazy inputs (zarr, dask, memmap) and out-of-core zarr outputs equal the in-memory results."""

import itertools
import platform
import sys
import tracemalloc
import warnings

import numpy as np
import pytest
import torch

import napari_patchwork as pw
from napari_patchwork.core.data.lazy import LazyVolume
from napari_patchwork.core.inference.config import InferenceConfig
from napari_patchwork.core.inference.functional import TiledInference
from napari_patchwork.core.inference.streaming import zarr_target
from napari_patchwork.io.zarr_io import multiscale_paths, open_zarr

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
    config = InferenceConfig(patch_size=12, patch_overlap=4, overlap_mode=mode, batch_size=2)
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
    config = InferenceConfig(patch_size=12, patch_overlap=2, overlap_mode="hann", batch_size=4)
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
    rows = engine.mergers[next(iter(engine.mergers))].values.shape[1]
    assert 12 <= rows <= 12 + 12 // 8  # one patch height, plus at most an eighth
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


class CountingArray:
    """A real zarr array that counts what is read from it (calls, voxels, chunks)."""

    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.calls, self.voxels, self.largest, self.chunks_read = 0, 0, 0, set()

    def __getitem__(self, index):
        data = self.array[index]
        self.calls += 1
        self.voxels += data.size
        self.largest = max(self.largest, data.size)
        ranges = []
        for axis, size, chunk in zip(index, self.shape, self.array.chunks):
            start, stop, _ = axis.indices(size)
            ranges.append(range(start // chunk, (stop - 1) // chunk + 1))
        self.chunks_read |= set(itertools.product(*ranges))
        return data

    def reset(self):
        self.calls, self.voxels, self.largest, self.chunks_read = 0, 0, 0, set()


def chunks_of(location, shape, chunk, mode):
    """Chunks (channel chunk 0) holding the voxels a padded patch maps to."""
    per_axis = []
    for ini, fin, size in zip(location.index_ini, location.index_fin, shape):
        mapped = np.pad(np.arange(size), size, mode=mode)[np.arange(ini, fin) + size]
        per_axis.append(sorted({int(i) // chunk for i in mapped}))
    return {(0, *c) for c in itertools.product(*per_axis)}


@pytest.mark.parametrize("padding_mode", [None, "reflect", "wrap", "edge", 0.0])
def test_padded_grid_patches_read_only_the_chunks_they_touch(tmp_path, padding_mode):
    data = np.random.default_rng(3).random((1, 64, 64, 64)).astype(np.float32)
    array = zarr.create_array(
        tmp_path / "i.zarr", shape=data.shape, chunks=(1, 16, 16, 16), dtype="float32"
    )
    array[:] = data
    counting = CountingArray(array)
    subject = pw.Subject(t1=pw.ScalarImage(counting))
    sampler = pw.GridSampler(subject, 16, 8, padding_mode)
    eager = pw.GridSampler(
        pw.Subject(t1=pw.ScalarImage(torch.from_numpy(data))), 16, 8, padding_mode
    )
    sampler[0]  # the padded view is set up at the first patch
    mode = "wrap" if padding_mode == "wrap" else "reflect" if padding_mode == "reflect" else "edge"
    for index in (0, 1, len(sampler) // 2, len(sampler) - 1):
        counting.reset()
        patch = sampler[index]
        location = patch.patch_location
        assert torch.equal(patch.t1.data, eager[index].t1.data)
        assert counting.voxels <= 16**3  # never a slab: at most the patch's own voxels
        assert counting.chunks_read <= chunks_of(location, (64, 64, 64), 16, mode)
    assert not subject.t1.is_loaded


def test_wrap_padding_in_inference_never_reads_the_whole_volume(tmp_path):
    data = np.random.default_rng(4).random((1, 64, 32, 32)).astype(np.float32)
    array = zarr.create_array(
        tmp_path / "i.zarr", shape=data.shape, chunks=(1, 16, 16, 16), dtype="float32"
    )
    array[:] = data
    counting = CountingArray(array)
    settings = {"patch_size": 16, "patch_overlap": 8, "padding_mode": "wrap"}
    result = pw.infer(ramp_model, counting, **settings)
    assert torch.equal(result, pw.infer(ramp_model, torch.from_numpy(data), **settings))
    assert counting.largest <= 16 * 32 * 32  # at most one slab of one patch height
    assert counting.voxels <= 8 * data.size  # each voxel about patch / step times, plus borders


def test_memmap_inputs_are_lazy_and_read_only_ones_do_not_warn(tmp_path):
    data = np.random.default_rng(5).random((1, 24, 20, 16)).astype(np.float32)
    np.save(tmp_path / "v.npy", data)
    memmap = np.load(tmp_path / "v.npy", mmap_mode="r")  # read-only
    assert isinstance(memmap, np.memmap) and not memmap.flags.writeable
    image = pw.ScalarImage(memmap)
    assert not image.is_loaded and "lazy memmap" in repr(image)
    expected = pw.infer(ramp_model, torch.from_numpy(data), patch_size=8, patch_overlap=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "The given NumPy array is not writable" would fail
        result = pw.infer(ramp_model, memmap, patch_size=8, patch_overlap=2)
        patch = next(iter(pw.UniformSampler(pw.Subject(t1=image), 8, 1, seed=0)))
    assert torch.equal(result, expected) and not image.is_loaded
    patch.t1.data[:] = 0  # a copy: the file is untouched
    assert np.array_equal(np.load(tmp_path / "v.npy"), data)


def test_flushes_cover_whole_output_chunks(tmp_path):
    """Default chunk rows follow the grid step (16): every write but the last band's starts
    on a chunk boundary, so zarr never reads a chunk back."""
    data = np.random.default_rng(6).random((1, 64, 30, 28)).astype(np.float32)
    config = InferenceConfig(patch_size=24, patch_overlap=8, overlap_mode="gaussian", batch_size=3)
    engine = TiledInference(ramp_model, config, zarr_target(tmp_path / "out.zarr"))
    for _ in engine.run(LazyVolume(data)):
        pass
    result = engine.result()
    assert result.chunks[1] == 16
    merger = next(iter(engine.mergers.values()))
    assert [low for low, _ in merger.rows_written[:-1]] == [0, 16, 32]
    assert merger.rows_written[-1][1] == 64
    expected = pw.infer(
        ramp_model, torch.from_numpy(data), patch_size=24, patch_overlap=8, batch_size=3
    )
    assert np.array_equal(result[:], expected.numpy())


def two_heads(x):
    """A dict model with a half-resolution head."""
    half = torch.nn.functional.avg_pool3d(x, 2)
    return {"full": ramp_model(x), "half": half * 3}


def test_dict_and_downsampled_models_stream_to_a_zarr_group(zarr_volume, tmp_path):
    array, data = zarr_volume
    settings = {"patch_size": 12, "patch_overlap": 4, "overlap_mode": "hann"}
    expected = pw.infer(two_heads, torch.from_numpy(data), **settings)
    result = pw.infer(two_heads, array, output=tmp_path / "heads.zarr", **settings)
    assert set(result) == {"full", "half"}
    assert result["half"].shape == tuple(expected["half"].shape) == (1, 22, 15, 14)
    for key in result:
        assert np.array_equal(result[key][:], expected[key].numpy())
    group = zarr.open_group(tmp_path / "heads.zarr", mode="r")
    assert sorted(group.array_keys()) == ["full", "half"]


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_activation_on_zarr_outputs(zarr_volume, tmp_path, activation):
    from napari_patchwork.core.inference.postprocess import to_labels, to_probabilities

    array, data = zarr_volume
    settings = {"patch_size": 12, "patch_overlap": 4}
    raw = pw.infer(ramp_model, torch.from_numpy(data), **settings)
    probabilities = pw.infer(
        ramp_model, array, output=tmp_path / "p.zarr", output_activation=activation, **settings
    )
    assert np.allclose(probabilities[:], to_probabilities(raw, activation).numpy(), atol=1e-6)
    labels = pw.infer(
        ramp_model,
        array,
        output=tmp_path / "l.zarr",
        output_labels=True,
        output_activation=activation,
        **settings,
    )
    assert np.array_equal(labels[0], to_labels(raw, activation).numpy())
    with pytest.raises(ValueError, match="activation must be one of"):
        pw.infer(
            ramp_model, array, output=tmp_path / "x.zarr", output_activation="relu", **settings
        )


class MemmapStore:
    """An ``OutputStore`` that is not zarr: one ``.npy`` memmap per output (the core only
    assigns rows to what ``create`` returns)."""

    def __init__(self, folder):
        self.folder, self.created, self.discarded = folder, {}, False

    def create(self, channels, shape, name, chunk_rows):
        path = self.folder / f"{name or 'out'}.npy"
        sink = np.lib.format.open_memmap(path, "w+", np.float32, (channels, *shape))
        self.created[name] = path
        return sink

    def commit(self, names):
        return {name: np.load(self.created[name], mmap_mode="r") for name in names}

    def discard(self):
        self.discarded = True
        for path in self.created.values():
            path.unlink()


def test_streaming_writes_to_any_row_sink_not_only_zarr(zarr_volume, tmp_path):
    from napari_patchwork.core.inference.streaming import store_target

    array, data = zarr_volume
    config = InferenceConfig(patch_size=12, patch_overlap=4, overlap_mode="gaussian")
    store = MemmapStore(tmp_path)
    engine = TiledInference(ramp_model, config, store_target(store))
    for _ in engine.run(LazyVolume(array)):
        pass
    result = engine.result()
    assert isinstance(result, np.memmap)
    expected = pw.infer(ramp_model, torch.from_numpy(data), patch_size=12, patch_overlap=4)
    assert np.array_equal(np.asarray(result), expected.numpy())

    failing = MemmapStore(tmp_path / "failed")
    failing.folder.mkdir()

    calls = []

    def breaks_at_the_third_batch(x):
        calls.append(len(x))
        if len(calls) == 3:
            raise RuntimeError("model broke")
        return ramp_model(x)

    engine = TiledInference(breaks_at_the_third_batch, config, store_target(failing))
    with pytest.raises(RuntimeError, match="model broke"):
        for _ in engine.run(LazyVolume(array)):
            pass
    assert failing.created and failing.discarded and not list(failing.folder.iterdir())


def test_lazy_reads_give_the_dtypes_in_memory_images_get(tmp_path):
    """uint16 widens to int32, big-endian becomes native, uint64 beyond int64 is refused."""
    values = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    wide = zarr.create_array(tmp_path / "u16.zarr", shape=values.shape, dtype="uint16")
    wide[:] = values + 65000
    volume = LazyVolume(wide)
    read = volume[:, 0:4, :, :]
    assert read.dtype == torch.int32 and read.is_contiguous()
    assert torch.equal(read[0], torch.from_numpy((values + 65000).astype(np.int32)))
    in_memory = pw.ScalarImage(values.astype(np.uint16)[None])  # what a numpy array becomes
    assert in_memory.data.dtype == read.dtype

    np.save(tmp_path / "big.npy", values.astype(">f4"))
    big = np.load(tmp_path / "big.npy", mmap_mode="r")
    patch = LazyVolume(big).read(slice(1, 3), slice(0, 5), slice(2, 4))
    assert patch.dtype == torch.float32 and torch.equal(
        patch[0], torch.from_numpy(values[1:3, :, 2:4].astype(np.float32))
    )

    huge = zarr.create_array(tmp_path / "u64.zarr", shape=(2, 2, 2), dtype="uint64")
    huge[:] = 2**63 + 1
    with pytest.raises(ValueError, match=r"u64\.zarr' is uint64 and holds 9223372036854775809"):
        LazyVolume(huge).load()


@pytest.mark.parametrize("most", [1, 3])
@pytest.mark.parametrize("labels", [False, True])
def test_writes_in_pieces_of_a_few_chunks_equal_in_memory(
    zarr_volume, tmp_path, monkeypatch, most, labels
):
    """Each zarr assignment covers one chunk band and at most WRITE_CHUNKS chunks of it
    (zarr holds fewer chunks in flight); the result is unchanged."""
    from napari_patchwork.core.inference import streaming

    monkeypatch.setattr(streaming, "WRITE_CHUNKS", most)
    array, data = zarr_volume
    settings = {"patch_size": 12, "patch_overlap": 4, "overlap_mode": "gaussian", "batch_size": 3}
    expected = pw.infer(ramp_model, torch.from_numpy(data), **settings)
    if labels:
        expected = expected.argmax(0, keepdim=True).to(torch.uint8)
    engine = TiledInference(
        ramp_model,
        InferenceConfig(**settings),
        zarr_target(tmp_path / "out.zarr", chunks=(8, 8, 12), labels=labels),
    )
    for _ in engine.run(array):
        pass
    result = engine.result()
    merger = next(iter(engine.mergers.values()))
    assert len(merger._pieces) == {1: 12, 3: 4}[most]  # of the 4 × 3 chunks of a band
    assert np.array_equal(result[:], expected.numpy())


class PlaneChunkedSink:
    """A chunked row sink (whole-plane chunks, as zarr reports them) recording each assignment."""

    def __init__(self, shape):
        self.array = np.zeros(shape, np.float32)
        self.chunks = (1, 1, *shape[2:])
        self.assignments = []

    def __setitem__(self, index, value):
        self.assignments.append((index[1].start, index[1].stop))
        self.array[index] = value


def test_whole_plane_chunks_are_written_one_band_per_assignment():
    """A band of whole-plane chunks is one piece; several bands in one assignment had zarr
    encode up to 10 of them at once (2.46 slabs instead of 2.24 on 1024²)."""
    from napari_patchwork.core.inference.grid import GridPlan
    from napari_patchwork.core.inference.streaming import StreamingMerger

    volume = torch.rand(1, 20, 9, 7, generator=torch.Generator().manual_seed(0))
    plan = GridPlan((20, 9, 7), (6, 9, 7), (2, 0, 0))
    sink = PlaneChunkedSink((1, 20, 9, 7))
    merger = StreamingMerger(plan, "gaussian", 1, (6, 9, 7), torch.device("cpu"), sink)
    for rank in range(len(plan)):
        merger.add(volume[(slice(None), *plan.location(rank).to_slices())][None], rank)
    merger.finalize()
    assert sink.assignments and all(stop - start == 1 for start, stop in sink.assignments)
    assert sorted(sink.assignments) == [(row, row + 1) for row in range(20)]
    expected = pw.infer(lambda x: x, volume, patch_size=(6, 9, 7), patch_overlap=(2, 0, 0))
    assert np.array_equal(sink.array, expected.numpy())


def test_streamed_runs_set_the_mmap_threshold_once_unless_told_not_to(monkeypatch):
    from napari_patchwork.core.inference import streaming

    monkeypatch.setattr(streaming, "_tuned", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")  # the user chose: left alone
    assert streaming.return_freed_memory() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setattr(streaming, "TUNE_ALLOCATOR", False)
    assert streaming.return_freed_memory() is False
    monkeypatch.setattr(streaming, "TUNE_ALLOCATOR", True)
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert streaming.return_freed_memory() is expected
    assert streaming.return_freed_memory() is expected  # once: later calls change nothing


@pytest.mark.parametrize("mode", ["hann", "gaussian", "average"])
@pytest.mark.parametrize("size", [(64, 128, 128), (1, 1, 1), (3, 50, 7), (12, 12, 12)])
def test_window_built_by_rows_is_the_outer_product_bit_for_bit(mode, size):
    """The window is built row by row (no whole float64 temporaries): it must equal the
    plain float64 outer product, floored at its least positive value, then cast."""
    from napari_patchwork.core.inference.blending import _WINDOWS_1D, blending_window

    i, j, k = (_WINDOWS_1D[mode](s) for s in size)
    outer = i[:, None, None] * j[None, :, None] * k[None, None, :]
    expected = outer.clamp(min=float(outer[outer > 0].min()))[None].float()
    blending_window.cache_clear()
    assert torch.equal(blending_window(mode, size), expected)


class RecordingArray:
    """A real zarr array, with every region read recorded (the chunks each read touches)."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.shape, self.dtype, self.chunks = array.shape, array.dtype, array.chunks

    def __getitem__(self, index):
        chunks = []
        for axis, size, chunk in zip(index, self.shape, self.chunks):
            start, stop, _ = axis.indices(size)
            chunks.append(range(start // chunk, (stop - 1) // chunk + 1))
        self.reads.append(list(itertools.product(*chunks)))
        return self.array[index]


def test_lazy_volume_holds_a_window_of_columns_and_reads_chunks_once_per_band(tmp_path):
    """Patches in rank order: every read covers at most READ_CHUNKS chunks, each chunk is read
    once per band of rows that touches it (as a whole-slab read would), the cache holds a
    window of whole chunk columns (not the cross-section), and the patches are exact."""
    from napari_patchwork.core.data import lazy
    from napari_patchwork.core.inference.grid import GridPlan

    data = np.random.default_rng(2).random((2, 40, 150, 37)).astype(np.float32)
    stored = zarr.create_array(
        tmp_path / "in.zarr", shape=data.shape, chunks=(1, 16, 16, 16), dtype="float32"
    )
    stored[:] = data
    recording = RecordingArray(stored)
    volume = LazyVolume(recording, slab_rows=12)
    plan = GridPlan(data.shape[1:], (12, 24, 20), (4, 6, 2))
    widths = set()
    for rank in range(len(plan)):
        index = (slice(None), *plan.location(rank).to_slices())
        assert torch.equal(volume[index], torch.from_numpy(data[index]))
        widths.add(volume._cache.shape[2])
    assert max(len(chunks) for chunks in recording.reads) <= lazy.READ_CHUNKS
    assert widths == {48}  # 24 columns, unaligned: at most 3 strips of 16, not 150 columns
    counts = {}
    for chunks in recording.reads:
        for chunk in chunks:
            counts[chunk] = counts.get(chunk, 0) + 1
    bands = [(s, s + 12) for s in plan.starts[0]]
    for (channel, row, column, depth), count in counts.items():
        touching = sum(lo < (row + 1) * 16 and hi > row * 16 for lo, hi in bands)
        assert count == touching, (channel, row, column, depth)
    assert len(counts) == 2 * 3 * 10 * 3  # every chunk


@pytest.mark.parametrize("chunks_per_read", [1, 2, 8])
@pytest.mark.parametrize("ndim", [3, 4])
def test_lazy_volume_reads_at_most_read_bytes_of_chunks(
    tmp_path, monkeypatch, chunks_per_read, ndim
):
    """Large chunks (whole planes) are read fewer at a time: READ_BYTES caps each read, for
    3D (I, J, K) arrays as for 4D ones."""
    from napari_patchwork.core.data import lazy
    from napari_patchwork.core.inference.grid import GridPlan

    data = np.random.default_rng(4).random((1, 20, 30, 26)).astype(np.float32)
    shape, chunks = (data.shape, (1, 1, 30, 26)) if ndim == 4 else (data.shape[1:], (1, 30, 26))
    stored = zarr.create_array(tmp_path / "in.zarr", shape=shape, chunks=chunks, dtype="float32")
    stored[:] = data.reshape(shape)
    monkeypatch.setattr(lazy, "READ_CHUNKS", 8)
    monkeypatch.setattr(lazy, "READ_BYTES", chunks_per_read * 30 * 26 * 4)
    recording = RecordingArray(stored)
    volume = LazyVolume(recording, slab_rows=8)
    plan = GridPlan(data.shape[1:], (8, 12, 26), (2, 2, 0))
    for rank in range(len(plan)):
        index = (slice(None), *plan.location(rank).to_slices())
        assert torch.equal(volume[index], torch.from_numpy(data[index]))
    assert max(len(chunks) for chunks in recording.reads) == chunks_per_read


@pytest.mark.parametrize("kind", ["zarr-uint16", "memmap", "zarr-3d"])
def test_lazy_volume_cache_equals_slicing_in_any_order(tmp_path, kind):
    """Patch order, backwards, other rows, borders (cached_or_read): the values of slicing."""
    rng = np.random.default_rng(3)
    if kind == "memmap":
        data = rng.random((1, 30, 70, 20)).astype(np.float32)
        np.save(tmp_path / "v.npy", data[0])
        source, expected = np.load(tmp_path / "v.npy", mmap_mode="r"), data
    else:
        dtype = "uint16" if kind == "zarr-uint16" else "float32"
        data = (rng.random((30, 70, 20)) * 60000).astype(dtype)
        source = zarr.create_array(
            tmp_path / "in.zarr", shape=data.shape, chunks=(8, 16, 8), dtype=dtype
        )
        source[:] = data
        expected = data[None].astype(np.int32 if dtype == "uint16" else np.float32)
    volume = LazyVolume(source, slab_rows=10)
    regions = [(0, 0, 0), (0, 13, 3), (0, 40, 10), (0, 5, 0), (7, 50, 0), (20, 0, 5), (20, 60, 0)]
    for i, j, k in regions:
        index = (slice(None), slice(i, i + 10), slice(j, j + 10), slice(k, k + 10))
        assert np.array_equal(volume[index].numpy(), expected[index]), (i, j, k)
        border = (slice(i, i + 3), slice(j, j + 4), slice(k, k + 2))
        assert np.array_equal(
            volume.cached_or_read(*border).numpy(), expected[(slice(None), *border)]
        )
    volume.release()
    assert volume._cache is None
