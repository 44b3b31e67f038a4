"""The napari plugin's reader, writers and sample data (see ``napari.yaml``).

Pure functions on layer-data tuples: napari itself is not imported, so they are tested and
used without a viewer. They sit above ``io`` (file formats) and beside the widgets.

Axis order: napari's axes are the NIfTI voxel axes ``(i, j, k)``; ``scale`` is the voxel
spacing and ``translate`` the world position of voxel ``(0, 0, 0)`` from the affine (a full
``affine`` is passed instead when the affine rotates or shears). Multi-channel images open
with ``channel_axis=0``. The affine is kept in ``metadata["affine"]`` and the header's
qform/sform codes and units in ``metadata["nifti"]``, so that saving an unmoved layer writes
them back unchanged; a moved layer is saved with napari's full data-to-world transform.
Labels keep their integer values exactly and are saved in the smallest integer type that
holds them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .io.nifti import is_nifti_path, read_nifti, read_nifti_header, write_nifti
from .io.zarr_io import is_zarr_path, layer_data_from_zarr

LayerData = tuple[Any, dict[str, Any], str]
LABEL_HINTS = ("label", "seg", "mask", "annot")
MAX_LABEL_VALUES = 256
#: Label dtypes tried in order when saving: the first that holds every value is used.
LABEL_DTYPES = (np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)
PLACEMENT_KEYS = ("scale", "translate", "rotate", "shear", "affine")


def smallest_label_dtype(array: np.ndarray, name: str = "labels") -> np.dtype[Any]:
    """The smallest integer dtype in ``LABEL_DTYPES`` that holds every value of ``array``.

    Parameters
    ----------
    array : numpy.ndarray
        Integer (or integer-valued float / bool) labels.
    name : str
        What to call the array in error messages.

    Raises
    ------
    ValueError
        Non-integer values, or values outside every integer dtype.
    """
    if array.dtype == np.bool_ or array.size == 0:
        return np.dtype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        finite = np.isfinite(array)
        if not finite.all() or not np.all(array == np.round(array)):
            bad = array[~finite | (array != np.round(array))].flat[0]
            raise ValueError(f"{name} holds a non-integer value ({bad}); labels must be integers")
    low, high = array.min(), array.max()
    low = int(low) if np.issubdtype(array.dtype, np.integer) else low
    high = int(high) if np.issubdtype(array.dtype, np.integer) else high
    for dtype in LABEL_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"{name} holds values from {low} to {high}, outside every integer type")


def _as_labels(array: np.ndarray, name: str) -> np.ndarray:
    """Integer labels with the same values (integer dtypes unchanged, floats narrowed)."""
    if np.issubdtype(array.dtype, np.integer):
        return array
    return array.astype(smallest_label_dtype(array, name))


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
    nifti = read_nifti_header(path).nifti
    name = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".gz") else path.stem
    meta: dict[str, Any] = {
        "name": name,
        "metadata": {"affine": affine, "path": str(path), "nifti": nifti},
    }
    meta.update(_placement(affine))
    if data.shape[0] == 1 and _is_labels(data[0], path):
        return [(_as_labels(data[0], f"NIfTI file '{path}'"), meta, "labels")]
    meta["rgb"] = False  # volumes: 3 or 4 slices on the last axis are not colours
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


def _vector(value: Any, ndim: int, fill: float) -> np.ndarray:
    """A length-``ndim`` vector, napari style: missing leading entries are ``fill``."""
    given = np.atleast_1d(np.asarray(value, dtype=np.float64))[-ndim:]
    return np.concatenate([np.full(ndim - len(given), fill), given])


def _square(value: Any, ndim: int) -> np.ndarray:
    """The trailing ``ndim``×``ndim`` block of a matrix, embedded in an identity."""
    matrix = np.asarray(getattr(value, "affine_matrix", value), dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square matrix, got {matrix!r}")
    size = min(ndim, matrix.shape[0])
    full = np.eye(ndim)
    full[-size:, -size:] = matrix[-size:, -size:]
    return full


def _shear_matrix(shear: Any, ndim: int) -> np.ndarray:
    """napari's shear: a matrix, or its upper-triangular entries row by row."""
    shear = np.asarray(shear, dtype=np.float64)
    if shear.ndim == 2:
        return _square(shear, ndim)
    size = int(round((1 + np.sqrt(1 + 8 * len(shear))) / 2)) if len(shear) else 1
    matrix = np.eye(size)
    matrix[np.triu_indices(size, 1)] = shear
    return _square(matrix, ndim)


def layer_affine(meta: dict[str, Any], ndim: int = 3) -> np.ndarray:
    """napari's data-to-world transform of a layer from its meta, as an ``ndim + 1`` matrix.

    ``world = affine @ (translate + rotate @ shear @ diag(scale) @ data)``, the order of
    napari's ``layer.data_to_world``.

    Parameters
    ----------
    meta : dict
        Layer meta with any of ``scale``, ``translate``, ``rotate`` (a matrix), ``shear``
        (upper-triangular values or a matrix) and ``affine`` (a matrix or napari ``Affine``).
    ndim : int
        The layer's number of dimensions.
    """
    n = max(ndim, 1)
    linear = (
        _square(meta.get("rotate", np.eye(n)), n)
        @ _shear_matrix(meta.get("shear", np.zeros(0)), n)
        @ np.diag(_vector(meta.get("scale", np.ones(n)), n, 1.0))
    )
    inner = np.eye(n + 1)
    inner[:n, :n] = linear
    inner[:n, n] = _vector(meta.get("translate", np.zeros(n)), n, 0.0)
    outer = meta.get("affine")
    return inner if outer is None else _square(outer, n + 1) @ inner


def affine_from_meta(meta: dict[str, Any], ndim: int = 3) -> np.ndarray:
    """The 4×4 NIfTI affine to write for a layer: its full data-to-world transform.

    The affine read with the layer (``metadata["affine"]``) is written exactly when the layer
    was not moved (its napari transform still equals it, or the meta has no placement);
    otherwise napari's transform (:func:`layer_affine`) on the last 3 axes.

    Parameters
    ----------
    meta : dict
        napari layer meta (``layer.as_layer_data_tuple()[1]`` or the writer's ``meta``).
    ndim : int
        The layer's number of dimensions (at least 3).
    """
    stored = (meta.get("metadata") or {}).get("affine")
    stored = None if stored is None else np.asarray(stored, dtype=np.float64)
    if not any(meta.get(key) is not None for key in PLACEMENT_KEYS):
        return np.eye(4) if stored is None else stored
    full = layer_affine(meta, max(ndim, 3))
    affine = np.eye(4)
    affine[:3, :3] = full[-4:-1, -4:-1]
    affine[:3, 3] = full[-4:-1, -1]
    if stored is not None and np.allclose(affine, stored, rtol=1e-6, atol=1e-6):
        return stored
    return affine


def _layer_array(data: Any, meta: dict[str, Any]) -> np.ndarray:
    """The voxels to save: level 0 of a multiscale layer; RGB, complex and text refused."""
    if meta.get("multiscale") and isinstance(data, (list, tuple)):
        data = data[0]
    if meta.get("rgb"):
        raise ValueError(
            "RGB(A) image layers cannot be saved as NIfTI volumes (their last axis holds "
            "colours); untick 'rgb' in the layer controls to save the channels as a 3D volume"
        )
    array = np.asarray(data)
    if np.iscomplexobj(array):
        raise TypeError(
            f"complex data ({array.dtype}) is not saved (complex NIfTI files are refused when "
            "read); save the magnitude (numpy.abs) or the real part as an image layer"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"layer data must be numbers, got dtype {array.dtype}")
    if array.ndim != 3:
        raise ValueError(f"only 3D layers can be saved as NIfTI, got shape {array.shape}")
    return array


def _write(path: str, array: np.ndarray, meta: dict[str, Any]) -> list[str]:
    target = path if is_nifti_path(path) else f"{path}.nii.gz"
    source = (meta.get("metadata") or {}).get("path")
    if source and Path(source).exists() and Path(target).resolve() == Path(source).resolve():
        raise ValueError(f"refusing to overwrite the file the layer was read from: '{source}'")
    nifti = (meta.get("metadata") or {}).get("nifti")
    write_nifti(target, array[None], affine_from_meta(meta, array.ndim), nifti=nifti)
    return [target]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save one 3D image layer (layer-data tuple parts) as a NIfTI file.

    Parameters
    ----------
    path : str
        Output path (``.nii`` or ``.nii.gz``; ``.nii.gz`` is appended otherwise).
    data : array-like
        The layer's 3D data (level 0 of a multiscale layer is saved).
    meta : dict
        The layer's meta (placement, ``metadata`` as read by the reader).

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    ValueError
        Not 3D, an RGB layer, or the file the layer was read from.
    TypeError
        Complex or non-numeric data.
    """
    return _write(path, _layer_array(data, meta), meta)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save one 3D labels layer, in the smallest integer type that holds the values.

    Parameters are those of :func:`write_image`.

    Raises
    ------
    ValueError
        Non-integer values, or any refusal of :func:`write_image`.
    TypeError
        Complex or non-numeric data.
    """
    array = _layer_array(data, meta)
    array = array.astype(smallest_label_dtype(array, "labels"), copy=False)
    return _write(path, array, meta)


class NiftiWriteError(RuntimeError):
    """A layer could not be saved as NIfTI from napari; the message names layer, path and why.

    The npe2 writer commands (:func:`write_image_command`, :func:`write_labels_command`)
    raise this instead of the ``ValueError`` behind it: napari takes a ``ValueError`` from a
    writer to mean "this writer does not apply" and shows only "not a valid writer", while any
    other exception reaches the user with its message. The original error is ``__cause__``.

    Examples
    --------
    >>> import numpy as np
    >>> try:
    ...     write_image_command("f.nii", np.zeros((4, 4)), {"name": "f"})
    ... except NiftiWriteError as error:
    ...     print(error)
    cannot save layer 'f' as 'f.nii': only 3D layers can be saved as NIfTI, got shape (4, 4)
    """


@contextmanager
def _refusal_reaches_user(path: str, meta: dict[str, Any]) -> Iterator[None]:
    try:
        yield
    except (ValueError, TypeError, OSError) as error:
        name = meta.get("name") or "unnamed"
        raise NiftiWriteError(f"cannot save layer '{name}' as '{path}': {error}") from error


def write_image_command(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer for image layers: :func:`write_image`, refusals as :class:`NiftiWriteError`."""
    with _refusal_reaches_user(path, meta):
        return write_image(path, data, meta)


def write_labels_command(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer for labels layers: :func:`write_labels`, refusals as :class:`NiftiWriteError`."""
    with _refusal_reaches_user(path, meta):
        return write_labels(path, data, meta)


def sample_layers() -> list[LayerData]:
    """npe2 sample data: the synthetic volume, its labels and its probability map."""
    from .sample import SAMPLE_SPACING, make_sample

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
