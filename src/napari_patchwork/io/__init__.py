"""Readers and writers (no GUI imports).

Names load on first use (PEP 562): the NIfTI reader does not import torch, which only the
model loader needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import load_model
    from .nifti import NiftiHeader, read_nifti, read_nifti_header, write_nifti

_WHERE = {
    "NiftiHeader": ".nifti",
    "load_model": ".models",
    "read_nifti": ".nifti",
    "read_nifti_header": ".nifti",
    "write_nifti": ".nifti",
}
__all__ = ["NiftiHeader", "load_model", "read_nifti", "read_nifti_header", "write_nifti"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
