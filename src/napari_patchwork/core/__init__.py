"""The headless core: images, subjects, samplers, aggregator, queue (numpy, torch, nibabel only).

Nothing here imports napari, Qt or magicgui (a test enforces it).
"""

from .aggregator import PatchAggregator
from .blending import blending_window
from .collate import collate_subjects, register_default_collate
from .grid import crop_intervals, grid_locations, grid_starts
from .image import Image, LabelMap, ScalarImage
from .loader import SubjectsLoader
from .location import PatchLocation
from .queue import Queue
from .samplers import (
    GridSampler,
    LabelSampler,
    PatchSampler,
    RandomSampler,
    UniformSampler,
    WeightedSampler,
)
from .subject import Subject

register_default_collate()

__all__ = [
    "GridSampler",
    "Image",
    "LabelMap",
    "LabelSampler",
    "PatchAggregator",
    "PatchLocation",
    "PatchSampler",
    "Queue",
    "RandomSampler",
    "ScalarImage",
    "Subject",
    "SubjectsLoader",
    "UniformSampler",
    "WeightedSampler",
    "blending_window",
    "collate_subjects",
    "crop_intervals",
    "grid_locations",
    "grid_starts",
]
