"""Base classes of the samplers: patch-size checks, patch extraction, seeded random streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from napari_patchwork.core.batching.collate import register_default_collate
from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.data.subject import Subject

from .._validation import check_patch_fits, check_positive_int, to_triplet
from ..types import TypeSize


def _check_subject(subject: object, name: str = "subject") -> Subject:
    if not isinstance(subject, Subject):
        raise TypeError(f"{name} must be a Subject, got {type(subject)}")
    return subject


class PatchSampler:
    """Base of all samplers: holds and checks ``patch_size``.

    Parameters
    ----------
    patch_size : int or tuple of 3 int
        Spatial size of each patch; a single int applies to all axes.
    """

    def __init__(self, patch_size: TypeSize) -> None:
        self.patch_size = to_triplet(patch_size, "patch_size")
        register_default_collate()  # a plain DataLoader over this sampler collates its patches

    def extract_patch(self, subject: Subject, location: PatchLocation) -> Subject:
        """A copy of ``subject`` cropped to ``location``, with ``patch_location`` set."""
        return subject.crop(location)


class RandomSampler(PatchSampler, IterableDataset):  # type: ignore[type-arg]
    """Base of the random samplers: an ``IterableDataset``, also callable for ``Queue``.

    Random numbers come from ``generator`` if given, else from a generator seeded with
    ``seed``, else from torch's global generator (so ``torch.manual_seed`` makes runs
    reproducible). Inside ``DataLoader`` workers each worker draws its own stream (mixed with
    the worker's torch seed) and yields its share of ``num_patches``.
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
        super().__init__(patch_size)
        self.subject = None if subject is None else _check_subject(subject)
        check_positive_int(num_patches, "num_patches", allow_none=True)
        self.num_patches = num_patches
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator)}")
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise TypeError(f"seed must be a non-negative int, got {seed!r}")
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator

    # -------------------------------------------------------------- interface
    def locations(
        self, subject: Subject, num_patches: int | None = None
    ) -> Iterator[PatchLocation]:
        """Draw patch locations for ``subject`` (infinitely when ``num_patches`` is None)."""
        yield from self._draws(self._prepare(subject), num_patches)

    def _draws(
        self, draw: Callable[[torch.Generator | None], PatchLocation], num_patches: int | None
    ) -> Iterator[PatchLocation]:
        generator = self._worker_generator()  # taken when iterated: in the consumer's order
        count = 0
        while num_patches is None or count < num_patches:
            yield draw(generator)
            count += 1

    def __call__(
        self, subject: Subject | None = None, num_patches: int | None = None
    ) -> Iterator[Subject]:
        """Yield patches of ``subject`` (default: the sampler's own)."""
        check_positive_int(num_patches, "num_patches", allow_none=True)
        yield from self.prepare(self._subject(subject))(num_patches)

    def prepare(self, subject: Subject) -> Callable[[int | None], Iterator[Subject]]:
        """Do the per-subject work now (e.g. a label sampler's centre table); draw later.

        The returned ``patches(num_patches)`` (None: without end) draws from the sampler's
        generator when it is iterated, so a ``Queue`` can prepare subjects in its loading
        threads and still draw in subject order: the same patches as
        ``sampler(subject, num_patches)``.

        Examples
        --------
        >>> from napari_patchwork import ScalarImage, UniformSampler
        >>> subject = Subject(t1=ScalarImage(torch.rand(1, 8, 8, 8)))
        >>> patches = UniformSampler(None, 4, seed=0).prepare(subject)
        >>> [patch.t1.shape for patch in patches(2)]
        [(1, 4, 4, 4), (1, 4, 4, 4)]
        """
        subject = self._subject(subject)
        draw = self._prepare(subject)

        def patches(num_patches: int | None) -> Iterator[Subject]:
            check_positive_int(num_patches, "num_patches", allow_none=True)
            for location in self._draws(draw, num_patches):
                yield self.extract_patch(subject, location)

        return patches

    def __iter__(self) -> Iterator[Subject]:
        return self(self._subject(None), self._share_of_patches())

    def get_probability_map(self, subject: Subject | None = None) -> torch.Tensor:
        """The ``(I, J, K)`` centre probabilities used: uniform over admissible centres."""
        from .weighted import restrict_to_admissible

        subject = self._subject(subject)
        weights = restrict_to_admissible(
            torch.ones(subject.spatial_shape, dtype=torch.float64), self.patch_size
        )
        return weights / weights.sum()

    # -------------------------------------------------------------- helpers
    def _subject(self, subject: Subject | None) -> Subject:
        if subject is None:
            if self.subject is None:
                raise ValueError("no subject: pass one to the sampler or to the call")
            return self.subject
        subject = _check_subject(subject)
        check_patch_fits(self.patch_size, subject.spatial_shape)
        return subject

    def _share_of_patches(self) -> int | None:
        info = get_worker_info()
        if self.num_patches is None or info is None:
            return self.num_patches
        base, extra = divmod(self.num_patches, info.num_workers)
        return base + (1 if info.id < extra else 0)

    def _worker_generator(self) -> torch.Generator | None:
        info = get_worker_info()
        if info is None:
            return self.generator
        if self.generator is None:
            return None  # torch seeds each worker's global generator differently
        mixed = (self.generator.initial_seed() * 1_000_003 + info.seed) % (2**63)
        return torch.Generator().manual_seed(mixed)

    def _prepare(self, subject: Subject) -> Any:
        """Return ``draw(generator) -> PatchLocation`` for ``subject`` (done once per subject)."""
        raise NotImplementedError
