"""Tiled inference: grid, gathering, blending, merging, streaming outputs."""

from .engine import InferenceStep, TiledInference
from .functional import infer, iter_infer

__all__ = ["InferenceStep", "TiledInference", "infer", "iter_infer"]
