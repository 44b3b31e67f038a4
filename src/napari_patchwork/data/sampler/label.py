"""TorchIO module path ``torchio.data.sampler.label``."""

from ...core.samplers import LabelSampler

__all__ = ["LabelSampler"]
