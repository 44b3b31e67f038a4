"""The headless core: images, subjects, samplers, aggregator, queue, batches.

It needs numpy, torch and nibabel only. Nothing here imports napari, Qt or magicgui (a
test enforces it).
"""

from napari_patchwork.core.batching.batch import ImagesBatch, SubjectsBatch
from napari_patchwork.core.batching.collate import collate_subjects
from napari_patchwork.core.batching.loader import SubjectsLoader
from napari_patchwork.core.batching.queue import Queue
from napari_patchwork.core.data.image import Image, LabelMap, ScalarImage
from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.data.subject import Subject
from napari_patchwork.core.inference.aggregator import PatchAggregator
from napari_patchwork.core.inference.blending import blending_window
from napari_patchwork.core.inference.config import InferenceConfig
from napari_patchwork.core.inference.functional import (
    InferenceStep,
    TiledInference,
    infer,
    iter_infer,
)
from napari_patchwork.core.inference.grid import (
    GridPlan,
    crop_intervals,
    grid_locations,
    grid_starts,
)
from napari_patchwork.core.inference.merger import GridMerger
from napari_patchwork.core.inference.patches import PatchGatherer
from napari_patchwork.core.training import (
    Prediction,
    Trainer,
    TrainingConfig,
    TrainingStep,
    annotation_loss,
    iter_train,
    scribbles_from_labels,
    train,
)
from napari_patchwork.core.training.augmentation import (
    AugmentationConfig,
    RandomAugmentation,
    simulate_scanner,
)
from napari_patchwork.io.zarr_io import CorruptChunkError  # what LazyVolume raises

from .samplers import (
    GridSampler,
    LabelSampler,
    PatchSampler,
    RandomSampler,
    UniformSampler,
    WeightedSampler,
)

__all__ = [
    "AugmentationConfig",
    "CorruptChunkError",
    "GridMerger",
    "GridPlan",
    "GridSampler",
    "Image",
    "ImagesBatch",
    "InferenceConfig",
    "InferenceStep",
    "LabelMap",
    "LabelSampler",
    "PatchAggregator",
    "PatchGatherer",
    "PatchLocation",
    "PatchSampler",
    "Prediction",
    "Queue",
    "RandomAugmentation",
    "RandomSampler",
    "ScalarImage",
    "Subject",
    "SubjectsBatch",
    "SubjectsLoader",
    "TiledInference",
    "Trainer",
    "TrainingConfig",
    "TrainingStep",
    "UniformSampler",
    "WeightedSampler",
    "annotation_loss",
    "blending_window",
    "collate_subjects",
    "crop_intervals",
    "grid_locations",
    "grid_starts",
    "infer",
    "iter_infer",
    "iter_train",
    "scribbles_from_labels",
    "simulate_scanner",
    "train",
]
