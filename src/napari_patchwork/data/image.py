"""TorchIO 2 module path ``torchio.data.image``."""

from ..core.image import Image, LabelMap, ScalarImage

__all__ = ["Image", "LabelMap", "ScalarImage"]
