"""TorchIO module path ``torchio.data.inference`` (the aggregator)."""

from napari_patchwork.core.inference.aggregator import PatchAggregator

__all__ = ["PatchAggregator"]
