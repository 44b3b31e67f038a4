"""``SubjectsLoader``: a ``DataLoader`` that collates subjects into a ``SubjectsBatch``."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

from napari_patchwork.core.batching.collate import collate_subjects


class SubjectsLoader(DataLoader):  # type: ignore[type-arg]
    """A ``torch.utils.data.DataLoader`` whose batches are :class:`SubjectsBatch`.

    All ``DataLoader`` arguments are forwarded except ``collate_fn``, which is refused (as
    TorchIO 2): use a plain ``DataLoader`` for another collation.

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
        if "collate_fn" in kwargs:
            raise ValueError(
                "SubjectsLoader sets collate_fn itself (to collate_subjects); use a plain"
                " torch.utils.data.DataLoader for a custom collate_fn"
            )
        super().__init__(dataset, collate_fn=collate_subjects, **kwargs)
