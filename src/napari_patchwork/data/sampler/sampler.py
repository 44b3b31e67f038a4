"""TorchIO module path ``torchio.data.sampler.sampler``."""

from ...core.samplers import PatchSampler, RandomSampler

__all__ = ["PatchSampler", "RandomSampler"]
