"""napari reader, writers and sample data: pure functions on layer-data tuples (no napari import).

Axis order: napari's axes are the NIfTI voxel axes ``(i, j, k)``; ``scale`` is the voxel
spacing and ``translate`` the world position of voxel ``(0, 0, 0)`` from the affine (a full
``affine`` is passed instead when the affine rotates or shears). Multi-channel images open
with ``channel_axis=0``. The affine is kept in ``metadata["affine"]`` so that saving writes it
back unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .nifti import is_nifti_path, read_nifti, write_nifti
from .zarr_io import is_zarr_path, layer_data_from_zarr

LayerData = tuple[Any, dict[str, Any], str]
LABEL_HINTS = ("label", "seg", "mask", "annot")
MAX_LABEL_VALUES = 256


def _is_labels(array: np.ndarray, path: Path) -> bool:
    """Labels when named like a segmentation, or integer with few distinct values."""
    if any(hint in path.name.lower() for hint in LABEL_HINTS):
        return np.issubdtype(array.dtype, np.integer) or bool(np.all(array == np.round(array)))
    if not np.issubdtype(array.dtype, np.integer) or array.dtype.itemsize > 2:
        return False
    return len(np.unique(array[:: max(1, array.size // 1_000_000)])) <= MAX_LABEL_VALUES // 8


def _placement(affine: np.ndarray) -> dict[str, Any]:
    linear = affine[:3, :3]
    if np.allclose(linear, np.diag(np.diag(linear))) and np.all(np.diag(linear) > 0):
        return {"scale": tuple(np.diag(linear)), "translate": tuple(affine[:3, 3])}
    return {"affine": affine}


def layer_data_from_nifti(path: str | os.PathLike[str]) -> list[LayerData]:
    """Read one NIfTI file as napari layer data (image or labels)."""
    path = Path(path)
    data, affine = read_nifti(path)
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    meta: dict[str, Any] = {"name": name, "metadata": {"affine": affine, "path": str(path)}}
    meta.update(_placement(affine))
    if data.shape[0] == 1 and _is_labels(data[0], path):
        return [(data[0].astype(np.int32, copy=False), meta, "labels")]
    if data.shape[0] == 1:
        return [(data[0], meta, "image")]
    return [(data, {**meta, "channel_axis": 0}, "image")]


def get_reader(path: str | list[str]) -> Any:
    """npe2 reader: a function for NIfTI files or zarr stores, None for anything else."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if paths and all(is_nifti_path(p) for p in paths):
        return read_layers
    if paths and all(is_zarr_path(p) for p in paths):
        return read_zarr_layers
    return None


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read one or more NIfTI files."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [layer for p in paths for layer in layer_data_from_nifti(p)]


def read_zarr_layers(path: str | list[str]) -> list[LayerData]:
    """Open one or more zarr / OME-Zarr stores lazily (multiscale when they have levels)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [layer for p in paths for layer in layer_data_from_zarr(p)]


def affine_from_meta(meta: dict[str, Any], ndim: int = 3) -> np.ndarray:
    """The 4×4 affine to write: the one read with the layer, else from scale and translate."""
    stored = (meta.get("metadata") or {}).get("affine")
    if stored is not None:
        return np.asarray(stored, dtype=np.float64)
    affine = np.eye(4)
    scale = list(meta.get("scale", [1.0] * ndim))[-3:]
    translate = list(meta.get("translate", [0.0] * ndim))[-3:]
    affine[:3, :3] = np.diag(scale)
    affine[:3, 3] = translate
    return affine


def _write(path: str, data: Any, meta: dict[str, Any], dtype: Any = None) -> list[str]:
    array = np.asarray(data)
    if array.ndim != 3:
        raise ValueError(f"only 3D layers can be saved as NIfTI, got shape {array.shape}")
    if dtype is not None:
        array = array.astype(dtype)
    target = path if is_nifti_path(path) else f"{path}.nii.gz"
    source = (meta.get("metadata") or {}).get("path")
    if source and Path(source).exists() and Path(target).resolve() == Path(source).resolve():
        raise ValueError(f"refusing to overwrite the file the layer was read from: '{source}'")
    write_nifti(target, array[None], affine_from_meta(meta, array.ndim))
    return [target]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer for image layers."""
    return _write(path, data, meta)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer for labels layers (stored as int16/int32)."""
    array = np.asarray(data)
    return _write(path, array, meta, np.int16 if array.max(initial=0) < 2**15 else np.int32)


def sample_layers() -> list[LayerData]:
    """npe2 sample data: the synthetic volume, its labels and its probability map."""
    from ..data import SAMPLE_SPACING, make_sample

    volume = make_sample()
    placement = {"scale": SAMPLE_SPACING}
    return [
        (
            volume.image,
            {"name": "sample image", **placement, "metadata": {"affine": volume.affine}},
            "image",
        ),
        (
            volume.probability,
            {
                "name": "sample probability",
                "colormap": "magma",
                "visible": False,
                **placement,
                "metadata": {"affine": volume.affine},
            },
            "image",
        ),
        (
            volume.labels.astype(np.int32),
            {
                "name": "sample labels",
                "opacity": 0.5,
                **placement,
                "metadata": {"affine": volume.affine},
            },
            "labels",
        ),
    ]
