"""Volumes read patch by patch from arrays that do not live in memory (zarr, dask, memmap).

The core never imports zarr or dask: anything with ``shape``, ``dtype`` and numpy-style
slicing is accepted. Tiled inference reads through a cache of one slab along the first axis,
because it visits patches in rank order (first axis slowest): each input voxel is read from
storage about ``patch / step`` times, not once per patch that contains it. Random access (the
samplers) reads only the region asked for (:meth:`LazyVolume.read`).

A chunk that cannot be decoded raises :class:`~napari_patchwork.io.zarr_io.CorruptChunkError`,
naming the store and the chunk, instead of the codec's own message (the diagnosis, which knows
zarr, lives in :mod:`napari_patchwork.io.zarr_io`, as do the error and ``open_zarr``).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeGuard

import numpy as np
import torch

from napari_patchwork.core.data.dtypes import torch_compatible
from napari_patchwork.io.zarr_io import corrupt_chunk_error, store_name


class SliceableArray(Protocol):
    """What the core reads lazily: ``shape``, ``dtype`` and numpy-style slicing.

    A zarr or dask array, a numpy memmap, an h5py dataset… all have them.
    """

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, index: Any) -> Any: ...


def is_lazy_array(data: object) -> TypeGuard[SliceableArray]:
    """Whether ``data`` is an array-like to read lazily (not a tensor, not an in-memory array).

    A ``numpy.memmap`` is lazy: it is read patch by patch, never whole.

    Examples
    --------
    >>> is_lazy_array(np.zeros((2, 2, 2))), is_lazy_array(torch.zeros(2))
    (False, False)
    """
    if isinstance(data, (LazyVolume, np.memmap)):
        return True
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return False
    return all(hasattr(data, name) for name in ("shape", "dtype", "__getitem__"))


class LazyVolume:
    """A ``(C, I, J, K)`` view of a lazily read array, returning torch tensors for slices.

    Indexing (``volume[:, rows, columns, depth]``) goes through a cache of ``slab_rows`` full
    rows (for tiled inference, which visits the volume first axis slowest); :meth:`read`
    reads just the region asked for (for random patches). The old slab is dropped before the
    next is read, so at most one slab is held.

    Parameters
    ----------
    array : SliceableArray
        ``(I, J, K)`` or ``(C, I, J, K)``: a zarr or dask array, a numpy memmap, an h5py
        dataset… Anything with ``shape``, ``dtype`` and slicing.
    slab_rows : int
        Rows (first spatial axis) read at once and kept for the next reads.

    Raises
    ------
    CorruptChunkError
        When a chunk of a zarr array cannot be read (names the store and the chunk).

    Examples
    --------
    >>> volume = LazyVolume(np.arange(64.0).reshape(4, 4, 4))
    >>> volume.shape, volume[:, 1:2, 0:1, 0:2].tolist()
    ((1, 4, 4, 4), [[[[16.0, 17.0]]]])
    >>> volume.read(slice(3, 4), slice(3, 4), slice(3, 4)).item()
    63.0
    """

    def __init__(self, array: SliceableArray, slab_rows: int = 64) -> None:
        shape = tuple(int(s) for s in array.shape)
        if len(shape) not in (3, 4):
            raise ValueError(f"array must be 3D (I, J, K) or 4D (C, I, J, K), got shape {shape}")
        if any(s < 1 for s in shape):
            raise ValueError(f"array is empty: shape {shape}")
        if np.dtype(array.dtype).kind not in "biuf":
            raise TypeError(f"array must hold real numbers, got dtype {array.dtype}")
        self.array = array
        store = store_name(array)
        self._name = "the input" if store is None else f"input '{store}'"
        self.channels_first = len(shape) == 4
        self.shape = shape if self.channels_first else (1, *shape)
        self.dtype = np.dtype(array.dtype)
        self.slab_rows = max(1, int(slab_rows))
        self._slab: torch.Tensor | None = None
        self._slab_start = 0

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """``(I, J, K)``."""
        return (self.shape[1], self.shape[2], self.shape[3])

    def read(self, rows: slice, columns: slice, depth: slice) -> torch.Tensor:
        """Read ``[:, rows, columns, depth]`` from storage (no cache)."""
        index = (rows, columns, depth)
        full = (slice(None), *index) if self.channels_first else index
        array = self._fetch(full)
        if not self.channels_first:
            array = array[None]
        array = torch_compatible(array, self._name)
        if isinstance(self.array, np.ndarray) and np.may_share_memory(array, self.array):
            array = np.array(array, copy=True)  # a memmap: copy out of the (read-only) mapping
        array = np.ascontiguousarray(array)
        return torch.from_numpy(array)

    def _fetch(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self.array[index])
        except Exception as error:
            corrupt = corrupt_chunk_error(self.array, index, error)
            if corrupt is None:
                raise
            raise corrupt from None

    def __getitem__(self, index: tuple[slice, ...]) -> torch.Tensor:
        channels, rows, columns, depth = index
        lo, hi = rows.start or 0, self.shape[1] if rows.stop is None else rows.stop
        cached = self._slab
        if cached is None or lo < self._slab_start or hi > self._slab_start + cached.shape[1]:
            cached = self._slab = None  # drop the old slab before reading the next one
            stop = min(max(hi, lo + self.slab_rows), self.shape[1])
            whole = slice(0, None)
            cached = self._slab = self.read(slice(lo, stop), whole, whole)
            self._slab_start = lo
        offset = self._slab_start
        return cached[channels, lo - offset : hi - offset, columns, depth]

    def cached_or_read(self, rows: slice, columns: slice, depth: slice) -> torch.Tensor:
        """``[:, rows, columns, depth]`` from the cached slab when it holds them, else read.

        Never replaces the slab (for reads off the first-axis order, e.g. mirrored borders).
        """
        cached, lo, hi = self._slab, rows.start, rows.stop
        if (
            cached is not None
            and lo >= self._slab_start
            and hi <= self._slab_start + cached.shape[1]
        ):
            offset = self._slab_start
            return cached[:, lo - offset : hi - offset, columns, depth]
        return self.read(rows, columns, depth)

    def release(self) -> None:
        """Drop the cached slab (e.g. at the end of a run)."""
        self._slab = None

    def load(self) -> torch.Tensor:
        """The whole volume in memory (what the lazy path avoids: only for small arrays)."""
        return self.read(slice(0, self.shape[1]), slice(None), slice(None))

    def __repr__(self) -> str:
        return f"LazyVolume({type(self.array).__name__}, shape={self.shape}, dtype={self.dtype})"


__all__ = ["LazyVolume", "SliceableArray", "is_lazy_array"]
