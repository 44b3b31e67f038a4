"""``GridSampler``: every patch of a regular grid, for dense inference."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_patchwork.core.data.image import LABEL, Image
from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.data.subject import Subject
from napari_patchwork.core.inference.grid import grid_locations
from napari_patchwork.core.inference.patches import (
    PaddedVolume,
    check_constant_fits,
    constant_fits,
    dtype_holding,
    pad_volume,
)

from .._validation import check_overlap, check_padding_mode, check_patch_fits, to_triplet
from ..types import TypeSize
from .base import PatchSampler, _check_subject

_STAT_MODES = {"mean", "median", "minimum", "maximum"}


def _padding_dtype(
    image: Image, mode: str | float | None, fill: float, name: str
) -> tuple[float | None, np.dtype[Any] | None]:
    """The padding constant (None for other modes) and the dtype to promote to (None: keep).

    Raises ``ValueError`` for a constant that does not fit a label map's dtype.
    """
    constant: float | None = None
    if isinstance(mode, (int, float)) and not isinstance(mode, bool):
        constant = float(mode)
    elif mode == "constant":
        constant = float(fill)
    if constant is None:
        return None, None
    lazy = image.lazy_volume
    if lazy is not None:  # the dtype its reads give (uint16 and uint32 are read as int64)
        current = lazy.read(slice(0, 1), slice(0, 1), slice(0, 1)).dtype
    else:
        current = image.data.dtype
    if image.type == LABEL:
        check_constant_fits(constant, current, f"label map {name!r}")
        return constant, None
    if constant_fits(constant, current):
        return constant, None
    return constant, dtype_holding(constant, current)


def pad_image(
    image: Image,
    border: tuple[int, int, int],
    mode: str | float,
    fill: float,
    name: str = "image",
) -> Image:
    """A copy of ``image`` padded by ``border`` voxels on each side (numpy ``pad`` modes).

    A lazily backed image stays lazy (reads gather through the padding), except for the
    statistic modes, which need the whole image.

    ``'mean'``, ``'median'``, ``'minimum'`` and ``'maximum'`` pad with that statistic of the
    whole image (as TorchIO does); a number pads with that constant. A constant never wraps:
    an intensity image is promoted to a dtype that holds it (``uint8`` with ``-1000`` becomes
    ``int16``), and a label map refuses it.

    Raises
    ------
    ValueError
        If the constant does not fit the dtype of a label map called ``name``, e.g.
        ``"padding constant -1000 does not fit label map 'seg' of dtype uint8"``.
    """
    affine = image.affine.copy()
    affine[:3, 3] = (image.affine @ np.array([*(-b for b in border), 1.0]))[:3]
    _, dtype = _padding_dtype(image, mode, fill, name)
    if image.lazy_volume is not None and mode not in _STAT_MODES:  # stays lazy
        padded_view = PaddedVolume(image.lazy_volume, border, mode, fill, dtype=dtype)
        return type(image)(padded_view, affine=affine)  # type: ignore[arg-type]  # lazy
    torch_dtype = None if dtype is None else torch.from_numpy(np.empty(0, dtype)).dtype
    padded = pad_volume(image.data, border, mode, fill, dtype=torch_dtype)
    return type(image)(tensor=padded, affine=affine)


class GridSampler(PatchSampler, Dataset):  # type: ignore[type-arg]
    """Every patch of a regular grid over the subject: a map-style dataset for inference.

    Patches start every ``patch_size - patch_overlap`` voxels, with one last patch flush with
    the border, exactly as TorchIO's ``GridSampler``. With ``padding_mode``, the volume is
    padded by ``patch_overlap // 2`` on each side first so border voxels get full context;
    locations stay in the coordinates of the original volume (``index_ini`` may be negative),
    and ``PatchAggregator`` crops the padding away.

    Parameters
    ----------
    subject : Subject
        The subject to cut into patches; every image is cropped.
    patch_size : int or tuple of 3 int
        Spatial patch size.
    patch_overlap : int or tuple of 3 int
        Overlap between neighbouring patches; even and smaller than the patch.
    padding_mode : str or float, optional
        None (no padding), a number (constant), or ``'constant'`` (with ``fill``), ``'edge'``,
        ``'reflect'``, ``'symmetric'``, ``'wrap'``, ``'mean'``, ``'median'``, ``'minimum'``,
        ``'maximum'``.
    fill : float
        Value for ``padding_mode='constant'``.

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import ScalarImage, Subject
    >>> subject = Subject(t1=ScalarImage(torch.rand(1, 10, 10, 10)))
    >>> sampler = GridSampler(subject, patch_size=6, patch_overlap=2)
    >>> len(sampler), sampler[0].t1.data.shape, sampler[1].patch_location.index
    (8, torch.Size([1, 6, 6, 6]), (0, 0, 4))
    """

    def __init__(
        self,
        subject: Subject,
        patch_size: TypeSize,
        patch_overlap: TypeSize = 0,
        padding_mode: str | float | None = None,
        fill: float = 0,
    ) -> None:
        super().__init__(patch_size)
        self.subject = _check_subject(subject)
        self.patch_overlap = to_triplet(patch_overlap, "patch_overlap", minimum=0)
        check_overlap(self.patch_size, self.patch_overlap)
        check_padding_mode(padding_mode)
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise TypeError(f"fill must be a number, got {fill!r}")
        self.padding_mode = padding_mode
        self.fill = fill
        self.border = (
            tuple(o // 2 for o in self.patch_overlap) if padding_mode is not None else (0, 0, 0)
        )
        padded_shape = [s + 2 * b for s, b in zip(subject.spatial_shape, self.border)]
        check_patch_fits(self.patch_size, padded_shape)
        self.locations: list[PatchLocation] = grid_locations(
            subject.spatial_shape, self.patch_size, self.patch_overlap, padding_mode is not None
        )
        self._padded_subject: Subject | None = None
        for name, image in subject.get_images_dict().items():
            # refuse a wrapping constant now, not at the first patch (files are checked when
            # read, with the same error)
            if image.type == LABEL and (image.is_loaded or image.lazy_volume is not None):
                _padding_dtype(image, padding_mode, fill, name)

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, index: int) -> Subject:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patches")
        location = self.locations[index]
        source = self._source()
        i, j, k = (i + b for i, b in zip(location.index, self.border))
        shifted = PatchLocation((i, j, k), location.size)
        patch = source.crop(shifted)
        patch["patch_location"] = location
        return patch

    def __iter__(self) -> Iterator[Subject]:
        return (self[i] for i in range(len(self)))

    def __call__(
        self, subject: Subject | None = None, num_patches: int | None = None
    ) -> Iterator[Subject]:
        """Yield the grid's patches (of ``subject`` if given: a new grid is planned)."""
        if num_patches is not None:
            raise ValueError(
                f"GridSampler yields the whole grid; num_patches must be None, got {num_patches}"
            )
        if subject is None:
            return iter(self)
        sampler = GridSampler(
            subject, self.patch_size, self.patch_overlap, self.padding_mode, self.fill
        )
        return iter(sampler)

    def _source(self) -> Subject:
        if self.padding_mode is None:
            return self.subject
        if self._padded_subject is None:
            items = {
                name: pad_image(value, self.border, self.padding_mode, self.fill, name)  # type: ignore[arg-type]
                if isinstance(value, Image)
                else value
                for name, value in self.subject.items()
            }
            self._padded_subject = self.subject.derived(items)
        return self._padded_subject
