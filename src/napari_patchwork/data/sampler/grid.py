"""TorchIO module path ``torchio.data.sampler.grid``."""

from ...core.samplers import GridSampler

__all__ = ["GridSampler"]
