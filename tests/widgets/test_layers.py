"""Converters from core results to layer data, no viewer."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_patchwork import GridPlan, PatchLocation
from napari_patchwork.widgets._layers import (
    boxes_to_vectors,
    centres,
    grid_boxes,
    grid_lines,
    label_composition,
    locations_to_boxes,
)
from tests.widgets.segments import traced


def test_wireframe_has_twelve_edges_along_voxel_borders():
    vectors = boxes_to_vectors(np.array([[0, 0, 0]]), np.array([[2, 3, 4]]))
    assert vectors.shape == (12, 2, 3)
    ends = vectors[:, 0] + vectors[:, 1]
    corners = {tuple(p) for p in np.concatenate([vectors[:, 0], ends])}
    assert corners == {(i, j, k) for i in (-0.5, 1.5) for j in (-0.5, 2.5) for k in (-0.5, 3.5)}


def test_slice_rectangles_lie_in_the_slice():
    vectors = boxes_to_vectors(
        np.array([[0, 0, 0], [4, 0, 0]]), np.array([[8, 4, 4], [12, 4, 4]]), 0, 5
    )
    assert vectors.shape == (8, 2, 3)
    assert np.all(vectors[:, 0, 0] == 5) and np.all(vectors[:, 1, 0] == 0)


def test_grid_boxes_in_a_slice_match_the_plan():
    plan = GridPlan((20, 20, 20), (8, 8, 8), (4, 4, 4))
    ini, fin = grid_boxes(plan, sliced_axis=0, position=9)
    expected = [
        loc for loc in plan.locations(0, len(plan)) if loc.index_ini[0] <= 9 < loc.index_fin[0]
    ]
    assert sorted(map(tuple, ini)) == sorted(loc.index_ini for loc in expected)
    assert np.all(fin - ini == 8)
    everything, _ = grid_boxes(plan)
    assert len(everything) == len(plan)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(*[st.integers(4, 20)] * 3),
    patch=st.integers(2, 8),
    half_overlap=st.integers(0, 3),
    padded=st.booleans(),
    slice_at=st.one_of(st.none(), st.tuples(st.integers(0, 2), st.integers(0, 19))),
)
def test_lattice_lines_draw_exactly_the_box_edges(shape, patch, half_overlap, padded, slice_at):
    patch = min(patch, *shape)
    overlap = min(2 * half_overlap, (patch - 1) // 2 * 2)
    plan = GridPlan(shape, (patch,) * 3, (overlap,) * 3, padded)
    axis, position = slice_at if slice_at else (None, 0)
    position = min(position, shape[axis] - 1) if axis is not None else 0
    ini, fin = grid_boxes(plan, axis, position)
    edges = boxes_to_vectors(ini, fin, axis, position)
    assert traced(grid_lines(plan, axis, position)) == traced(edges)


def test_lattice_lines_are_few_for_a_big_grid():
    plan = GridPlan((176, 176, 176), (8, 8, 8), (0, 0, 0))
    assert len(plan) == 10_648
    assert len(grid_lines(plan)) == 3 * 23 * 23  # against 12 × 10,648 box edges
    assert len(grid_lines(plan, 0, 100)) == 2 * 23


def test_location_helpers():
    locations = [PatchLocation((0, 0, 0), (4, 4, 4)), PatchLocation((6, 0, 0), (4, 4, 4))]
    ini, _ = locations_to_boxes(locations, 0, 7)
    assert ini.tolist() == [[6, 0, 0]]
    assert centres(locations).tolist() == [[2, 2, 2], [8, 2, 2]]
    labels = np.zeros((10, 4, 4), int)
    labels[6:] = 1
    composition = label_composition(labels, locations, [0, 1])
    assert composition["centre"].tolist() == [0.5, 0.5]
    assert composition["voxels"].tolist() == [0.5, 0.5]
