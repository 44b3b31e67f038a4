"""TorchIO 2 module path ``torchio.data.queue``."""

from ..core.queue import Queue

__all__ = ["Queue"]
