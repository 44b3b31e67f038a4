"""``ImagesBatch`` and ``SubjectsBatch``: what ``SubjectsLoader`` and ``DataLoader`` yield.

A batch of subjects keeps every image as an :class:`ImagesBatch` (a ``(B, C, I, J, K)`` tensor
and one affine per element) and every other value as a list with one entry per element
(``batch.patch_location`` is the list of ``PatchLocation`` the aggregator takes), as TorchIO 2.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from napari_patchwork.core.data.image import Image, ScalarImage
from napari_patchwork.core.data.subject import Subject


def _stacked(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, by numpy (one thread) for CPU tensors numpy can hold.

    Collation runs beside the training loop; torch's parallel copy would wait on the intra-op
    threads the model holds (see ``image._copy_of``).
    """
    first = tensors[0]
    if first.device.type == "cpu" and not any(t.requires_grad for t in tensors):
        try:
            return torch.from_numpy(np.stack([t.numpy() for t in tensors]))
        except TypeError:  # dtypes numpy lacks (bfloat16, …)
            pass
    return torch.stack(list(tensors))


class ImagesBatch:
    """Images of one name stacked into a ``(B, C, I, J, K)`` tensor, one affine per element.

    Parameters
    ----------
    data : torch.Tensor
        The 5D batch.
    affines : sequence of array-like of shape (4, 4)
        One voxel-to-world matrix per element.
    image_class : type, default ScalarImage
        The :class:`Image` subclass that :meth:`unbatch` builds.

    Examples
    --------
    >>> import torch
    >>> images = [ScalarImage(torch.zeros(1, 4, 4, 4)) for _ in range(2)]
    >>> batch = ImagesBatch.from_images(images)
    >>> batch.data.shape, batch.batch_size
    (torch.Size([2, 1, 4, 4, 4]), 2)
    """

    def __init__(
        self,
        data: torch.Tensor,
        affines: Sequence[Any],
        *,
        image_class: type[Image] = ScalarImage,
    ) -> None:
        if not isinstance(data, torch.Tensor) or data.ndim != 5:
            got = f"{data.ndim}D" if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(f"ImagesBatch needs a 5D tensor (B, C, I, J, K), got {got}")
        if data.shape[0] == 0:
            raise ValueError("cannot create an empty ImagesBatch")
        if len(affines) != data.shape[0]:
            raise ValueError(f"expected {data.shape[0]} affines, got {len(affines)}")
        if not isinstance(image_class, type) or not issubclass(image_class, Image):
            raise TypeError(f"image_class must be an Image subclass, got {image_class!r}")
        self._data = data
        self._affines = [np.array(affine, dtype=float) for affine in affines]
        for affine in self._affines:
            if affine.shape != (4, 4):
                raise ValueError(f"each affine must be 4×4, got shape {affine.shape}")
        self._image_class = image_class

    @classmethod
    def from_images(cls, images: Sequence[Image], name: str | None = None) -> ImagesBatch:
        """Stack images of one class, shape, dtype and device (``ValueError`` otherwise)."""
        if not images:
            raise ValueError("cannot create a batch from an empty list")
        what = "image" if name is None else f"image {name!r}"
        first = images[0]
        for index, image in enumerate(images):
            if not isinstance(image, Image):
                raise TypeError(f"expected an Image at index {index}, got {type(image).__name__}")
            if type(image) is not type(first):
                raise ValueError(
                    f"cannot batch {what}: index {index} is a {type(image).__name__},"
                    f" index 0 a {type(first).__name__}"
                )
        shapes = [tuple(image.shape) for image in images]
        if len(set(shapes)) > 1:
            raise ValueError(f"cannot batch {what} of different shapes: {sorted(set(shapes))}")
        tensors = [image.data for image in images]
        for attribute in ("dtype", "device"):
            values = {getattr(tensor, attribute) for tensor in tensors}
            if len(values) > 1:
                raise ValueError(f"cannot batch {what} of different {attribute}s: {values}")
        return cls(
            _stacked(tensors),
            [image.affine.copy() for image in images],
            image_class=type(first),
        )

    # ------------------------------------------------------------------ contents
    @property
    def data(self) -> torch.Tensor:
        """The ``(B, C, I, J, K)`` tensor."""
        return self._data

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        if not isinstance(value, torch.Tensor) or value.ndim != 5:
            raise ValueError("ImagesBatch.data must be a 5D tensor (B, C, I, J, K)")
        if value.shape[0] != self.batch_size:
            raise ValueError(f"expected {self.batch_size} elements, got {value.shape[0]}")
        self._data = value

    @property
    def tensor(self) -> torch.Tensor:
        """Alias of ``data``."""
        return self._data

    @property
    def affines(self) -> list[np.ndarray]:
        """One 4×4 voxel-to-world matrix per element."""
        return self._affines

    @property
    def affine(self) -> np.ndarray:
        """The affines stacked, ``(B, 4, 4)``."""
        return np.stack(self._affines)

    @property
    def image_class(self) -> type[Image]:
        """The class of the batched images."""
        return self._image_class

    @property
    def batch_size(self) -> int:
        """Number of elements ``B``."""
        return int(self._data.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """``(B, C, I, J, K)``."""
        return tuple(self._data.shape)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(I, J, K)``."""
        i, j, k = self._data.shape[-3:]
        return (int(i), int(j), int(k))

    @property
    def device(self) -> torch.device:
        """Where the data is."""
        return self._data.device

    def to(self, *args: Any, **kwargs: Any) -> ImagesBatch:
        """Move and/or cast the data (``torch.Tensor.to`` arguments) in place; returns ``self``."""
        self._data = self._data.to(*args, **kwargs)
        return self

    def pin_memory(self) -> ImagesBatch:
        """Pin the data (``DataLoader(pin_memory=True)`` calls this); returns ``self``."""
        self._data = self._data.pin_memory()
        return self

    # ------------------------------------------------------------------ elements
    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, index: int) -> Image:
        """Element ``index`` as an image of the batched class."""
        return self._image_class(tensor=self._data[index], affine=self._affines[index].copy())

    def __iter__(self) -> Iterator[Image]:
        return (self[i] for i in range(self.batch_size))

    def unbatch(self) -> list[Image]:
        """The elements as images."""
        return list(self)

    def __repr__(self) -> str:
        _, c, i, j, k = self._data.shape
        return (
            f"ImagesBatch({self._image_class.__name__}, batch_size={self.batch_size},"
            f" shape=({c}, {i}, {j}, {k}), dtype={self._data.dtype})"
        )


class SubjectsBatch:
    """A batch of subjects: images stacked as :class:`ImagesBatch`, other values as lists.

    Made by :class:`SubjectsLoader`, by a plain ``DataLoader`` over subjects, or by
    :meth:`from_subjects`. Fields are read as attributes or items (``batch.t1.data``,
    ``batch["t1"]``, ``batch.patch_location``, ``batch.metadata["age"]``).

    Parameters
    ----------
    images : dict of str to ImagesBatch, optional
    metadata : dict of str to list, optional
        The other values, one list entry per element.

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import ScalarImage
    >>> subjects = [Subject(t1=ScalarImage(torch.zeros(1, 4, 4, 4)), age=a) for a in (42, 43)]
    >>> batch = SubjectsBatch.from_subjects(subjects)
    >>> batch
    SubjectsBatch(batch_size=2, images=[t1], metadata=[age])
    >>> batch.t1.data.shape, batch.metadata
    (torch.Size([2, 1, 4, 4, 4]), {'age': [42, 43]})
    >>> [subject.age for subject in batch.unbatch()]
    [42, 43]
    """

    def __init__(
        self,
        images: dict[str, ImagesBatch] | None = None,
        *,
        metadata: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        self._images = dict(images or {})
        self._metadata = {key: list(values) for key, values in (metadata or {}).items()}
        for name, value in self._images.items():
            if not isinstance(value, ImagesBatch):
                raise TypeError(f"images[{name!r}] must be an ImagesBatch, got {type(value)}")
        both = set(self._images) & set(self._metadata)
        if both:
            raise ValueError(f"names both in images and metadata: {sorted(both)}")
        sizes = [(f"image {n!r}", v.batch_size) for n, v in self._images.items()]
        sizes += [(f"metadata {n!r}", len(v)) for n, v in self._metadata.items()]
        if not sizes:
            raise ValueError("a SubjectsBatch needs at least one image or metadata field")
        reference, size = sizes[0]
        if size == 0:
            raise ValueError("cannot create an empty SubjectsBatch")
        for name, other in sizes[1:]:
            if other != size:
                raise ValueError(
                    f"inconsistent batch size: {reference} has {size} elements, {name} {other}"
                )
        self._batch_size = size
        self._subject_types: list[tuple[type[Subject], bool]] = [(Subject, True)] * size

    @classmethod
    def from_subjects(cls, subjects: Sequence[Subject]) -> SubjectsBatch:
        """Stack subjects with the same keys (and image shapes) into a batch.

        Raises
        ------
        ValueError
            If ``subjects`` is empty, or the subjects differ in keys, or images of one name
            differ in class, shape, dtype or device.
        TypeError
            If an element is not a ``Subject``.
        """
        if isinstance(subjects, Subject) or not isinstance(subjects, Sequence):
            raise TypeError(f"from_subjects takes a sequence of Subject, got {type(subjects)}")
        if len(subjects) == 0:
            raise ValueError("cannot create a batch from an empty list of subjects")
        for index, subject in enumerate(subjects):
            if not isinstance(subject, Subject):
                raise TypeError(
                    f"expected a Subject at index {index}, got {type(subject).__name__}"
                )
        first = subjects[0]
        names = set(first)
        for index, subject in enumerate(subjects[1:], 1):
            if set(subject) != names:
                missing = sorted(names - set(subject))
                unexpected = sorted(set(subject) - names)
                raise ValueError(
                    f"subject at index {index} has other keys than subject 0:"
                    f" missing {missing}, unexpected {unexpected}"
                )
        images: dict[str, ImagesBatch] = {}
        metadata: dict[str, list[Any]] = {}
        for key in first:
            values = [dict.__getitem__(subject, key) for subject in subjects]
            kinds = {isinstance(v, Image) for v in values}
            if kinds == {True}:
                images[key] = ImagesBatch.from_images(values, name=key)
            elif kinds == {False}:
                metadata[key] = [copy.deepcopy(v) for v in values]
            else:
                raise ValueError(f"{key!r} is an image in some subjects and not in others")
        batch = cls(images, metadata=metadata)
        batch._subject_types = [(type(s), s.check_space) for s in subjects]
        return batch

    # ------------------------------------------------------------------ contents
    @property
    def batch_size(self) -> int:
        """Number of subjects in the batch."""
        return self._batch_size

    @property
    def images(self) -> dict[str, ImagesBatch]:
        """The image batches by name."""
        return self._images

    @property
    def metadata(self) -> dict[str, list[Any]]:
        """The other values by name, one list entry per element."""
        return self._metadata

    @property
    def device(self) -> torch.device:
        """Where the images are (CPU without images); ``RuntimeError`` if they disagree."""
        devices = [image.device for image in self._images.values()]
        if not devices:
            return torch.device("cpu")
        if any(device != devices[0] for device in devices[1:]):
            raise RuntimeError(
                f"the images of this SubjectsBatch are on different devices: {devices}"
            )
        return devices[0]

    def to(self, *args: Any, **kwargs: Any) -> SubjectsBatch:
        """Move and/or cast every image (``torch.Tensor.to`` arguments) in place; returns ``self``.

        Metadata is left as it is.
        """
        for image in self._images.values():
            image.to(*args, **kwargs)
        return self

    def pin_memory(self) -> SubjectsBatch:
        """Pin the image data (``DataLoader(pin_memory=True)`` calls this); returns ``self``."""
        for image in self._images.values():
            image.pin_memory()
        return self

    def keys(self) -> list[str]:
        """Image names, then metadata names."""
        return [*self._images, *self._metadata]

    def __contains__(self, key: object) -> bool:
        return key in self._images or key in self._metadata

    def __len__(self) -> int:
        return self._batch_size

    def __getitem__(self, key: str) -> Any:
        if key in self._images:
            return self._images[key]
        if key in self._metadata:
            return self._metadata[key]
        raise KeyError(f"SubjectsBatch has no field {key!r}; it has {self.keys()}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"SubjectsBatch has no attribute {name!r}; its fields are {self.keys()}"
            ) from None

    # ------------------------------------------------------------------ elements
    def unbatch(self) -> list[Subject]:
        """The elements as subjects (of the classes they were batched from)."""
        subjects = []
        for index in range(self._batch_size):
            items: dict[str, Any] = {name: batch[index] for name, batch in self._images.items()}
            for key, values in self._metadata.items():
                items[key] = copy.deepcopy(values[index])
            subject_type, check_space = self._subject_types[index]
            subjects.append(subject_type(items, check_space=check_space))
        return subjects

    def __repr__(self) -> str:
        fields = [f"batch_size={self._batch_size}"]
        if self._images:
            fields.append(f"images=[{', '.join(self._images)}]")
        if self._metadata:
            fields.append(f"metadata=[{', '.join(self._metadata)}]")
        return f"SubjectsBatch({', '.join(fields)})"
