"""TorchIO 2 module path ``torchio.data.patch``."""

from napari_patchwork.core.data.location import PatchLocation

__all__ = ["PatchLocation"]
