"""TorchIO 2 module path ``torchio.data.subject``."""

from napari_patchwork.core.data.subject import Subject

__all__ = ["Subject"]
