"""NIfTI reading and writing through nibabel, channels first: ``(C, I, J, K)``.

Axis order: the array axes are NIfTI's voxel axes ``(i, j, k)`` as nibabel returns them, with
any fourth (time / vector) axis moved first as channels. The 4×4 affine maps ``(i, j, k, 1)``
to world (RAS+) millimetres.

Voxels are returned as nibabel gives them, in native byte order: scaled integers
(``scl_slope``/``scl_inter``) as floats, RGB24/RGBA32 as 3/4 ``uint8`` channels. Complex data
is refused.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Largest volume (voxels, all channels) read unless the caller passes another budget.
DEFAULT_MAX_VOXELS = int(os.environ.get("PATCHWORK_MAX_VOXELS", 2**33))


#: Header fields kept by the reader and restored by the writer.
NIFTI_FIELDS = ("qform_code", "sform_code", "xyzt_units")


@dataclass(frozen=True)
class NiftiHeader:
    """What a NIfTI header says about a volume, read without loading the voxels.

    Attributes
    ----------
    spatial_shape : tuple of int
        ``(I, J, K)``.
    num_channels : int
        Channels ``C`` of the array :func:`read_nifti` returns (3 or 4 for RGB24/RGBA32).
    dtype : numpy.dtype
        The dtype of the array :func:`read_nifti` returns (native byte order; float for
        scaled integers; ``uint8`` for RGB).
    affine : numpy.ndarray
        The 4×4 voxel-to-world matrix.
    nifti : dict
        ``qform_code``, ``sform_code`` and ``xyzt_units`` of the file, for :func:`write_nifti`.
    """

    spatial_shape: tuple[int, int, int]
    num_channels: int
    dtype: np.dtype[Any]
    affine: np.ndarray
    nifti: dict[str, int] = field(default_factory=dict)


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


def _native(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


def _voxel_dtype(image: Any, path: Path) -> tuple[np.dtype[Any], int]:
    """The dtype the voxels are read as and the channels per stored voxel (3/4 for RGB)."""
    stored = np.dtype(image.get_data_dtype())
    if stored.names is not None:
        fields = [stored.fields[name][0] for name in stored.names]
        if stored.names in (("R", "G", "B"), ("R", "G", "B", "A")) and all(
            f == np.uint8 for f in fields
        ):
            return np.dtype(np.uint8), len(stored.names)
        raise ValueError(f"NIfTI file '{path}' has an unsupported structured dtype {stored}")
    if stored.kind == "c":
        raise ValueError(
            f"NIfTI file '{path}' holds complex data ({stored.newbyteorder('=')}); "
            "split it into real channels (e.g. magnitude and phase) first"
        )
    slope = getattr(image.dataobj, "slope", 1.0)
    inter = getattr(image.dataobj, "inter", 0.0)
    if stored.kind in "iub" and (slope != 1 or inter != 0):
        return np.dtype(np.float64), 1  # nibabel applies the scaling in float64
    return _native(stored), 1


def _nifti_fields(image: Any) -> dict[str, int]:
    header = image.header
    try:
        return {name: int(header[name]) for name in NIFTI_FIELDS}
    except (KeyError, TypeError, ValueError):  # not a NIfTI-1/2 header
        return {}


def read_nifti_header(path: str | os.PathLike[str]) -> NiftiHeader:
    """Read the shape, channel count, dtype and affine of a NIfTI file, not its voxels.

    Parameters
    ----------
    path : str or PathLike
        A ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    NiftiHeader

    Raises
    ------
    FileNotFoundError, PermissionError, ValueError
        Missing, unreadable, non-NIfTI, corrupted, empty, complex-valued or 4D RGB files;
        the message names the path.
    """
    checked = _check_path(path)
    image = _load(checked)
    spatial_shape, channels = _layout(tuple(int(s) for s in image.shape), checked)
    if any(s < 1 for s in spatial_shape) or channels < 1:
        raise ValueError(f"NIfTI file '{checked}' is empty: shape {image.shape}")
    dtype, per_voxel = _voxel_dtype(image, checked)
    if per_voxel > 1 and channels > 1:
        raise ValueError(f"NIfTI file '{checked}' is RGB with a 4th axis: shape {image.shape}")
    return NiftiHeader(
        spatial_shape,
        channels * per_voxel,
        dtype,
        np.asarray(image.affine, dtype=np.float64),
        _nifti_fields(image),
    )


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

    Returns
    -------
    data : numpy.ndarray
        ``(C, I, J, K)`` in native byte order, as nibabel reads it: scaled integers as
        float64, RGB24/RGBA32 as 3/4 ``uint8`` channels, other dtypes unchanged.
    affine : numpy.ndarray
        The 4×4 voxel-to-world matrix.

    Raises
    ------
    FileNotFoundError, PermissionError, ValueError
        Missing, unreadable, non-NIfTI, corrupted, oversized or complex-valued files; the
        message names the path.
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
    if data.dtype.names is not None:  # RGB24 / RGBA32: one channel per field
        data = np.stack([data[name] for name in data.dtype.names], axis=-1)
    data = data.reshape(*header.spatial_shape, header.num_channels)
    data = np.moveaxis(data, -1, 0)  # a view: the file's (Fortran) order is kept, no copy
    return data.astype(_native(data.dtype), copy=False), header.affine


def _writable(array: np.ndarray) -> np.ndarray:
    """``array`` with the same values in a dtype to store: bool as uint8, int64 as int32 if
    every value fits, native byte order."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.int64 and array.size:
        info = np.iinfo(np.int32)
        if info.min <= array.min() and array.max() <= info.max:
            array = array.astype(np.int32)
    return array.astype(_native(array.dtype), copy=False)


def _restore_fields(header: Any, affine: np.ndarray, nifti: Mapping[str, int]) -> None:
    """Set the read file's qform/sform codes and units, unless they cannot place ``affine``."""
    header.set_qform(affine, int(nifti.get("qform_code", 0)))
    header.set_sform(affine, int(nifti.get("sform_code", 0)))
    if "xyzt_units" in nifti:
        header["xyzt_units"] = int(nifti["xyzt_units"])
    if not np.allclose(header.get_best_affine(), affine, rtol=1e-6, atol=1e-6):
        header.set_sform(affine, "aligned")  # the codes cannot say where this image is
        if not np.allclose(header.get_qform(), affine, rtol=1e-6, atol=1e-6):
            header.set_qform(affine, "unknown")


def write_nifti(
    path: str | os.PathLike[str],
    data: Any,
    affine: np.ndarray | None = None,
    *,
    overwrite: bool = True,
    nifti: Mapping[str, int] | None = None,
) -> Path:
    """Write a ``(C, I, J, K)`` or ``(I, J, K)`` array atomically (temp file, then rename).

    An interrupted write never leaves a half-written file at ``path``. Values are written
    exactly, unscaled: booleans as ``uint8``, ``int64`` as ``int32`` only when every value
    fits, other dtypes as given.

    Parameters
    ----------
    path : str or PathLike
        Output ending in ``.nii`` or ``.nii.gz``.
    data : array-like or torch.Tensor
        ``(C, I, J, K)`` or ``(I, J, K)`` voxels.
    affine : array-like of shape (4, 4), optional
        Voxel-to-world matrix; identity when omitted.
    overwrite : bool
        Replace an existing file.
    nifti : mapping, optional
        ``qform_code``, ``sform_code`` and ``xyzt_units`` to restore (as read into
        :attr:`NiftiHeader.nifti`). Codes that cannot represent ``affine`` (e.g. both 0 for
        a moved image, or a qform alone for a sheared affine) fall back to nibabel's default
        (sform ``aligned``), so the file's affine always equals ``affine``.
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
    array = _writable(array)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(array, affine, dtype=array.dtype)
    if nifti:
        _restore_fields(image.header, affine, nifti)
    handle, temp = tempfile.mkstemp(
        prefix=f".{path.name}.",
        suffix=".nii.gz" if str(path).endswith(".gz") else ".nii",
        dir=path.parent or Path("."),
    )
    os.close(handle)
    try:
        nib.save(image, temp)
        mask = os.umask(0o077)  # read the user's umask (the only way), then restore it
        os.umask(mask)
        os.chmod(temp, 0o666 & ~mask)  # mkstemp made it 0600: files follow the umask
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
