"""File formats: NIfTI, zarr / OME-Zarr, model files (the bottom layer: no GUI, no core).

Nothing here imports the rest of the package. Names load on first use (PEP 562): the NIfTI
reader does not import torch, which only the model loader needs, and zarr is imported only
when a zarr store is opened or created.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import load_model
    from .nifti import NiftiHeader, read_nifti, read_nifti_header, write_nifti
    from .zarr_io import CorruptChunkError, ZarrOutput, is_zarr_path, open_zarr

_WHERE = {
    "CorruptChunkError": ".zarr_io",
    "NiftiHeader": ".nifti",
    "ZarrOutput": ".zarr_io",
    "is_zarr_path": ".zarr_io",
    "load_model": ".models",
    "read_nifti": ".nifti",
    "read_nifti_header": ".nifti",
    "open_zarr": ".zarr_io",
    "write_nifti": ".nifti",
}
__all__ = [
    "CorruptChunkError",
    "NiftiHeader",
    "ZarrOutput",
    "is_zarr_path",
    "load_model",
    "open_zarr",
    "read_nifti",
    "read_nifti_header",
    "write_nifti",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
