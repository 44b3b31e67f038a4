import numpy as np
import pytest

from napari_patchwork import GridPlan, crop_intervals, grid_locations, grid_starts


@pytest.mark.parametrize(
    ("size", "patch", "overlap", "padded", "expected"),
    [
        (10, 4, 0, False, [0, 4, 6]),
        (10, 4, 2, False, [0, 2, 4, 6]),
        (8, 8, 0, False, [0]),
        (10, 4, 2, True, [-1, 1, 3, 5, 7]),
        (5, 6, 2, True, [-1, 0]),
    ],
)
def test_grid_starts(size, patch, overlap, padded, expected):
    assert grid_starts(size, patch, overlap, padded) == expected


def test_grid_locations_are_lexicographic():
    locations = grid_locations((6, 6, 6), (4, 4, 4), (2, 2, 2))
    indices = [location.index for location in locations]
    assert indices == sorted(indices) and len(indices) == 8
    assert all(location.size == (4, 4, 4) for location in locations)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize(
    ("size", "patch", "overlap"), [(10, 4, 2), (17, 6, 4), (9, 9, 0), (33, 8, 6)]
)
def test_crop_intervals_partition_the_axis(size, patch, overlap, padded):
    intervals = sorted(crop_intervals(size, patch, overlap, padded).values())
    covered = [voxel for lo, hi in intervals for voxel in range(lo, hi)]
    assert covered == list(range(size))


@pytest.mark.parametrize(
    ("arguments", "error", "words"),
    [
        ({"patch_overlap": 3}, ValueError, "patch_overlap must be even"),
        ({"patch_overlap": (2, 1, 0)}, ValueError, r"patch_overlap must be even.*\(2, 1, 0\)"),
        ({"patch_overlap": 8}, ValueError, "smaller than patch_size"),
        ({"patch_size": 0}, ValueError, "patch_size must be positive"),
        ({"patch_size": 4.0}, TypeError, "patch_size"),
        ({"patch_size": 12}, ValueError, r"patch_size \(12, 12, 12\) is larger than the volume"),
        ({"spatial_shape": (8, 8)}, ValueError, "spatial_shape must be an int or 3 ints"),
        ({"spatial_shape": 8}, TypeError, "spatial_shape must be a sequence of 3 ints, got 8"),
        ({"spatial_shape": (8, 0, 8)}, ValueError, "spatial_shape must be positive"),
        ({"padded": "yes"}, TypeError, "padded must be True or False, got 'yes'"),
    ],
)
def test_grid_plan_refuses_bad_arguments_by_name(arguments, error, words):
    values = {"spatial_shape": (8, 8, 8), "patch_size": 4, "patch_overlap": 2, "padded": False}
    values.update(arguments)
    with pytest.raises(error, match=words):
        GridPlan(**values)


def test_grid_plan_counts_the_padding_when_the_patch_is_larger_than_the_volume():
    plan = GridPlan((5, 6, 6), 6, 2, padded=True)  # padded by 1 on each side: 7 >= 6
    assert plan.counts == (2, 2, 2) and plan.location(0).index == (-1, -1, -1)
    with pytest.raises(ValueError, match="larger than the volume"):
        GridPlan((5, 6, 6), 6, 2, padded=False)


def test_grid_plan_takes_sizes_as_the_api_does():
    plan = GridPlan(np.array([10, 8, 8]), 4, (2, 0, 0))
    assert plan.spatial_shape == (10, 8, 8) and plan.patch_size == (4, 4, 4)
    assert plan.patch_overlap == (2, 0, 0) and len(plan) == 16


@pytest.mark.parametrize("kept", [0, 10_000], ids=["made-each-time", "kept"])
def test_locations_are_the_same_whether_kept_or_made(kept, monkeypatch):
    from napari_patchwork.core.inference import grid

    monkeypatch.setattr(grid, "KEPT_LOCATIONS", kept)
    plan = GridPlan((10, 9, 7), (4, 4, 4), (2, 2, 0), padded=True)
    expected = [plan.location(rank) for rank in range(len(plan))]
    assert plan.locations(0, len(plan)) == expected
    assert plan.locations(5, 9) == expected[5:9]
    plan.locations(0, 3).clear()  # a caller's list is its own
    assert plan.locations(0, 3) == expected[:3]


def test_a_planned_grid_is_shared_and_checked():
    from napari_patchwork.core.inference.grid import planned_grid

    assert planned_grid((8, 8, 8), (4, 4, 4), (2, 2, 2), False) is planned_grid(
        (8, 8, 8), (4, 4, 4), (2, 2, 2), False
    )
    with pytest.raises(ValueError, match="overlap"):
        planned_grid((8, 8, 8), (4, 4, 4), (3, 3, 3), False)
