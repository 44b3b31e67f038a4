"""Pure grid planning: where the patches of a ``GridSampler`` go and which voxels each owns.

The arithmetic is TorchIO's (from NiftyNet): starts every ``patch - overlap`` voxels, plus one
last patch flush with the far border. With padding, the grid is planned on the volume padded by
``overlap // 2`` on each side, and the starts are returned in *unpadded* coordinates.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

from napari_patchwork.core._validation import _is_int, check_overlap, check_patch_fits, to_triplet
from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.types import TypeSize, TypeTriplet


def grid_starts(size: int, patch: int, overlap: int, padded: bool = False) -> list[int]:
    """Sorted first indices of the patches along one axis.

    Examples
    --------
    >>> grid_starts(10, 4, 2)
    [0, 2, 4, 6]
    >>> grid_starts(10, 4, 2, padded=True)
    [-1, 1, 3, 5, 7]
    """
    border = overlap // 2 if padded else 0
    extent = size + 2 * border
    step = patch - overlap
    starts = list(range(0, extent - patch + 1, step))
    if starts[-1] != extent - patch:
        starts.append(extent - patch)
    return [start - border for start in starts]


def grid_locations(
    spatial_shape: Sequence[int],
    patch_size: TypeTriplet,
    patch_overlap: TypeTriplet = (0, 0, 0),
    padded: bool = False,
) -> list[PatchLocation]:
    """All patch locations of a grid, in lexicographic order of their first index.

    Examples
    --------
    >>> locations = grid_locations((8, 8, 4), (4, 4, 4))
    >>> len(locations), locations[1].index
    (4, (0, 4, 0))
    """
    axes = [
        grid_starts(s, p, o, padded) for s, p, o in zip(spatial_shape, patch_size, patch_overlap)
    ]
    return [PatchLocation((i, j, k), patch_size) for i, j, k in itertools.product(*axes)]


def fit_patch(patch: Sequence[int], shape: Sequence[int]) -> TypeTriplet:
    """A patch fitted to a volume: each axis at most the volume's, rounded down to even.

    The rule for a trained model's patch (the networks training builds take any even size,
    and training padded patches near the borders): a model trained with patch 48 segments a
    30-slice scan with (48, 48, 30). An axis under 4 voxels keeps the patch's size (no patch
    fits it; the callers refuse it or pad it).

    Examples
    --------
    >>> fit_patch((48, 48, 48), (96, 96, 31))
    (48, 48, 30)
    >>> fit_patch((16, 16, 16), (40, 15, 3))
    (16, 14, 16)
    """
    a, b, c = (min(p, s - s % 2) if s >= 4 else p for p, s in zip(patch, shape))
    return (int(a), int(b), int(c))


def quarter_overlap(patch: Sequence[int]) -> TypeTriplet:
    """A quarter of each axis of ``patch``, rounded down to even: a trained model's overlap.

    Examples
    --------
    >>> quarter_overlap((32, 32, 20))
    (8, 8, 4)
    """
    a, b, c = (p // 4 - (p // 4) % 2 for p in patch)
    return (int(a), int(b), int(c))


def crop_intervals(
    size: int, patch: int, overlap: int, padded: bool = False
) -> dict[int, tuple[int, int]]:
    """Map each start along one axis to the voxels ``[lo, hi)`` its patch owns in crop mode.

    Half the overlap is trimmed from each inner side (and, for padded grids, from the outer
    sides too); where the flush last patch overlaps more, the later patch wins, as when
    TorchIO writes the patches in order. The intervals partition ``[0, size)``.

    Examples
    --------
    >>> crop_intervals(10, 4, 2)
    {0: (0, 3), 2: (3, 5), 4: (5, 7), 6: (7, 10)}
    """
    half = overlap // 2
    starts = grid_starts(size, patch, overlap, padded)
    bounds = []
    for start in starts:
        trim_ini = half if (padded or start > 0) else 0
        trim_fin = half if (padded or start + patch != size) else 0
        lo = min(max(start + trim_ini, 0), size)
        hi = min(max(start + patch - trim_fin, 0), size)
        bounds.append((lo, hi))
    intervals = {}
    for index, (start, (lo, hi)) in enumerate(zip(starts, bounds)):
        if index + 1 < len(bounds):
            hi = min(hi, bounds[index + 1][0])
        intervals[start] = (lo, max(lo, hi))
    return intervals


#: The most patches a :class:`GridPlan` keeps the locations of (about 150 bytes each).
KEPT_LOCATIONS = 8192


class GridPlan:
    """The patches of a grid in lexicographic order, addressable by their rank.

    Parameters
    ----------
    spatial_shape : sequence of 3 int
        Volume size.
    patch_size, patch_overlap : int or tuple of 3 int
        Patch size, and the overlap of neighbouring patches (even, smaller than the patch).
    padded : bool
        Whether the grid is planned on the volume padded by ``overlap // 2``.

    Raises
    ------
    TypeError, ValueError
        For a bad argument (named, with its value): e.g. an odd overlap, or a patch larger
        than the (padded) volume.

    Examples
    --------
    >>> plan = GridPlan((10, 8, 8), (4, 4, 4), (2, 0, 0))
    >>> len(plan), plan.location(1).index, plan.unravel(5)
    (16, (0, 0, 4), (1, 0, 1))
    """

    def __init__(
        self,
        spatial_shape: Sequence[int],
        patch_size: TypeSize,
        patch_overlap: TypeSize = (0, 0, 0),
        padded: bool = False,
    ) -> None:
        if _is_int(spatial_shape):
            raise TypeError(f"spatial_shape must be a sequence of 3 ints, got {spatial_shape!r}")
        shape = to_triplet(spatial_shape, "spatial_shape")
        patch = to_triplet(patch_size, "patch_size")
        overlap = to_triplet(patch_overlap, "patch_overlap", minimum=0)
        check_overlap(patch, overlap)
        if not isinstance(padded, bool):
            raise TypeError(f"padded must be True or False, got {padded!r}")
        border = [o // 2 if padded else 0 for o in overlap]
        check_patch_fits(patch, [s + 2 * b for s, b in zip(shape, border)])
        self.spatial_shape: TypeTriplet = shape
        self.patch_size: TypeTriplet = patch
        self.patch_overlap: TypeTriplet = overlap
        self.padded = padded
        self.starts = [grid_starts(s, p, o, padded) for s, p, o in zip(shape, patch, overlap)]
        self.counts = tuple(len(starts) for starts in self.starts)
        self._locations: list[PatchLocation] | None = None  # made by the first locations()

    def __len__(self) -> int:
        return self.counts[0] * self.counts[1] * self.counts[2]

    def unravel(self, rank: int) -> tuple[int, int, int]:
        """Per-axis start indices of the patch of this rank (``len(plan)`` gives ``(n_i, 0, 0)``).

        Examples
        --------
        >>> GridPlan((8, 8, 8), (4, 4, 4)).unravel(3)
        (0, 1, 1)
        """
        _, count_j, count_k = self.counts
        return (rank // (count_j * count_k), (rank // count_k) % count_j, rank % count_k)

    def location(self, rank: int) -> PatchLocation:
        """The location of the patch of this rank."""
        a, b, c = self.unravel(rank)
        return PatchLocation(
            (self.starts[0][a], self.starts[1][b], self.starts[2][c]), self.patch_size
        )

    def locations(self, first: int, stop: int) -> list[PatchLocation]:
        """Locations of the patches of ranks ``first .. stop - 1``.

        A grid of up to :data:`KEPT_LOCATIONS` patches makes them once and hands out the same
        (frozen) locations after that: a run asks for every batch's, and a plan is shared by
        the runs of one grid (:func:`planned_grid`).
        """
        if len(self) > KEPT_LOCATIONS:
            return [self.location(rank) for rank in range(first, stop)]
        if self._locations is None:
            self._locations = grid_locations(
                self.spatial_shape, self.patch_size, self.patch_overlap, self.padded
            )
        return self._locations[first:stop]

    def axis_ranks_containing(self, axis: int, voxel: int) -> list[int]:
        """Start indices along ``axis`` whose patches contain ``voxel``."""
        patch = self.patch_size[axis]
        return [m for m, start in enumerate(self.starts[axis]) if start <= voxel < start + patch]

    def ranks_at(self, voxel: Sequence[int]) -> list[int]:
        """Ranks of the patches containing ``voxel`` (what a click on the volume selects).

        Examples
        --------
        >>> GridPlan((8, 8, 8), (4, 4, 4), (2, 2, 2)).ranks_at((3, 0, 0))
        [0, 9]
        """
        per_axis = [self.axis_ranks_containing(axis, int(v)) for axis, v in enumerate(voxel)]
        _, count_j, count_k = self.counts
        return sorted(
            a * count_j * count_k + b * count_k + c for a, b, c in itertools.product(*per_axis)
        )


@functools.lru_cache(maxsize=16)
def planned_grid(
    spatial_shape: TypeTriplet, patch_size: TypeTriplet, patch_overlap: TypeTriplet, padded: bool
) -> GridPlan:
    """The :class:`GridPlan` of these settings, shared by the runs that use the same grid.

    A plan is never modified after it is made; a run of the same grid again (the widget, a
    loop over volumes of one size, a benchmark) skips planning and checking it.

    Examples
    --------
    >>> planned_grid((8, 8, 8), (4, 4, 4), (2, 2, 2), False) is planned_grid(
    ...     (8, 8, 8), (4, 4, 4), (2, 2, 2), False
    ... )
    True
    """
    return GridPlan(spatial_shape, patch_size, patch_overlap, padded)
