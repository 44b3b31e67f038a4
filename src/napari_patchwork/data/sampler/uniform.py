"""TorchIO module path ``torchio.data.sampler.uniform``."""

from ...core.samplers import UniformSampler

__all__ = ["UniformSampler"]
