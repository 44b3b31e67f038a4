"""``WeightedSampler``: patch centres drawn in proportion to a probability map."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.data.subject import Subject

from .._validation import check_patch_fits
from ..types import TypeSize, TypeTriplet
from .base import RandomSampler


def admissible_slices(
    spatial_shape: TypeTriplet, patch_size: TypeTriplet
) -> tuple[slice, slice, slice]:
    """Slices of the centres ``index_ini + patch // 2`` whose patch fits in the volume."""
    a, b, c = (slice(p // 2, s - p + p // 2 + 1) for s, p in zip(spatial_shape, patch_size))
    return (a, b, c)


def restrict_to_admissible(weights: torch.Tensor, patch_size: TypeTriplet) -> torch.Tensor:
    """A copy of the ``(I, J, K)`` weights, zero at centres whose patch would not fit."""
    restricted = torch.zeros_like(weights)
    slices = admissible_slices(tuple(weights.shape), patch_size)  # type: ignore[arg-type]
    restricted[slices] = weights[slices]
    return restricted


def check_weights(weights: torch.Tensor, name: str) -> None:
    """Refuse NaN, infinite or negative sampling weights."""
    if not torch.isfinite(weights).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (weights < 0).any():
        raise ValueError(f"{name} contains negative values (min {float(weights.min())})")


class _CentreTable:
    """Cumulative sums over admissible centres: O(N) once, then O(log N) per draw.

    Built with numpy (one thread): it runs in the Queue's loading threads, where torch's
    intra-op threads would compete with the training loop for the same cores.
    """

    def __init__(
        self, weights: torch.Tensor | np.ndarray, patch_size: TypeTriplet, name: str
    ) -> None:
        array = weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else weights
        admissible = array[admissible_slices(array.shape, patch_size)]
        self.shape = tuple(admissible.shape)
        cdf = np.cumsum(admissible, axis=None, dtype=np.float64)  # C order, like reshape(-1)
        self.total = float(cdf[-1])
        if not self.total > 0:
            raise ValueError(
                f"{name} is zero at every centre where a patch of size {patch_size} fits"
            )
        # The last centre of positive weight: where the cumulative sum first reaches its total.
        self.last = int(np.searchsorted(cdf, cdf[-1], side="left"))
        self.cdf = torch.from_numpy(cdf)
        self.patch_size = patch_size

    def draw(self, generator: torch.Generator | None) -> PatchLocation:
        target = torch.rand(1, dtype=torch.float64, generator=generator) * self.total
        flat = min(int(torch.searchsorted(self.cdf, target, right=True)), self.last)
        _, j, k = self.shape
        corner = (flat // (j * k), (flat // k) % j, flat % k)
        return PatchLocation(corner, self.patch_size)


class _SupportTable:
    """Uniform draws over the admissible centres where a mask holds, without a weight map.

    Draws exactly what a :class:`_CentreTable` of the 0/1 weights draws (its cumulative sum
    counts the mask, so the binary search lands on mask voxel ``floor(u * count)``), from the
    flat indices of the mask alone: no float64 map of the volume and no cumulative sum.
    """

    def __init__(self, admissible: np.ndarray, patch_size: TypeTriplet, name: str) -> None:
        """``admissible``: the mask over the admissible centres (:func:`admissible_slices`)."""
        self.shape = tuple(admissible.shape)
        self.indices = np.flatnonzero(admissible)
        self.total = float(len(self.indices))
        if not self.total > 0:
            raise ValueError(
                f"{name} is zero at every centre where a patch of size {patch_size} fits"
            )
        self.patch_size = patch_size

    def draw(self, generator: torch.Generator | None) -> PatchLocation:
        target = torch.rand(1, dtype=torch.float64, generator=generator) * self.total
        flat = int(self.indices[min(int(target), len(self.indices) - 1)])
        _, j, k = self.shape
        corner = (flat // (j * k), (flat // k) % j, flat % k)
        return PatchLocation(corner, self.patch_size)


class WeightedSampler(RandomSampler):
    """Random patches whose centres follow a probability map.

    A patch's centre is ``index_ini + patch_size // 2``; centres are drawn with probability
    proportional to the map, among the centres whose patch fits in the volume (every corner
    ``0 … shape - patch`` is admissible). The map is prepared once per subject (cumulative
    sum, O(N)) and each draw is a binary search (O(log N)), for volumes of any size.

    Parameters
    ----------
    subject : Subject
        The subject to sample from.
    patch_size : int or tuple of 3 int
        Spatial patch size.
    probability_map : str
        Name of the image of the subject holding the (unnormalised, non-negative) weights.
    num_patches : int, optional
        Patches per iteration; None means infinite.
    generator, seed
        As for :class:`UniformSampler`.

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import ScalarImage, Subject
    >>> weights = torch.zeros(1, 10, 10, 10); weights[0, 5, 5, 5] = 1
    >>> subject = Subject(t1=ScalarImage(torch.rand(1, 10, 10, 10)), p=ScalarImage(weights))
    >>> sampler = WeightedSampler(subject, 4, "p", num_patches=2, seed=1)
    >>> [patch.patch_location.center for patch in sampler]
    [(5, 5, 5), (5, 5, 5)]
    """

    def __init__(
        self,
        subject: Subject | None,
        patch_size: TypeSize,
        probability_map: str | None = None,
        num_patches: int | None = None,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(subject, patch_size, num_patches, generator=generator, seed=seed)
        self.probability_map_name = probability_map
        if self.subject is not None:
            check_patch_fits(self.patch_size, self.subject.spatial_shape)
            self._table(self.subject)  # validate the map now, not at the first draw

    def get_probability_map(self, subject: Subject | None = None) -> torch.Tensor:
        """The ``(I, J, K)`` centre probabilities actually used: restricted and summing to 1."""
        subject = self._subject(subject)
        weights = restrict_to_admissible(self._weights(subject).to(torch.float64), self.patch_size)
        return weights / weights.sum()

    def _weights(self, subject: Subject) -> torch.Tensor:
        image = subject.check_image(self.probability_map_name, "probability_map")
        if image.num_channels != 1:
            warnings.warn(
                f"probability_map {self.probability_map_name!r} has {image.num_channels}"
                " channels; using the first",
                UserWarning,
                stacklevel=3,
            )
        weights = image.data[0].to(torch.float64)
        check_weights(weights, f"probability_map {self.probability_map_name!r}")
        return weights

    def _map_description(self) -> str:
        return f"probability_map {self.probability_map_name!r}"

    def _table(self, subject: Subject) -> _CentreTable | _SupportTable:
        return _CentreTable(self._weights(subject), self.patch_size, self._map_description())

    def _prepare(self, subject: Subject) -> Callable[[torch.Generator | None], PatchLocation]:
        return self._table(subject).draw
