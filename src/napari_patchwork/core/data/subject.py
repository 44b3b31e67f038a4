"""``Subject``: named images of one case, plus any metadata."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_patchwork.core.data.image import Image
from napari_patchwork.core.data.location import PatchLocation

#: Tolerances of the affine comparison (``numpy.allclose``), as TorchIO's
#: ``Subject.check_consistent_attribute``.
AFFINE_RTOL = 1e-6
AFFINE_ATOL = 1e-6

#: The keyword argument of :class:`Subject` that is an option, not an image.
CHECK_SPACE = "check_space"


def orientation(affine: np.ndarray) -> str:
    """Axis codes of a voxel-to-world affine, e.g. ``'RAS'`` or ``'LAS'`` (nibabel).

    Returns ``'?'`` for a (batched or degenerate) affine that has no orientation.

    Examples
    --------
    >>> orientation(np.diag([-1.0, 1.0, 1.0, 1.0]))
    'LAS'
    """
    if np.shape(affine) != (4, 4):
        return "?"
    from nibabel.orientations import aff2axcodes

    try:
        codes = aff2axcodes(np.asarray(affine, float))  # type: ignore[no-untyped-call]
    except Exception:  # singular or non-finite matrices
        return "?"
    return "".join(code if code is not None else "?" for code in codes)


def _format_affine(affine: np.ndarray) -> str:
    return np.array2string(np.asarray(affine), precision=4, suppress_small=True)


def check_consistent_space(images: dict[str, Image]) -> None:
    """Refuse images that disagree in spatial shape or affine (read from headers only).

    Affines are compared with ``numpy.allclose(rtol=AFFINE_RTOL, atol=AFFINE_ATOL)``.

    Parameters
    ----------
    images : dict of str to Image
        The images by name.

    Raises
    ------
    ValueError
        Naming the first two images that differ, with both shapes, or both orientations
        and affines.
    """
    shapes = {name: image.spatial_shape for name, image in images.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"images of a subject must share one spatial shape, got {shapes}")
    check_consistent_affine(images)


def check_consistent_affine(images: dict[str, Image]) -> None:
    """Refuse images whose affines differ beyond tolerance (see :func:`check_consistent_space`)."""
    items = list(images.items())
    if len(items) < 2:
        return
    first_name, first = items[0]
    reference = np.asarray(first.affine)
    for name, image in items[1:]:
        affine = np.asarray(image.affine)
        if affine.shape == reference.shape and np.allclose(
            affine, reference, rtol=AFFINE_RTOL, atol=AFFINE_ATOL
        ):
            continue
        raise ValueError(
            f"images of a subject must share one space, but {first_name!r} and {name!r} have"
            f" different affines (orientations {orientation(reference)!r} vs"
            f" {orientation(affine)!r}; tolerance rtol={AFFINE_RTOL}, atol={AFFINE_ATOL}).\n"
            f"{first_name!r} affine:\n{_format_affine(reference)}\n"
            f"{name!r} affine:\n{_format_affine(affine)}\n"
            "Resample or reorient one image onto the other (e.g. nibabel.as_closest_canonical"
            " for both), or pass check_space=False to Subject if you know the voxel grids"
            " correspond."
        )


class Subject(dict):  # type: ignore[type-arg]
    """Named images of one case (and other values), with attribute and item access.

    All images must share one space: the same spatial shape, and the same voxel-to-world
    affine within ``numpy.allclose(rtol=1e-6, atol=1e-6)`` (TorchIO's tolerance). Only
    shapes and affines are compared, so images read lazily from NIfTI paths are checked from
    their headers, without reading voxels. A patch cut at the same voxel indices from a T1
    in RAS and a mask in LAS orientation would pair mirrored anatomy, hence the check.

    Parameters
    ----------
    *args, **kwargs
        As for ``dict``: images (``ScalarImage``, ``LabelMap``) and any other values.
    check_space : bool, keyword-only, default True
        ``False`` skips the affine comparison (spatial shapes must still agree), for users
        who know the voxel grids correspond although the headers disagree (e.g. a mask
        saved with a wrong header). The choice is kept by copies, crops, padded grids and
        pickling. The name ``check_space`` is therefore reserved as a keyword: to store a
        value under that key, pass a dict, ``Subject({"check_space": value})``.

    Raises
    ------
    ValueError
        If the images disagree in spatial shape, or in affine (the message names both
        images and shows both orientations, e.g. ``'RAS'`` vs ``'LAS'``, and affines).
    TypeError
        If a key is not a string, or ``check_space`` is not a bool.

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import ScalarImage, LabelMap
    >>> subject = Subject(t1=ScalarImage(torch.rand(1, 8, 8, 8)),
    ...                   seg=LabelMap(torch.zeros(1, 8, 8, 8, dtype=torch.int64)), age=42)
    >>> subject.spatial_shape, subject.t1 is subject["t1"], subject.age
    ((8, 8, 8), True, 42)
    >>> flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    >>> mask = LabelMap(torch.zeros(1, 8, 8, 8, dtype=torch.int64), affine=flipped)
    >>> Subject(t1=subject.t1, seg=mask)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: images of a subject must share one space, but 't1' and 'seg' ... 'RAS' vs 'LAS'...
    >>> Subject(t1=subject.t1, seg=mask, check_space=False).spatial_shape
    (8, 8, 8)
    """

    #: Whether affines are compared (instances built with ``check_space=False`` hold False).
    _check_space: bool = True

    def __init__(self, *args: Any, check_space: bool = True, **kwargs: Any) -> None:
        if not isinstance(check_space, bool):
            raise TypeError(
                f"check_space is an option of Subject and must be True or False, got"
                f" {type(check_space).__name__}; to store a value under the key"
                " 'check_space', pass a dict: Subject({'check_space': value})"
            )
        super().__init__(*args, **kwargs)
        for key in self:
            if not isinstance(key, str):
                raise TypeError(f"Subject keys must be strings, got {key!r}")
        if not check_space:
            self._check_space = False
        self._check_consistent()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"Subject has no image or value named {name!r}; it has {list(self)}"
            ) from None

    def __getitem__(self, key: str) -> Any:
        try:
            return super().__getitem__(key)
        except KeyError:
            raise KeyError(
                f"Subject has no image or value named {key!r}; it has {list(self)}"
            ) from None

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}: {v!r}" for k, v in self.items())
        return f"Subject({parts})"

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), dict(self), self._check_space))

    # ------------------------------------------------------------------ images
    def get_images_dict(self, intensity_only: bool = False) -> dict[str, Image]:
        """The images by name (only ``ScalarImage``-type ones if ``intensity_only``)."""
        return {
            name: value
            for name, value in self.items()
            if isinstance(value, Image) and (not intensity_only or value.type == "intensity")
        }

    def get_images(self, intensity_only: bool = False) -> list[Image]:
        """The images, in insertion order."""
        return list(self.get_images_dict(intensity_only).values())

    def _check_consistent(self) -> None:
        images = self.get_images_dict()
        if self._check_space:
            check_consistent_space(images)
        else:
            shapes = {name: image.spatial_shape for name, image in images.items()}
            if len(set(shapes.values())) > 1:
                raise ValueError(f"images of a subject must share one spatial shape, got {shapes}")

    @property
    def check_space(self) -> bool:
        """Whether the images' affines are checked (False when built with ``check_space=False``).

        Only attribute access: a value stored under the key ``'check_space'`` is read with
        ``subject['check_space']``.
        """
        return self._check_space

    def derived(self, items: dict[str, Any]) -> Subject:
        """A new subject of the same type and ``check_space`` option holding ``items``."""
        return type(self)(items, check_space=self._check_space)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """The images' common ``(I, J, K)``."""
        images = self.get_images()
        if not images:
            raise ValueError("the subject has no images, so no spatial shape")
        self._check_consistent()
        return images[0].spatial_shape

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, I, J, K)`` of the first image."""
        return self.get_images()[0].shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size of the first image."""
        return self.get_images()[0].spacing

    def check_image(self, name: object, argument: str) -> Image:
        """Return the image called ``name``, or raise naming ``argument``."""
        if not isinstance(name, str):
            raise TypeError(f"{argument} must be the name of an image (str), got {name!r}")
        value = dict.get(self, name)
        if not isinstance(value, Image):
            raise ValueError(
                f"{argument}={name!r} is not an image of the subject; images: "
                f"{list(self.get_images_dict())}"
            )
        return value

    # ------------------------------------------------------------------ copies
    def load(self) -> Subject:
        """Read every image's voxels; returns ``self``."""
        for image in self.get_images():
            image.load()
        return self

    def loaded_copy(self) -> Subject:
        """A copy whose images hold their voxels; the original stays as it is (lazy or not)."""
        items = {
            name: value.loaded_copy() if isinstance(value, Image) else value
            for name, value in self.items()
        }
        return self.derived(items)

    def crop(self, location: PatchLocation) -> Subject:
        """A new subject with every image cropped to ``location`` and ``patch_location`` set."""
        items = {
            name: value.crop(location) if isinstance(value, Image) else value
            for name, value in self.items()
        }
        items["patch_location"] = location
        return self.derived(items)


def _rebuild(cls: type[Subject], items: dict[str, Any], check_space: bool) -> Subject:
    """Unpickle a subject, keeping its ``check_space`` option."""
    return cls(items, check_space=check_space)
