import pytest

from napari_patchwork import crop_intervals, grid_locations, grid_starts


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
