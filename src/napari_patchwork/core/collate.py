"""Batching of ``Subject`` patches for ``torch.utils.data.DataLoader``.

Importing the core registers :func:`collate_subjects` with torch's default collation, so a
plain ``DataLoader(sampler, batch_size=…)`` gives ``batch.t1.data`` as ``(B, C, I, J, K)`` and
``batch.patch_location`` as a list of ``PatchLocation``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from .image import Image
from .location import PatchLocation
from .subject import Subject


def collate_subjects(batch: Sequence[Subject], **_: Any) -> Subject:
    """Stack a list of same-shaped subjects into one batched ``Subject``.

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import ScalarImage
    >>> subjects = [Subject(t1=ScalarImage(torch.zeros(1, 4, 4, 4))) for _ in range(3)]
    >>> collate_subjects(subjects).t1.data.shape
    torch.Size([3, 1, 4, 4, 4])
    """
    if isinstance(batch, Subject):  # DataLoader(batch_size=None) passes single items
        return batch
    first = batch[0]
    items: dict[str, Any] = {}
    for key, value in first.items():
        values = [subject[key] for subject in batch]
        if isinstance(value, Image):
            items[key] = _collate_images(key, values)
        elif isinstance(value, PatchLocation):
            items[key] = list(values)
        else:
            items[key] = default_collate(values)
    batched = Subject.__new__(Subject)
    dict.update(batched, items)
    return batched


def _collate_images(key: str, images: list[Image]) -> Image:
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch images {key!r} of different shapes: {sorted(shapes)}")
    data = torch.stack([image.data for image in images])
    affines = np.stack([image.affine for image in images])
    return type(images[0])._batched(data, affines)


def _collate_locations(batch: Sequence[PatchLocation], **_: Any) -> list[PatchLocation]:
    return list(batch)


def register_default_collate() -> None:
    """Teach ``torch.utils.data.default_collate`` our ``Subject`` and ``PatchLocation``."""
    try:
        from torch.utils.data._utils.collate import default_collate_fn_map
    except ImportError:  # pragma: no cover - very old or very new torch
        return
    table: dict[type, Callable[..., Any]] = default_collate_fn_map
    table.setdefault(Subject, collate_subjects)
    table.setdefault(PatchLocation, _collate_locations)
