"""``Subject``: named images of one case, plus any metadata."""

from __future__ import annotations

from typing import Any

from .image import Image
from .location import PatchLocation


class Subject(dict):  # type: ignore[type-arg]
    """Named images of one case (and other values), with attribute and item access.

    All images must share one spatial shape.

    Parameters
    ----------
    *args, **kwargs
        As for ``dict``: images (``ScalarImage``, ``LabelMap``) and any other values.

    Raises
    ------
    ValueError
        If the images disagree in spatial shape.

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import ScalarImage, LabelMap
    >>> subject = Subject(t1=ScalarImage(torch.rand(1, 8, 8, 8)),
    ...                   seg=LabelMap(torch.zeros(1, 8, 8, 8, dtype=torch.int64)), age=42)
    >>> subject.spatial_shape, subject.t1 is subject["t1"], subject.age
    ((8, 8, 8), True, 42)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for key in self:
            if not isinstance(key, str):
                raise TypeError(f"Subject keys must be strings, got {key!r}")
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
        return (type(self), (dict(self),))

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
        shapes = {name: image.spatial_shape for name, image in self.get_images_dict().items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"images of a subject must share one spatial shape, got {shapes}")

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

    def check_image(self, name: Any, argument: str) -> Image:
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
        return type(self)(items)

    def crop(self, location: PatchLocation) -> Subject:
        """A new subject with every image cropped to ``location`` and ``patch_location`` set."""
        items = {
            name: value.crop(location) if isinstance(value, Image) else value
            for name, value in self.items()
        }
        items["patch_location"] = location
        return type(self)(items)
