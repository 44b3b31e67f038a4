"""TorchIO 2 module path ``torchio.data.subject``."""

from ..core.subject import Subject

__all__ = ["Subject"]
