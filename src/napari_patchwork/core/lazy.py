"""Volumes read patch by patch from arrays that do not live in memory (zarr, dask, memmap).

The core never imports zarr or dask: anything with ``shape``, ``dtype`` and numpy-style
slicing is accepted. Reads go through a cache of one slab along the first axis, because tiled
inference visits patches in rank order (first axis slowest): each input voxel is read from
storage about ``patch / step`` times, not once per patch that contains it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch


def is_lazy_array(data: Any) -> bool:
    """Whether ``data`` is an array-like to read lazily (not a tensor, not an in-memory array)."""
    if isinstance(data, LazyVolume):
        return True
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return False
    return all(hasattr(data, name) for name in ("shape", "dtype", "__getitem__"))


class LazyVolume:
    """A ``(C, I, J, K)`` view of a lazily read array, returning torch tensors for slices.

    Parameters
    ----------
    array : array-like
        ``(I, J, K)`` or ``(C, I, J, K)``: a zarr or dask array, a numpy memmap, an h5py
        dataset… Anything with ``shape``, ``dtype`` and slicing.
    slab_rows : int
        Rows (first spatial axis) read at once and kept for the next reads.

    Examples
    --------
    >>> volume = LazyVolume(np.arange(64.0).reshape(4, 4, 4))
    >>> volume.shape, volume[:, 1:2, 0:1, 0:2].tolist()
    ((1, 4, 4, 4), [[[[16.0, 17.0]]]])
    """

    def __init__(self, array: Any, slab_rows: int = 64) -> None:
        shape = tuple(int(s) for s in array.shape)
        if len(shape) not in (3, 4):
            raise ValueError(f"array must be 3D (I, J, K) or 4D (C, I, J, K), got shape {shape}")
        if any(s < 1 for s in shape):
            raise ValueError(f"array is empty: shape {shape}")
        if np.dtype(array.dtype).kind not in "biuf":
            raise TypeError(f"array must hold real numbers, got dtype {array.dtype}")
        self.array = array
        self.channels_first = len(shape) == 4
        self.shape = shape if self.channels_first else (1, *shape)
        self.dtype = np.dtype(array.dtype)
        self.slab_rows = max(1, int(slab_rows))
        self._slab: torch.Tensor | None = None
        self._slab_start = 0
        self.rows_read = 0  # rows read from storage (what the slab cache saves is measurable)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(I, J, K)``."""
        return (self.shape[1], self.shape[2], self.shape[3])

    def read(self, rows: slice, columns: slice, depth: slice) -> torch.Tensor:
        """Read ``[:, rows, columns, depth]`` from storage (no cache)."""
        index = (rows, columns, depth)
        data = self.array[(slice(None), *index)] if self.channels_first else self.array[index]
        array = np.asarray(data)
        if not self.channels_first:
            array = array[None]
        if array.dtype == np.uint16 or array.dtype == np.uint32:
            array = array.astype(np.int64)  # torch lacks these for most ops
        self.rows_read += rows.stop - rows.start
        return torch.from_numpy(np.ascontiguousarray(array))

    def __getitem__(self, index: tuple[slice, ...]) -> torch.Tensor:
        channels, rows, columns, depth = index
        lo, hi = rows.start or 0, self.shape[1] if rows.stop is None else rows.stop
        cached = self._slab
        if cached is None or lo < self._slab_start or hi > self._slab_start + cached.shape[1]:
            stop = min(max(hi, lo + self.slab_rows), self.shape[1])
            whole = slice(0, None)
            cached = self._slab = self.read(slice(lo, stop), whole, whole)
            self._slab_start = lo
        offset = self._slab_start
        return cached[channels, lo - offset : hi - offset, columns, depth]

    def load(self) -> torch.Tensor:
        """The whole volume in memory (what the lazy path avoids: only for small arrays)."""
        return self.read(slice(0, self.shape[1]), slice(None), slice(None))

    def __repr__(self) -> str:
        return f"LazyVolume({type(self.array).__name__}, shape={self.shape}, dtype={self.dtype})"


def open_zarr(path: str | os.PathLike[str], level: int = 0) -> Any:
    """Open a zarr array, or level ``level`` of an OME-Zarr multiscale image, for reading.

    Requires the optional ``zarr`` package (``pip install napari-patchwork[zarr]``).
    """
    try:
        import zarr
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading zarr needs 'zarr': pip install napari-patchwork[zarr]"
        ) from error
    if not os.path.exists(path):
        raise FileNotFoundError(f"zarr path does not exist: '{path}'")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:
        raise ValueError(f"cannot open zarr store '{path}': {error}") from error
    if hasattr(node, "shape"):
        return node
    datasets = multiscale_paths(dict(node.attrs))
    if not datasets:
        raise ValueError(f"zarr group '{path}' is not an OME-Zarr image (no 'multiscales')")
    if not 0 <= level < len(datasets):
        raise ValueError(f"level must be in [0, {len(datasets) - 1}] for '{path}', got {level}")
    return node[datasets[level]]


def multiscale_paths(attributes: dict[str, Any]) -> list[str]:
    """Dataset paths of an OME-Zarr image, finest first (versions 0.4 and 0.5)."""
    multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
    if not multiscales:
        return []
    return [str(dataset["path"]) for dataset in multiscales[0].get("datasets", [])]
