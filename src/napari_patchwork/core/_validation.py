"""Argument checks shared by the core: each raises an error naming the argument and value."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, TypeGuard

import numpy as np

from .types import PADDING_MODES, TypeTriplet


def _is_int(value: object) -> TypeGuard[numbers.Integral | np.integer[Any]]:
    if type(value) is int:  # fast path: isinstance on the ABC costs ~1 µs
        return True
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


def to_triplet(value: object, name: str, *, minimum: int = 1) -> TypeTriplet:
    """Return ``value`` as three ints ``>= minimum``; a single int applies to all axes.

    Raises
    ------
    TypeError
        If ``value`` is not an int or a sequence of three ints (floats and bools are refused).
    ValueError
        If it has the wrong length or a value below ``minimum``.
    """
    if hasattr(value, "tolist") and not _is_int(value):
        value = value.tolist()
    if _is_int(value):
        values = [int(value)] * 3
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != 3:
            raise ValueError(f"{name} must be an int or 3 ints, got {len(value)} values: {value!r}")
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{name} must contain integers, got {value!r}")
        values = [int(v) for v in value]
    else:
        raise TypeError(f"{name} must be an int or a sequence of 3 ints, got {value!r}")
    if any(v < minimum for v in values):
        relation = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {relation}, got {value!r}")
    return (values[0], values[1], values[2])


def check_overlap(patch_size: TypeTriplet, patch_overlap: TypeTriplet) -> None:
    """Check that the overlap is even and smaller than the patch on every axis."""
    if any(o % 2 for o in patch_overlap):
        raise ValueError(f"patch_overlap must be even on every axis, got {patch_overlap}")
    if any(o >= p for o, p in zip(patch_overlap, patch_size)):
        raise ValueError(
            f"patch_overlap {patch_overlap} must be smaller than patch_size {patch_size}"
        )


def check_patch_fits(patch_size: TypeTriplet, spatial_shape: Sequence[int]) -> None:
    """Check that a patch fits inside a volume (no padding)."""
    if any(p > s for p, s in zip(patch_size, spatial_shape)):
        raise ValueError(
            f"patch_size {patch_size} is larger than the volume {tuple(spatial_shape)};"
            " use a smaller patch or a padding_mode"
        )


def check_padding_mode(padding_mode: object) -> None:
    """Accept None, a number (constant fill) or one of the named padding modes."""
    if padding_mode is None or (
        isinstance(padding_mode, numbers.Real) and not isinstance(padding_mode, bool)
    ):
        return
    if padding_mode not in PADDING_MODES:
        raise ValueError(
            f"padding_mode must be None, a number or one of {PADDING_MODES}, got {padding_mode!r}"
        )


def check_positive_int(value: object, name: str, *, allow_none: bool = False) -> None:
    """Check that ``value`` is a positive int (or None when allowed)."""
    if value is None and allow_none:
        return
    if not _is_int(value):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
