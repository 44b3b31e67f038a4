"""Type aliases shared by the core modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    import numpy.typing as npt
    import torch

TypeTriplet = tuple[int, int, int]
TypeSize = int | Sequence[int]
#: A numpy dtype or anything ``numpy.dtype`` takes, or a torch dtype.
TypeDType: TypeAlias = "npt.DTypeLike | torch.dtype"
OverlapMode = Literal["crop", "average", "hann", "gaussian"]
OVERLAP_MODES: tuple[str, ...] = ("crop", "average", "hann", "gaussian")
PADDING_MODES: tuple[str, ...] = (
    "constant",
    "edge",
    "reflect",
    "symmetric",
    "wrap",
    "mean",
    "median",
    "minimum",
    "maximum",
)
