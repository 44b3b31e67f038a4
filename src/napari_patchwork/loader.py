"""TorchIO 2 module path ``torchio.loader``."""

from napari_patchwork.core.batching.collate import collate_subjects
from napari_patchwork.core.batching.loader import SubjectsLoader

__all__ = ["SubjectsLoader", "collate_subjects"]
