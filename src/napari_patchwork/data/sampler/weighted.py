"""TorchIO module path ``torchio.data.sampler.weighted``."""

from ...core.samplers import WeightedSampler

__all__ = ["WeightedSampler"]
