"""TorchIO 2 module path ``torchio.data.batch``."""

from ..core.batch import ImagesBatch, SubjectsBatch

__all__ = ["ImagesBatch", "SubjectsBatch"]
