"""Type aliases shared by the core modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

TypeTriplet = tuple[int, int, int]
TypeSize = int | Sequence[int]
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
