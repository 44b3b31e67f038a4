"""TorchIO module path ``torchio.data.sampler`` (the patch samplers)."""

from ...core.samplers import (
    GridSampler,
    LabelSampler,
    PatchSampler,
    RandomSampler,
    UniformSampler,
    WeightedSampler,
)

__all__ = [
    "GridSampler",
    "LabelSampler",
    "PatchSampler",
    "RandomSampler",
    "UniformSampler",
    "WeightedSampler",
]
