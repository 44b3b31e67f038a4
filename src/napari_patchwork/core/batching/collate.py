"""Batching of ``Subject`` patches for ``torch.utils.data.DataLoader``.

:func:`collate_subjects` turns a list of subjects into a :class:`SubjectsBatch`. Creating a
sampler or a ``Queue`` also registers it with torch's default collation, so a plain
``DataLoader(sampler, batch_size=…)`` yields the same batches as :class:`SubjectsLoader`:
``batch.t1.data`` is ``(B, C, I, J, K)`` and ``batch.patch_location`` a list of
``PatchLocation``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from napari_patchwork.core.batching.batch import SubjectsBatch
from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.data.subject import Subject


def collate_subjects(batch: Sequence[Subject], **_: object) -> SubjectsBatch | Subject:
    """Stack a list of subjects into a :class:`SubjectsBatch`.

    A single ``Subject`` (what ``DataLoader(batch_size=None)`` passes) is returned as it is.

    Raises
    ------
    ValueError
        If ``batch`` is empty or the subjects cannot be stacked (see
        :meth:`SubjectsBatch.from_subjects`).

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import ScalarImage
    >>> subjects = [Subject(t1=ScalarImage(torch.zeros(1, 4, 4, 4))) for _ in range(3)]
    >>> collate_subjects(subjects).t1.data.shape
    torch.Size([3, 1, 4, 4, 4])
    """
    if isinstance(batch, Subject):
        return batch
    return SubjectsBatch.from_subjects(list(batch))


def _collate_locations(batch: Sequence[PatchLocation], **_: object) -> list[PatchLocation]:
    return list(batch)


def register_default_collate() -> None:
    """Teach ``torch.utils.data.default_collate`` our ``Subject`` and ``PatchLocation``.

    Uses torch's private ``default_collate_fn_map``; without it (a torch that removed it)
    a plain ``DataLoader`` needs ``collate_fn=collate_subjects`` or ``SubjectsLoader``.
    """
    try:
        from torch.utils.data._utils.collate import default_collate_fn_map
    except ImportError:  # pragma: no cover - very old or very new torch
        return
    table: dict[Any, Callable[..., Any]] = default_collate_fn_map
    table.setdefault(Subject, collate_subjects)
    table.setdefault(PatchLocation, _collate_locations)
