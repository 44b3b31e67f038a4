"""TorchIO 2 module path ``torchio.data.aggregator``."""

from ..core.aggregator import PatchAggregator

__all__ = ["PatchAggregator"]
