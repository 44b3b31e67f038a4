"""How patches cover a volume: exact expected coverage of a sampler, empirical coverage of a sample.

Pure numerics for visual debugging of sampling strategies (the sampler-explorer widget shows
them). A patch with centre ``c`` covers voxels ``c - patch // 2 … c - patch // 2 + patch - 1``, so
the expected number of patches covering a voxel is the centre distribution convolved with the
patch box, times the number of patches: three cumulative-sum passes, O(N).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .grid import GridPlan
from .location import PatchLocation
from .types import TypeTriplet


def _box_sum(values: torch.Tensor, axis: int, before: int, after: int) -> torch.Tensor:
    """Along ``axis``: out[v] = sum of values[v - before … v + after] (clipped to the volume)."""
    size = values.shape[axis]
    padded = torch.nn.functional.pad(values.movedim(axis, -1), (1, 0))
    cumulative = padded.cumsum(-1)
    positions = torch.arange(size)
    high = (positions + after + 1).clamp(max=size)
    low = (positions - before).clamp(min=0)
    result = cumulative[..., high] - cumulative[..., low]
    return result.movedim(-1, axis)


def expected_coverage(
    centre_probabilities: torch.Tensor, patch_size: TypeTriplet, num_patches: int = 1
) -> torch.Tensor:
    """Expected number of patches covering each voxel, for centres drawn from a distribution.

    Parameters
    ----------
    centre_probabilities : torch.Tensor
        ``(I, J, K)`` probabilities of each voxel being a patch centre (summing to 1), e.g.
        ``WeightedSampler.get_probability_map()``.
    patch_size : tuple of 3 int
        The sampler's patch size.
    num_patches : int
        Number of patches drawn.

    Examples
    --------
    >>> centres = torch.zeros(5, 5, 5, dtype=torch.float64); centres[2, 2, 2] = 1
    >>> coverage = expected_coverage(centres, (3, 3, 3), num_patches=2)
    >>> float(coverage.sum()), float(coverage[1, 1, 1]), float(coverage[0, 0, 0])
    (54.0, 2.0, 0.0)
    """
    coverage = centre_probabilities.to(torch.float64)
    for axis, patch in enumerate(patch_size):
        # voxel v is covered by centres c with v - (patch - 1 - patch // 2) <= c <= v + patch // 2
        coverage = _box_sum(coverage, axis, before=patch - 1 - patch // 2, after=patch // 2)
    return coverage * num_patches


def empirical_coverage(
    locations: Sequence[PatchLocation], spatial_shape: Sequence[int]
) -> torch.Tensor:
    """How many of ``locations`` cover each voxel (a difference array, O(N + patches)).

    Examples
    --------
    >>> locations = [PatchLocation((0, 0, 0), (2, 2, 2)), PatchLocation((1, 1, 1), (2, 2, 2))]
    >>> coverage = empirical_coverage(locations, (3, 3, 3))
    >>> int(coverage[1, 1, 1]), int(coverage.sum())
    (2, 16)
    """
    shape = tuple(int(s) for s in spatial_shape)
    difference = torch.zeros(tuple(s + 1 for s in shape), dtype=torch.int32)
    for location in locations:
        (i0, j0, k0), (i1, j1, k1) = (
            tuple(min(max(v, 0), s) for v, s in zip(corner, shape))
            for corner in (location.index_ini, location.index_fin)
        )
        for i, j, k, sign in (
            (i0, j0, k0, 1),
            (i1, j0, k0, -1),
            (i0, j1, k0, -1),
            (i0, j0, k1, -1),
            (i1, j1, k0, 1),
            (i1, j0, k1, 1),
            (i0, j1, k1, 1),
            (i1, j1, k1, -1),
        ):
            difference[i, j, k] += sign
    coverage = difference.cumsum(0).cumsum(1).cumsum(2)
    return coverage[: shape[0], : shape[1], : shape[2]]


def axis_coverage(plan: GridPlan) -> list[torch.Tensor]:
    """Per axis, how many grid starts cover each index (the grid's coverage is their product).

    Examples
    --------
    >>> [c.tolist() for c in axis_coverage(GridPlan((6, 4, 4), (4, 4, 4), (2, 0, 0)))][0]
    [1, 1, 2, 2, 1, 1]
    """
    counts = []
    for starts, patch, size in zip(plan.starts, plan.patch_size, plan.spatial_shape):
        count = torch.zeros(size, dtype=torch.int32)
        for start in starts:
            count[max(start, 0) : min(start + patch, size)] += 1
        counts.append(count)
    return counts


def grid_coverage(plan: GridPlan) -> torch.Tensor:
    """How many grid patches cover each voxel: separable, ``c_i ⊗ c_j ⊗ c_k``.

    Examples
    --------
    >>> grid_coverage(GridPlan((6, 6, 6), (4, 4, 4), (2, 2, 2)))[:, 0, 0].tolist()
    [1, 1, 2, 2, 1, 1]
    """
    counts = axis_coverage(plan)
    return counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]


class SeparableVolume:
    """A read-only 3D array ``a ⊗ b ⊗ c + offset`` computed slice by slice, never whole.

    Viewers (napari) read it like an array: ``shape``, ``dtype``, ``ndim`` and indexing with
    ints and slices; ``numpy.asarray`` gives the full volume when asked.

    Examples
    --------
    >>> import numpy as np
    >>> volume = SeparableVolume([np.array([1, 2]), np.array([1, 3]), np.array([2])], offset=-1)
    >>> volume.shape, volume[1, :, 0].tolist()
    ((2, 2, 1), [3, 11])
    """

    def __init__(self, vectors: Sequence[Any], offset: int = 0, dtype: Any = None) -> None:
        self.vectors = [np.asarray(v) for v in vectors]
        self.offset = offset
        self.dtype = np.dtype(dtype or np.result_type(*self.vectors))
        self.shape = tuple(len(v) for v in self.vectors)
        self.ndim = 3
        self.size = int(np.prod(self.shape))

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            index = key.index(Ellipsis)
            key = key[:index] + (slice(None),) * (4 - len(key)) + key[index + 1 :]
        key = key + (slice(None),) * (3 - len(key))
        parts = [np.atleast_1d(v[k]) for v, k in zip(self.vectors, key)]
        values = np.einsum("i,j,k->ijk", *parts) + self.offset
        drop = tuple(
            axis for axis, k in enumerate(key) if np.ndim(k) == 0 and not isinstance(k, slice)
        )
        return values.squeeze(drop).astype(self.dtype, copy=False)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self[:, :, :]
        return values if dtype is None else values.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def max(self) -> Any:
        """The largest value (for non-negative vectors: the product of their maxima)."""
        return np.prod([v.max() for v in self.vectors]) + self.offset


def grid_overlap(plan: GridPlan) -> SeparableVolume:
    """Lazy ``uint8`` volume of how many *extra* patches cover each voxel (0: no overlap)."""
    return SeparableVolume([c.numpy() for c in axis_coverage(plan)], offset=-1, dtype=np.uint8)
