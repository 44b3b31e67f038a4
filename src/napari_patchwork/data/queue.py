"""TorchIO 2 module path ``torchio.data.queue``."""

from napari_patchwork.core.batching.queue import Queue

__all__ = ["Queue"]
