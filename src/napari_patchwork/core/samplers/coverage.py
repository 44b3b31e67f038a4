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
import numpy.typing as npt
import torch

from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.inference.grid import GridPlan
from napari_patchwork.core.types import TypeTriplet


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


class ComputedVolume:
    """A read-only 3D array whose values are computed for the part asked for, never whole.

    Viewers (napari) read it like an array: ``shape``, ``dtype``, ``ndim`` and indexing with
    ints and slices; ``numpy.asarray`` gives the full volume when asked. Subclasses compute
    ``_region(indices)`` for three sorted 1D index arrays.
    """

    ndim = 3

    def __init__(self, shape: Sequence[int], dtype: npt.DTypeLike) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.size = int(np.prod(self.shape))

    def _region(self, indices: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            index = key.index(Ellipsis)
            key = key[:index] + (slice(None),) * (4 - len(key)) + key[index + 1 :]
        key = key + (slice(None),) * (3 - len(key))
        indices = [np.atleast_1d(np.arange(size)[k]) for size, k in zip(self.shape, key)]
        values = self._region(indices)
        drop = tuple(a for a, k in enumerate(key) if np.ndim(k) == 0 and not isinstance(k, slice))
        return values.squeeze(drop).astype(self.dtype, copy=False)

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        values = self[:, :, :]
        return values if dtype is None else values.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


class SeparableVolume(ComputedVolume):
    """``a ⊗ b ⊗ c + offset``, computed slice by slice.

    Examples
    --------
    >>> volume = SeparableVolume([np.array([1, 2]), np.array([1, 3]), np.array([2])], offset=-1)
    >>> volume.shape, volume[1, :, 0].tolist()
    ((2, 2, 1), [3, 11])
    """

    def __init__(
        self, vectors: Sequence[npt.ArrayLike], offset: int = 0, dtype: npt.DTypeLike | None = None
    ) -> None:
        self.vectors = [np.asarray(v) for v in vectors]
        self.offset = offset
        super().__init__([len(v) for v in self.vectors], dtype or np.result_type(*self.vectors))

    def _region(self, indices: list[np.ndarray]) -> np.ndarray:
        parts = [v[index] for v, index in zip(self.vectors, indices)]
        region: np.ndarray = np.einsum("i,j,k->ijk", *parts) + self.offset
        return region

    def max(self) -> Any:
        """The largest value (for non-negative vectors: the product of their maxima)."""
        return np.prod([v.max() for v in self.vectors]) + self.offset


class LocationCoverage(ComputedVolume):
    """How many of ``locations`` cover each voxel, computed for the region asked for.

    Equals :func:`empirical_coverage` without a volume-sized array: each read adds only the
    patches meeting the region.

    Examples
    --------
    >>> locations = [PatchLocation((0, 0, 0), (2, 2, 2)), PatchLocation((1, 1, 1), (2, 2, 2))]
    >>> LocationCoverage(locations, (3, 3, 3))[1, 1].tolist()
    [1.0, 2.0, 1.0]
    """

    def __init__(self, locations: Sequence[PatchLocation], spatial_shape: Sequence[int]) -> None:
        super().__init__(spatial_shape, np.float32)
        self.ini = np.array([loc.index_ini for loc in locations], int).reshape(-1, 3)
        self.fin = np.array([loc.index_fin for loc in locations], int).reshape(-1, 3)

    def _region(self, indices: list[np.ndarray]) -> np.ndarray:
        counts = np.zeros([len(index) for index in indices], np.float32)
        low = np.stack([np.searchsorted(x, self.ini[:, a]) for a, x in enumerate(indices)], 1)
        high = np.stack([np.searchsorted(x, self.fin[:, a]) for a, x in enumerate(indices)], 1)
        for (a0, b0, c0), (a1, b1, c1) in zip(low, high):
            if a0 < a1 and b0 < b1 and c0 < c1:
                counts[a0:a1, b0:b1, c0:c1] += 1
        return counts

    def max(self) -> float:
        """An upper bound: the number of patches (exact when they share a voxel)."""
        return float(len(self.ini))


def uniform_maps(
    spatial_shape: Sequence[int], patch_size: TypeTriplet, num_patches: int
) -> tuple[SeparableVolume, SeparableVolume]:
    """Lazy centre probability and expected coverage of uniform sampling (both separable).

    The same values as ``UniformSampler.get_probability_map`` and :func:`expected_coverage`,
    from three 1D vectors, so they cost nothing for any volume size.

    Examples
    --------
    >>> probability, coverage = uniform_maps((4, 4, 4), (2, 2, 2), 3)
    >>> round(float(np.asarray(probability).sum()), 6), round(float(coverage[0, 0, 0]), 6)
    (1.0, 0.111111)
    """
    probabilities, coverages = [], []
    for size, patch in zip(spatial_shape, patch_size):
        admissible = torch.zeros(size, dtype=torch.float64)
        admissible[patch // 2 : size - patch + patch // 2 + 1] = 1
        probability = admissible / admissible.sum()
        coverage = _box_sum(probability, 0, before=patch - 1 - patch // 2, after=patch // 2)
        probabilities.append(probability.numpy())
        coverages.append(coverage.numpy())
    coverages[0] = coverages[0] * num_patches
    return SeparableVolume(probabilities, dtype=np.float32), SeparableVolume(
        coverages, dtype=np.float32
    )


def grid_overlap(plan: GridPlan) -> SeparableVolume:
    """Lazy ``uint8`` volume of how many *extra* patches cover each voxel (0: no overlap)."""
    return SeparableVolume([c.numpy() for c in axis_coverage(plan)], offset=-1, dtype=np.uint8)
