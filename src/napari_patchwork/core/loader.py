"""``SubjectsLoader``: a ``DataLoader`` whose collation batches subjects."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

from .collate import collate_subjects


class SubjectsLoader(DataLoader):  # type: ignore[type-arg]
    """A ``torch.utils.data.DataLoader`` with :func:`collate_subjects` preset.

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import ScalarImage, Subject, UniformSampler
    >>> subject = Subject(t1=ScalarImage(torch.rand(1, 8, 8, 8)))
    >>> loader = SubjectsLoader(UniformSampler(subject, 4, num_patches=4, seed=0), batch_size=2)
    >>> [batch.t1.data.shape[0] for batch in loader]
    [2, 2]
    """

    def __init__(self, dataset: Dataset[Any], **kwargs: Any) -> None:
        kwargs.setdefault("collate_fn", collate_subjects)
        super().__init__(dataset, **kwargs)
