"""TorchIO module path ``torchio.data.inference.aggregator``."""

from ...core.aggregator import PatchAggregator

__all__ = ["PatchAggregator"]
