"""The headless core: images, subjects, samplers, aggregator, queue, batches.

It needs numpy, torch and nibabel only. Nothing here imports napari, Qt or magicgui (a
test enforces it).
"""

from .aggregator import PatchAggregator
from .augmentation import AugmentationConfig, RandomAugmentation, simulate_scanner
from .batch import ImagesBatch, SubjectsBatch
from .blending import blending_window
from .collate import collate_subjects
from .config import InferenceConfig
from .grid import GridPlan, crop_intervals, grid_locations, grid_starts
from .image import Image, LabelMap, ScalarImage
from .inference import InferenceStep, TiledInference, infer, iter_infer
from .lazy import CorruptChunkError
from .loader import SubjectsLoader
from .location import PatchLocation
from .merger import GridMerger
from .patches import PatchGatherer
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
from .training import (
    Prediction,
    Trainer,
    TrainingConfig,
    TrainingStep,
    annotation_loss,
    iter_train,
    scribbles_from_labels,
    train,
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
