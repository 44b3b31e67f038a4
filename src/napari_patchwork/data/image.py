"""TorchIO 2 module path ``torchio.data.image``."""

from napari_patchwork.core.data.image import Image, LabelMap, ScalarImage

__all__ = ["Image", "LabelMap", "ScalarImage"]
