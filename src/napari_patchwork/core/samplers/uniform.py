"""``UniformSampler``: random patches, every admissible corner equally likely."""

from __future__ import annotations

from collections.abc import Callable

import torch

from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.data.subject import Subject

from .._validation import check_patch_fits
from ..types import TypeSize
from .base import RandomSampler


class UniformSampler(RandomSampler):
    """Random patches with a uniform distribution over every corner ``0 … shape - patch``.

    Parameters
    ----------
    subject : Subject
        The subject to sample from (``Queue`` passes others through ``sampler(subject, n)``).
    patch_size : int or tuple of 3 int
        Spatial patch size; must fit inside the volume.
    num_patches : int, optional
        Patches per iteration; None means an infinite stream.
    generator : torch.Generator, optional
        Source of randomness; default: torch's global generator.
    seed : int, optional
        Seed for a private generator (ignored when ``generator`` is given).

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import ScalarImage, Subject
    >>> subject = Subject(t1=ScalarImage(torch.rand(1, 12, 12, 12)))
    >>> sampler = UniformSampler(subject, patch_size=4, num_patches=3, seed=0)
    >>> [patch.t1.data.shape[1:] for patch in sampler]
    [torch.Size([4, 4, 4]), torch.Size([4, 4, 4]), torch.Size([4, 4, 4])]
    """

    def __init__(
        self,
        subject: Subject | None,
        patch_size: TypeSize,
        num_patches: int | None = None,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(subject, patch_size, num_patches, generator=generator, seed=seed)
        if self.subject is not None:
            check_patch_fits(self.patch_size, self.subject.spatial_shape)

    def _prepare(self, subject: Subject) -> Callable[[torch.Generator | None], PatchLocation]:
        highs = [s - p + 1 for s, p in zip(subject.spatial_shape, self.patch_size)]
        size = self.patch_size

        def draw(generator: torch.Generator | None) -> PatchLocation:
            i, j, k = (int(torch.randint(high, (1,), generator=generator)) for high in highs)
            return PatchLocation((i, j, k), size)

        return draw
