"""TorchIO 2 module path ``torchio.data``: the data classes of the patch pipeline.

``from napari_patchwork.data import PatchLocation`` works as ``from torchio.data import …``.
The submodules ``data.subject``, ``data.image``, ``data.patch``, ``data.sampler``,
``data.queue``, ``data.aggregator``, ``data.inference`` and ``data.batch`` mirror TorchIO's.

For backward compatibility this package also re-exports the synthetic sample of
:mod:`napari_patchwork.sample` (``make_sample``, ``sample``, ``SAMPLE_SPACING``, …), which
used to live in a module of this name.
"""

from ..sample import SAMPLE_NAMES, SAMPLE_SPACING, SampleVolume, make_sample, sample
from .aggregator import PatchAggregator
from .batch import ImagesBatch, SubjectsBatch
from .image import Image, LabelMap, ScalarImage
from .patch import PatchLocation
from .queue import Queue
from .sampler import (
    GridSampler,
    LabelSampler,
    PatchSampler,
    RandomSampler,
    UniformSampler,
    WeightedSampler,
)
from .subject import Subject

__all__ = [
    "SAMPLE_NAMES",
    "SAMPLE_SPACING",
    "GridSampler",
    "Image",
    "ImagesBatch",
    "LabelMap",
    "LabelSampler",
    "PatchAggregator",
    "PatchLocation",
    "PatchSampler",
    "Queue",
    "RandomSampler",
    "SampleVolume",
    "ScalarImage",
    "Subject",
    "SubjectsBatch",
    "UniformSampler",
    "WeightedSampler",
    "make_sample",
    "sample",
]
