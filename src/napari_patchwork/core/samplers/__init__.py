"""Patch samplers: grid (inference) and random (training)."""

from .base import PatchSampler, RandomSampler
from .grid import GridSampler
from .label import LabelSampler
from .uniform import UniformSampler
from .weighted import WeightedSampler

__all__ = [
    "GridSampler",
    "LabelSampler",
    "PatchSampler",
    "RandomSampler",
    "UniformSampler",
    "WeightedSampler",
]
