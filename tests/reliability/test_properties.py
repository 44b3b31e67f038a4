"""Invariants over random shapes (1–80 voxels per axis), patch sizes, even overlaps and padding
modes (hypothesis): the grid covers every voxel; identity through every overlap mode returns
the input; crop mode writes each voxel exactly once; random patches lie inside the volume;
``PatchLocation.scaled`` round-trips."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import napari_patchwork as pw

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def grids(draw, max_size=80, max_per_axis=9):
    """(shape, patch, overlap, padding_mode): 1–``max_size`` voxels per axis, a patch that
    fits the (padded) volume, an even overlap, at most ~``max_per_axis`` patches per axis."""
    padding_mode = draw(st.sampled_from([None, "constant", "reflect", "edge", "wrap"]))
    shape, patch, overlap = [], [], []
    for _ in range(3):
        size = draw(st.integers(1, max_size))
        least_step = -(-size // max_per_axis)
        if padding_mode is None:
            p = draw(st.integers(least_step, size))
            o = 2 * draw(st.integers(0, max(0, min((p - 1) // 2, (p - least_step) // 2))))
        else:
            half_limit = 4 if padding_mode != "reflect" else min(4, size - 1)
            o = 2 * draw(st.integers(0, half_limit))  # numpy reflect: border < axis
            p = draw(st.integers(o + least_step, size + o))
        shape.append(size), patch.append(p), overlap.append(o)
    return tuple(shape), tuple(patch), tuple(overlap), padding_mode


@SETTINGS
@given(grids())
def test_grid_covers_every_voxel(grid):
    shape, patch, overlap, padding_mode = grid
    coverage = np.zeros(shape, int)
    for location in pw.grid_locations(shape, patch, overlap, padding_mode is not None):
        slices = tuple(
            slice(max(a, 0), max(b, 0)) for a, b in zip(location.index_ini, location.index_fin)
        )
        coverage[slices] += 1
    assert coverage.min() >= 1


@SETTINGS
@given(grids(), st.sampled_from(["crop", "average", "hann", "gaussian"]), st.integers(1, 9))
def test_identity_through_tiled_inference_returns_the_input(grid, mode, batch_size):
    shape, patch, overlap, padding_mode = grid
    data = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1))
    output = pw.infer(
        lambda x: x,
        data,
        patch_size=patch,
        patch_overlap=overlap,
        overlap_mode=mode,
        batch_size=batch_size,
        padding_mode=padding_mode,
    )
    assert torch.allclose(output, data, atol=1e-5)


@SETTINGS
@given(
    grids(max_size=24, max_per_axis=4),
    st.sampled_from(["crop", "average", "hann", "gaussian"]),
    st.integers(1, 5),
)
def test_identity_model_returns_the_input(grid, mode, batch_size):
    shape, patch, overlap, padding_mode = grid
    data = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    subject = pw.Subject(t1=pw.ScalarImage(data))
    sampler = pw.GridSampler(subject, patch, overlap, padding_mode)
    aggregator = pw.PatchAggregator(shape, mode, overlap)
    for batch in DataLoader(sampler, batch_size=batch_size):
        aggregator.add_batch(batch.t1.data, batch.patch_location)
    assert torch.allclose(aggregator.get_output(), data, atol=1e-5)


@SETTINGS
@given(grids())
def test_crop_mode_writes_each_voxel_exactly_once(grid):
    shape, patch, overlap, padding_mode = grid
    per_axis = [
        sorted(pw.crop_intervals(s, p, o, padding_mode is not None).values())
        for s, p, o in zip(shape, patch, overlap)
    ]
    for intervals, size in zip(per_axis, shape):
        voxels = [v for lo, hi in intervals for v in range(lo, hi)]
        assert voxels == list(range(size))


@SETTINGS
@given(
    shape=st.tuples(*[st.integers(1, 80)] * 3),
    data=st.data(),
    kind=st.sampled_from(["uniform", "weighted", "label"]),
    seed=st.integers(0, 2**16),
)
def test_random_patches_lie_inside_the_volume(shape, data, kind, seed):
    patch = tuple(data.draw(st.integers(1, s)) for s in shape)
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(1, *shape, generator=generator)
    labels = (weights > 0.5).to(torch.int64)
    labels.view(-1)[0] = 1
    subject = pw.Subject(
        t1=pw.ScalarImage(weights),
        p=pw.ScalarImage(weights + 1e-3),
        seg=pw.LabelMap(torch.ones_like(labels)),
    )
    sampler = {
        "uniform": lambda: pw.UniformSampler(subject, patch, 20, seed=seed),
        "weighted": lambda: pw.WeightedSampler(subject, patch, "p", 20, seed=seed),
        "label": lambda: pw.LabelSampler(subject, patch, "seg", None, 20, seed=seed),
    }[kind]()
    for item in sampler:
        assert item.patch_location.inside(shape)
        assert item.t1.data.shape[1:] == patch


@SETTINGS
@given(
    index=st.tuples(*[st.integers(-50, 50)] * 3),
    size=st.tuples(*[st.integers(1, 40)] * 3),
    factor=st.sampled_from([2, 3, 4]),
)
def test_scaled_round_trips(index, size, factor):
    location = pw.PatchLocation(index, size)
    assert location.scaled(factor).scaled(1 / factor) == location
