"""The one currency between samplers, aggregator, queue and overlays: ``PatchLocation``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from napari_patchwork.core._validation import _is_int
from napari_patchwork.core.types import TypeTriplet


def _as_triplet(value: Sequence[int], name: str) -> TypeTriplet:
    if (
        type(value) is tuple
        and len(value) == 3
        and type(value[0]) is int
        and type(value[1]) is int
        and type(value[2]) is int
    ):
        return value  # the common case, built by our own grids and samplers (no generator)
    values = list(value.tolist() if hasattr(value, "tolist") else value)
    if len(values) != 3 or not all(_is_int(v) for v in values):
        raise TypeError(f"{name} must be 3 integers, got {value!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


@dataclass(frozen=True)
class PatchLocation:
    """Spatial location of a patch in the voxel grid of the *original* volume.

    With a padded grid, ``index_ini`` may be negative and ``index_fin`` may pass the
    volume's shape: the location still refers to unpadded voxel coordinates.

    Parameters
    ----------
    index : tuple of 3 int
        First voxel ``(i, j, k)`` of the patch.
    size : tuple of 3 int
        Patch size in voxels, each positive.
    subject_index : int or None
        Identifier of the subject the patch comes from, for multi-subject batches.

    Examples
    --------
    >>> location = PatchLocation(index=(0, 4, 8), size=(8, 8, 8))
    >>> location.index_fin
    (8, 12, 16)
    >>> location.to_slices()
    (slice(0, 8, None), slice(4, 12, None), slice(8, 16, None))
    >>> location.scaled(0.5)
    PatchLocation(index=(0, 2, 4), size=(4, 4, 4), subject_index=None)
    """

    index: TypeTriplet
    size: TypeTriplet
    subject_index: int | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", _as_triplet(self.index, "index"))
        object.__setattr__(self, "size", _as_triplet(self.size, "size"))
        if min(self.size) < 1:
            raise ValueError(f"size must be positive, got {self.size}")

    @property
    def index_ini(self) -> TypeTriplet:
        """First voxel of the patch (inclusive)."""
        return self.index

    @property
    def index_fin(self) -> TypeTriplet:
        """One past the last voxel of the patch."""
        (a, b, c), (i, j, k) = self.index, self.size
        return (a + i, b + j, c + k)

    @property
    def center(self) -> TypeTriplet:
        """The patch centre as used by the weighted samplers: ``index_ini + size // 2``."""
        i, j, k = (a + s // 2 for a, s in zip(self.index, self.size))
        return (i, j, k)

    def to_slices(self) -> tuple[slice, slice, slice]:
        """Spatial slices for indexing a ``(..., I, J, K)`` tensor."""
        (a, b, c), (i, j, k) = self.index, self.size
        return (slice(a, a + i), slice(b, b + j), slice(c, c + k))

    def scaled(self, factor: float | Sequence[float]) -> PatchLocation:
        """Return the location in a grid scaled by ``factor`` (e.g. 0.5 for a stride-2 output).

        The first index is ``floor(index * factor)`` and the size ``round(size * factor)``,
        so patches of one size keep one size after scaling.
        """
        factors = _as_factors(factor)
        index = tuple(math.floor(i * f + 1e-9) for i, f in zip(self.index, factors))
        size = tuple(max(1, round(s * f)) for s, f in zip(self.size, factors))
        return PatchLocation(index, size, self.subject_index)  # type: ignore[arg-type]

    def intersects(self, spatial_shape: Sequence[int]) -> bool:
        """Whether the patch overlaps a volume of ``spatial_shape`` by at least one voxel."""
        return all(
            ini < s and fin > 0
            for ini, fin, s in zip(self.index_ini, self.index_fin, spatial_shape)
        )

    def inside(self, spatial_shape: Sequence[int]) -> bool:
        """Whether the patch lies entirely inside a volume of ``spatial_shape``."""
        (a, b, c), (i, j, k) = self.index, self.size
        x, y, z = spatial_shape
        return a >= 0 and b >= 0 and c >= 0 and a + i <= x and b + j <= y and c + k <= z


def _as_factors(factor: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(factor, bool):
        raise TypeError(f"factor must be a positive number or 3 numbers, got {factor!r}")
    if isinstance(factor, (int, float)):
        factors = [float(factor)] * 3
    else:
        factors = [float(f) for f in factor]
        if len(factors) != 3:
            raise ValueError(f"factor must be a number or 3 numbers, got {factor!r}")
    if not all(f > 0 and math.isfinite(f) for f in factors):
        raise ValueError(f"factor must be positive and finite, got {factor!r}")
    return (factors[0], factors[1], factors[2])
