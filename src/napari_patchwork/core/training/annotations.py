"""Image/annotation pairs as the trainer takes them, and a scripted annotator.

Annotations hold 0 = not annotated and ``v > 0`` = class ``v``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_patchwork.core.data.image import Image, LabelMap


def as_volume(value: Any, what: str, kind: type[Image]) -> torch.Tensor:
    if isinstance(value, (str, os.PathLike)):
        if not Path(value).exists():
            raise FileNotFoundError(f"{what}: file does not exist: '{value}'")
        value = kind(value)
    if isinstance(value, Image):
        value = value.data
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} must be an array, a tensor, an Image or a file, got {type(value)}")
    if value.ndim == 3:
        value = value[None]
    if value.ndim != 4 or value.numel() == 0:
        raise ValueError(
            f"{what} must be a 3D (I, J, K) or 4D (C, I, J, K) volume,"
            f" got shape {tuple(value.shape)}"
        )
    volume: torch.Tensor = value
    return volume


def as_annotations(value: Any, what: str, shape: tuple[int, ...]) -> torch.Tensor:
    labels = as_volume(value, what, LabelMap)
    if labels.shape[0] != 1 or tuple(labels.shape[1:]) != shape:
        raise ValueError(
            f"{what} must have the image's shape {shape} (one channel), got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        if (
            labels.dtype == torch.bool
            or labels.is_complex()
            or bool((labels != labels.round()).any())
        ):
            raise ValueError(f"{what} must hold integer label values, got dtype {labels.dtype}")
    labels = labels.to(torch.int64)
    if bool((labels < 0).any()):
        raise ValueError(
            f"{what} holds negative values (min {int(labels.min())}); 0 means not annotated"
        )
    return labels


def as_pairs(pairs: Any) -> list[tuple[Any, Any]]:
    if isinstance(pairs, tuple) and len(pairs) == 2 and not isinstance(pairs[0], tuple):
        pairs = [pairs]
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise TypeError(
            f"pairs must be (image, annotations) or a list of such pairs, got {type(pairs)}"
        )
    for number, pair in enumerate(pairs, 1):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"pair {number} must be (image, annotations), got {type(pair)}")
    return [(image, labels) for image, labels in pairs]


def annotated_reach(annotated: torch.Tensor, patch: int) -> tuple[slice, ...]:
    """The box of a volume padded by ``patch // 2`` that patches centred on annotated voxels
    can touch: annotated voxels span ``[low, high]``, so padded ``[low, high + patch)``."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        where = torch.nonzero(annotated.any(dim=other))[:, 0]
        box.append(slice(int(where[0]), int(where[-1]) + patch))
    return tuple(box)


def scribbles_from_labels(
    labels: np.ndarray,
    *,
    slices: int = 3,
    disks: int = 3,
    radius: int = 2,
    background: int | None = 0,
    seed: int = 0,
) -> np.ndarray:
    """A scripted annotator: small disks on a few slices inside each class of ``labels``.

    Every label value becomes class ``value + 1`` (so background 0 becomes 1 and 0 is left
    for "not annotated"), unless ``background`` is None, when label 0 stays unannotated.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(I, J, K)`` ground truth.
    slices : int
        Slices (along the first axis) annotated per class, spread over where it occurs.
    disks : int
        Disks per class and slice, centred on random voxels of the class.
    radius : int
        Disk radius in voxels; a disk covers only voxels of its class.
    background : int or None
        The ground truth's background value, annotated like the other classes (None: not).
    seed : int
        Seed of the disk positions.

    Returns
    -------
    numpy.ndarray
        ``(I, J, K)`` int64 annotations: 0 = not annotated.

    Examples
    --------
    >>> truth = np.zeros((20, 20, 20), np.uint8); truth[5:15, 5:15, 5:15] = 1
    >>> strokes = scribbles_from_labels(truth, seed=0)
    >>> sorted(np.unique(strokes).tolist()), bool((strokes[truth == 1] != 1).all())
    ([0, 1, 2], True)
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (I, J, K), got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    strokes = np.zeros(labels.shape, np.int64)
    offsets = np.arange(-radius, radius + 1)
    disk = (offsets[:, None] ** 2 + offsets[None] ** 2) <= radius**2
    for value in np.unique(labels).tolist():
        if background is None and value == 0:
            continue
        mask = labels == value
        occupied = np.flatnonzero(mask.any((1, 2)))
        chosen = occupied[
            np.linspace(0, len(occupied) - 1, min(slices, len(occupied))).round().astype(int)
        ]
        for index in np.unique(chosen):
            plane = mask[index]
            candidates = np.argwhere(plane)
            for j, k in candidates[
                rng.choice(len(candidates), min(disks, len(candidates)), replace=False)
            ]:
                box = (
                    slice(max(j - radius, 0), j + radius + 1),
                    slice(max(k - radius, 0), k + radius + 1),
                )
                cut = disk[box[0].start - j + radius :, box[1].start - k + radius :][
                    : plane[box].shape[0], : plane[box].shape[1]
                ]
                strokes[index][box][cut & plane[box]] = value + 1
    return strokes
