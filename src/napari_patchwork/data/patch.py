"""TorchIO 2 module path ``torchio.data.patch``."""

from ..core.location import PatchLocation

__all__ = ["PatchLocation"]
