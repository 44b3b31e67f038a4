"""TorchIO 2 module path ``torchio.data.aggregator``."""

from napari_patchwork.core.inference.aggregator import PatchAggregator

__all__ = ["PatchAggregator"]
