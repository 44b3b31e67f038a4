"""TorchIO module path ``torchio.data.inference`` (the aggregator)."""

from ...core.aggregator import PatchAggregator

__all__ = ["PatchAggregator"]
