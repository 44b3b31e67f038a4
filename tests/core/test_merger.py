"""GridMerger against a brute-force sum of windows placed over every patch."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_patchwork.core.inference import merger as merger_module
from napari_patchwork.core.inference.blending import blending_window
from napari_patchwork.core.inference.grid import GridPlan, crop_intervals
from napari_patchwork.core.inference.merger import GridMerger

MODES = ["crop", "average", "hann", "gaussian"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def nan_filled_buffers(monkeypatch):
    """Buffers start as NaN, not as the zeros a fresh heap block often happens to hold: a row
    read before the merger zeroes it shows in every result."""
    allocate = merger_module.heap_empty

    def nan_filled(shape):
        return allocate(shape).fill_(float("nan"))

    monkeypatch.setattr(merger_module, "heap_empty", nan_filled)


def placed(plan, rank, factor, shape):
    """Output-space (target, source) slices of a patch, cropped to the output volume."""
    target, source = [], []
    for axis, start in enumerate(plan.location(rank).index_ini):
        start = math.floor(start * factor + 1e-9)
        size = round(plan.patch_size[axis] * factor)
        lo, hi = max(start, 0), min(start + size, shape[axis])
        target.append(slice(lo, hi))
        source.append(slice(lo - start, hi - start))
    return tuple(target), tuple(source)


def brute_force(plan, mode, outputs, factor, done=None):
    """Sum of window * output and of windows, voxel by voxel over the first ``done`` patches."""
    channels, *output_patch = outputs.shape[1:]
    shape = tuple(int(s * factor) for s in plan.spatial_shape)
    window_mode = "average" if mode == "crop" else mode
    window = blending_window(window_mode, tuple(output_patch), torch.float64)[0]
    values = torch.zeros((channels, *shape), dtype=torch.float64)
    weights = torch.zeros(shape, dtype=torch.float64)
    for rank in range(len(plan) if done is None else done):
        target, source = placed(plan, rank, factor, shape)
        values[(slice(None), *target)] += window[source] * outputs[rank][(slice(None), *source)]
        weights[target] += window[source]
    return values, weights


def crop_reference(plan, outputs, factor):
    """Each voxel from the one patch that owns it (crop_intervals), scaled to the output."""
    shape = tuple(int(s * factor) for s in plan.spatial_shape)
    expected = torch.zeros((outputs.shape[1], *shape), dtype=torch.float64)
    owned = [
        crop_intervals(size, patch, overlap, plan.padded)
        for size, patch, overlap in zip(plan.spatial_shape, plan.patch_size, plan.patch_overlap)
    ]
    for rank in range(len(plan)):
        location = plan.location(rank)
        target, source = [], []
        for axis, start in enumerate(location.index_ini):
            lo, hi = owned[axis][start]
            lo, hi = (math.floor(v * factor + 1e-9) for v in (lo, hi))
            begin = math.floor(start * factor + 1e-9)
            target.append(slice(lo, hi))
            source.append(slice(lo - begin, hi - begin))
        expected[(slice(None), *target)] = outputs[rank][(slice(None), *source)].double()
    return expected


def merged(plan, mode, outputs, batch=3):
    merger = GridMerger(plan, mode, outputs.shape[1], tuple(outputs.shape[2:]), CPU)
    for first in range(0, len(plan), batch):
        merger.add(outputs[first : first + batch], first)
    return merger


@st.composite
def grids(draw):
    factor = draw(st.sampled_from([0.5, 1.0, 2.0]))
    patch = tuple(2 * draw(st.integers(1, 4)) for _ in range(3))
    overlap = tuple(2 * draw(st.integers(0, p // 2 - 1)) for p in patch)
    padded = draw(st.booleans())
    shape = tuple(
        draw(st.integers(max(p - (o if padded else 0), 1), p + 9)) for p, o in zip(patch, overlap)
    )
    if factor == 0.5:  # the starts of a downsampled output must fall on output voxels
        overlap = tuple(o - o % 4 for o in overlap)
        shape = tuple(s + s % 2 for s in shape)
        patch = tuple(p + p % 4 for p in patch)
        shape = tuple(max(s, p) for s, p in zip(shape, patch))
        padded = False
    return GridPlan(shape, patch, overlap, padded), factor


@settings(max_examples=40, deadline=None)
@given(
    grid=grids(),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**16),
    block_bytes=st.sampled_from([1, 300, merger_module.NORMALISE_BLOCK_BYTES]),
)
def test_output_equals_the_brute_force_blend(grid, mode, seed, block_bytes):
    """Whatever the size of the blocks finalize() normalises (1 byte: one row at a time)."""
    plan, factor = grid
    output_patch = tuple(round(p * factor) for p in plan.patch_size)
    generator = torch.Generator().manual_seed(seed)
    outputs = torch.rand((len(plan), 2, *output_patch), generator=generator)
    default, merger_module.NORMALISE_BLOCK_BYTES = merger_module.NORMALISE_BLOCK_BYTES, block_bytes
    try:
        result = merged(plan, mode, outputs).finalize()
    finally:
        merger_module.NORMALISE_BLOCK_BYTES = default
    if mode == "crop":
        expected = crop_reference(plan, outputs, factor)
    else:
        values, weights = brute_force(plan, mode, outputs, factor)
        assert (weights > 0).all()  # the grid covers every voxel
        expected = values / weights
    assert result.shape == expected.shape
    torch.testing.assert_close(result.double(), expected, atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(grid=grids(), mode=st.sampled_from(["average", "hann", "gaussian"]), data=st.data())
def test_weights_of_the_first_patches_equal_the_brute_force_sum(grid, mode, data):
    plan, factor = grid
    output_patch = tuple(round(p * factor) for p in plan.patch_size)
    outputs = torch.rand((len(plan), 1, *output_patch))
    done = data.draw(st.integers(0, len(plan)))
    merger = merged(plan, mode, outputs[:done]) if done else merged(plan, mode, outputs[:0])
    # A grid where no two patches overlap merges as 'average' whatever the mode (the same
    # result: each voxel's one weight divides itself); its weights are then those of 'average'.
    assert merger.mode == mode or merger.mode == "average"
    values, weights = brute_force(plan, merger.mode, outputs, factor, done)
    everything = (slice(None),) * 3
    torch.testing.assert_close(
        merger.weights(done, everything).double(), weights, atol=1e-5, rtol=1e-5
    )
    partial = merger.normalized(done, everything).double()
    expected = torch.where(weights > 0, values / weights.clamp(min=1e-30), 0)
    torch.testing.assert_close(partial, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_a_constant_output_stays_constant(mode):
    plan = GridPlan((11, 9, 7), (6, 4, 4), (2, 2, 0), padded=True)
    outputs = torch.full((len(plan), 1, 6, 4, 4), 3.0)
    assert torch.allclose(merged(plan, mode, outputs).finalize(), torch.tensor(3.0))


@pytest.mark.parametrize(
    ("value", "finite"),
    [(float("nan"), False), (float("inf"), False), (-float("inf"), False), (3e38, True)],
    ids=["nan", "inf", "-inf", "sum-overflows"],
)
def test_all_finite_sees_one_bad_voxel_in_any_block(value, finite, monkeypatch):
    """A NaN or infinity anywhere is seen; finite values whose block sum overflows are not
    mistaken for one (the buffer is then read)."""
    monkeypatch.setattr(merger_module, "NORMALISE_BLOCK_BYTES", 8 * 8 * 4 * 2)  # 2 rows a block
    plan = GridPlan((8, 8, 8), (4, 4, 4), (2, 2, 2))
    outputs = torch.ones(len(plan), 1, 4, 4, 4)
    outputs[-1, 0, -1, -1, -1] = value  # the last voxel: the last block
    if finite:
        outputs[-1] = value
    merger = merged(plan, "gaussian", outputs)
    merger.finalize()
    assert merger.all_finite() is finite
    assert merged(plan, "gaussian", torch.ones_like(outputs)).finalize().isfinite().all()


def test_a_retried_batch_is_not_added_twice():
    plan = GridPlan((8, 8, 8), (4, 4, 4), (2, 2, 2))
    outputs = torch.rand(len(plan), 1, 4, 4, 4)
    merger = merged(plan, "hann", outputs)
    merger.add(outputs[:4], 0)  # ranks already merged are skipped
    torch.testing.assert_close(merger.finalize(), merged(plan, "hann", outputs).finalize())


def test_region_is_the_touched_box():
    plan = GridPlan((10, 8, 8), (4, 4, 4), (2, 0, 0), padded=True)
    merger = GridMerger(plan, "average", 1, (8, 8, 8), CPU)  # upsampled twice
    assert merger.region(0) == (slice(0, 6), slice(0, 8), slice(0, 8))  # starts at -1: -2 out


def test_axis_plans_are_reused_within_a_byte_budget(monkeypatch):
    """A grid run again reuses its axis plans; the cache never holds more than its budget."""
    from napari_patchwork.core.inference import merger as merging

    monkeypatch.setattr(merging, "AXIS_CACHE_BYTES", 2 << 20)
    monkeypatch.setattr(merging, "_axis_cache", merging.OrderedDict())
    small = GridPlan((40, 40, 40), (16, 16, 16), (8, 8, 8))
    first = GridMerger(small, "gaussian", 1, (16, 16, 16), torch.device("cpu"))
    again = GridMerger(small, "gaussian", 1, (16, 16, 16), torch.device("cpu"))
    assert all(a is b for a, b in zip(first.axes, again.axes))
    for length in (800, 900, 1000):  # an axis plan is ~(2n + 1) x length x 8 bytes: 1.2-1.9 MiB
        GridMerger(
            GridPlan((length, 8, 8), (16, 8, 8), (8, 0, 0)),
            "average",
            1,
            (16, 8, 8),
            torch.device("cpu"),
        )
        held = sum(size for _, size in merging._axis_cache.values())
        assert held <= merging.AXIS_CACHE_BYTES
    assert all(axis is not first.axes[0] for axis, _ in merging._axis_cache.values())  # evicted
    huge = GridPlan((2000, 8, 8), (16, 8, 8), (8, 0, 0))  # a plan over the budget: not kept
    plan = GridMerger(huge, "average", 1, (16, 8, 8), torch.device("cpu")).axes[0]
    assert all(axis is not plan for axis, _ in merging._axis_cache.values())
    result = GridMerger(huge, "average", 1, (16, 8, 8), torch.device("cpu"))
    assert result.axes[0] is not plan and torch.equal(result.axes[0].prefix, plan.prefix)


def test_a_crop_preview_shows_zeros_where_no_patch_has_reached():
    plan = GridPlan((12, 4, 4), (4, 4, 4), (2, 0, 0))
    outputs = torch.rand(len(plan), 1, 4, 4, 4)
    merger = merged(plan, "crop", outputs[:2])
    preview = merger.normalized(2, (slice(None),) * 3)
    assert preview[:, 6:].eq(0).all()  # rows the first two patches never reach: 0, not NaN
    assert preview.isfinite().all()


def test_finalize_again_returns_the_same_result():
    """Rows are normalised once, whatever calls finalize() (the engine's result() twice)."""
    plan = GridPlan((10, 8, 8), (4, 4, 4), (2, 2, 2))
    outputs = torch.rand(len(plan), 1, 4, 4, 4)
    merger = merged(plan, "gaussian", outputs)
    first = merger.finalize().clone()
    torch.testing.assert_close(merger.finalize(), first)


@pytest.mark.parametrize("mode", ["average", "hann", "gaussian"])
def test_patches_that_do_not_overlap_are_the_output_exactly(mode):
    """One patch per voxel: any blend is the patch's value, bit for bit (weights of ones,
    nothing multiplied; a window divided by itself would round)."""
    plan = GridPlan((8, 12, 4), (4, 4, 4))
    outputs = torch.rand(len(plan), 2, 4, 4, 4)
    merger = merged(plan, mode, outputs)
    assert all(axis.unit for axis in merger.axes)
    expected = torch.empty(2, 8, 12, 4)
    for rank in range(len(plan)):
        expected[(slice(None), *plan.location(rank).to_slices())] = outputs[rank]
    assert torch.equal(merger.finalize(), expected)
    flush = GridPlan((8, 10, 4), (4, 4, 4))  # the last patch along J overlaps its neighbour
    assert not merged(flush, mode, torch.rand(len(flush), 1, 4, 4, 4)).axes[1].unit


def test_moving_the_buffer_mid_run_moves_what_is_summed_too():
    """The out-of-memory fall-back moves the buffer after some rows are normalised (and
    summed, on the old device); finalize() then stacks sums from one device ('meta' stands in
    for the other device on a machine without a GPU)."""
    plan = GridPlan((12, 8, 8), (4, 4, 4), (2, 2, 2))
    outputs = torch.rand(len(plan), 1, 4, 4, 4)
    per_row = plan.counts[1] * plan.counts[2]
    merger = GridMerger(plan, "gaussian", 1, (4, 4, 4), CPU)
    merger.add(outputs[: 2 * per_row], 0)  # the second grid row started: the first's rows final
    merger.to(torch.device("meta"))
    merger.add(outputs[2 * per_row :], 2 * per_row)
    assert merger.finalize().device.type == "meta"


def test_an_out_of_memory_error_while_finishing_rows_is_retried_correctly(monkeypatch):
    """An error where a grid row finishes the rows before it (the engine then retries the batch
    on the CPU) leaves nothing half done: the result equals an undisturbed run."""
    import napari_patchwork as pw

    volume = torch.rand(1, 12, 8, 8, generator=torch.Generator().manual_seed(0))

    def model(x):
        return 2 * x

    clean = pw.infer(model, volume, patch_size=4, patch_overlap=2, batch_size=2)
    inverse_axes, calls = GridMerger._inverse_axes, []

    def failing_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return inverse_axes(self)

    monkeypatch.setattr(GridMerger, "_inverse_axes", failing_once)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        retried = pw.infer(model, volume, patch_size=4, patch_overlap=2, batch_size=2)
    torch.testing.assert_close(retried, clean, rtol=0, atol=0)
