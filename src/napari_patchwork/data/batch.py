"""TorchIO 2 module path ``torchio.data.batch``."""

from napari_patchwork.core.batching.batch import ImagesBatch, SubjectsBatch

__all__ = ["ImagesBatch", "SubjectsBatch"]
