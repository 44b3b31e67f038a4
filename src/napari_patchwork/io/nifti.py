"""NIfTI reading and writing through nibabel, channels first: ``(C, I, J, K)``.

Axis order: the array axes are NIfTI's voxel axes ``(i, j, k)`` as nibabel returns them, with
any fourth (time / vector) axis moved first as channels. The 4×4 affine maps ``(i, j, k, 1)``
to world (RAS+) millimetres.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Largest volume (voxels, all channels) read unless the caller passes another budget.
DEFAULT_MAX_VOXELS = int(os.environ.get("PATCHWORK_MAX_VOXELS", 2**33))


@dataclass(frozen=True)
class NiftiHeader:
    """What a NIfTI header says about a volume, read without loading the voxels."""

    spatial_shape: tuple[int, int, int]
    num_channels: int
    dtype: np.dtype[Any]
    affine: np.ndarray


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    """Whether the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _check_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path does not exist: '{path}'")
    if path.is_dir():
        raise ValueError(f"path is a directory, not a NIfTI file: '{path}'")
    if not is_nifti_path(path):
        raise ValueError(f"path must be a NIfTI file (.nii or .nii.gz), got '{path}'")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"path is not readable (permission denied): '{path}'")
    return path


def _load(path: Path) -> Any:
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as error:  # nibabel raises many types for broken files
        raise ValueError(f"cannot read NIfTI file '{path}': {error}") from error


def _layout(shape: tuple[int, ...], path: Path) -> tuple[tuple[int, int, int], int]:
    if len(shape) == 3:
        return (shape[0], shape[1], shape[2]), 1
    if len(shape) == 4:
        return (shape[0], shape[1], shape[2]), shape[3]
    if len(shape) == 5 and shape[3] == 1:
        return (shape[0], shape[1], shape[2]), shape[4]
    raise ValueError(f"NIfTI file '{path}' has shape {shape}; expected 3D or 4D")


def read_nifti_header(path: str | os.PathLike[str]) -> NiftiHeader:
    """Read the shape, channel count, dtype and affine of a NIfTI file, not its voxels."""
    checked = _check_path(path)
    image = _load(checked)
    spatial_shape, channels = _layout(tuple(int(s) for s in image.shape), checked)
    if any(s < 1 for s in spatial_shape) or channels < 1:
        raise ValueError(f"NIfTI file '{checked}' is empty: shape {image.shape}")
    return NiftiHeader(spatial_shape, channels, image.get_data_dtype(), np.asarray(image.affine))


def read_nifti(
    path: str | os.PathLike[str], *, max_voxels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file as a ``(C, I, J, K)`` array and its 4×4 affine.

    Parameters
    ----------
    path : str or PathLike
        A ``.nii`` or ``.nii.gz`` file.
    max_voxels : int, optional
        Refuse volumes with more voxels (all channels) than this, before allocating.
        Defaults to ``DEFAULT_MAX_VOXELS`` (env ``PATCHWORK_MAX_VOXELS``).

    Raises
    ------
    FileNotFoundError, PermissionError, ValueError
        Missing, unreadable, non-NIfTI, corrupted or oversized files; the message names the path.
    """
    header = read_nifti_header(path)
    budget = DEFAULT_MAX_VOXELS if max_voxels is None else max_voxels
    voxels = int(np.prod(header.spatial_shape)) * header.num_channels
    if voxels > budget:
        raise ValueError(
            f"NIfTI file '{path}' has {voxels} voxels ({header.spatial_shape} x "
            f"{header.num_channels}), over the budget of {budget} voxels (max_voxels)"
        )
    image = _load(Path(path))
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:
        raise ValueError(f"cannot read the voxels of NIfTI file '{path}': {error}") from error
    data = data.reshape(*header.spatial_shape, header.num_channels)
    return np.ascontiguousarray(np.moveaxis(data, -1, 0)), header.affine


def write_nifti(
    path: str | os.PathLike[str],
    data: Any,
    affine: np.ndarray | None = None,
    *,
    overwrite: bool = True,
) -> Path:
    """Write a ``(C, I, J, K)`` or ``(I, J, K)`` array atomically (temp file, then rename).

    An interrupted write never leaves a half-written file at ``path``.
    """
    import nibabel as nib

    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"path must end in .nii or .nii.gz, got '{path}'")
    if path.exists() and not overwrite:
        raise FileExistsError(f"output exists: '{path}' (pass overwrite=True to replace it)")
    array = data.detach().cpu().numpy() if hasattr(data, "detach") else np.asarray(data)
    if array.ndim == 4:
        array = np.moveaxis(array, 0, -1)
        if array.shape[-1] == 1:
            array = array[..., 0]
    elif array.ndim != 3:
        raise ValueError(f"data must be 3D or 4D (C, I, J, K), got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.int64:
        array = array.astype(np.int32)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(array, affine)
    handle, temp = tempfile.mkstemp(
        prefix=f".{path.name}.",
        suffix=".nii.gz" if str(path).endswith(".gz") else ".nii",
        dir=path.parent or Path("."),
    )
    os.close(handle)
    try:
        nib.save(image, temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
