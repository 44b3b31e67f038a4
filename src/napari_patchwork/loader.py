"""TorchIO 2 module path ``torchio.loader``."""

from .core.collate import collate_subjects
from .core.loader import SubjectsLoader

__all__ = ["SubjectsLoader", "collate_subjects"]
