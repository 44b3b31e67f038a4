"""Volumes read patch by patch from arrays that do not live in memory (zarr, dask, memmap).

The core never imports zarr or dask: anything with ``shape``, ``dtype`` and numpy-style
slicing is accepted. Tiled inference reads through a cache of one patch height of rows and a
sliding window of whole chunk columns, because it visits patches in rank order (first axis
slowest, then the second): each input chunk is read once per band of rows that touches it
(each voxel about ``patch / step`` times), not once per patch that contains it, and only the
columns the current patches touch are held. Random access (the samplers) reads only the
region asked for (:meth:`LazyVolume.read`).

A chunk that cannot be decoded raises :class:`~napari_patchwork.io.zarr_io.CorruptChunkError`,
naming the store and the chunk, instead of the codec's own message (the diagnosis, which knows
zarr, lives in :mod:`napari_patchwork.io.zarr_io`, as do the error and ``open_zarr``).
"""

from __future__ import annotations

import itertools
import os
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


#: Input chunks read by one call to the array (its reader decodes them concurrently: more,
#: more memory in flight, about twice this many chunks: decoded and encoded). Slab reads are
#: cut into pieces of at most this many chunks: one per core, 2 to 8, so that what is in
#: flight does not grow with the machine (16 cores held 16 MiB more than 2 on 1 MiB chunks).
READ_CHUNKS = min(8, max(2, os.cpu_count() or 1))
#: ... and at most this many bytes of decoded chunks (at least one chunk): 4 MiB whole-plane
#: chunks (1 × 1024 × 1024 float32) are read one at a time, 64³ float32 ones up to four.
READ_BYTES = 4 << 20
_STRIP = 64  # columns per strip for arrays without chunks (numpy memmaps, …)


def _chunk_shape(array: Any, ndim: int) -> tuple[int, ...] | None:
    """The array's regular chunk shape (zarr, h5py), None without one (numpy, dask…)."""
    chunks = getattr(array, "chunks", None)
    if (
        isinstance(chunks, tuple)
        and len(chunks) == ndim
        and all(isinstance(c, (int, np.integer)) and c > 0 for c in chunks)
    ):
        return tuple(int(c) for c in chunks)
    return None


def _groups(start: int, stop: int, chunk: int, count: int) -> list[slice]:
    """``[start, stop)`` cut on chunk boundaries into slices of at most ``count`` chunks.

    Examples
    --------
    >>> [(s.start, s.stop) for s in _groups(5, 40, 16, 1)]
    [(5, 16), (16, 32), (32, 40)]
    """
    cuts = [start, *range(start - start % chunk + chunk * count, stop, chunk * count), stop]
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if a < b]


def _bounds(axis: slice, size: int) -> tuple[int, int] | None:
    """``[start, stop)`` of a unit-step slice (None for other steps)."""
    start, stop, step = axis.indices(size)
    return (start, max(start, stop)) if step == 1 else None


class LazyVolume:
    """A ``(C, I, J, K)`` view of a lazily read array, returning torch tensors for slices.

    Indexing (``volume[:, rows, columns, depth]``) goes through a cache made for tiled
    inference, which visits the volume first axis slowest and, within one band of rows, second
    axis slowest: the cache holds ``slab_rows`` rows of a *window of columns* (whole strips of
    the input's chunk columns, the full third axis), sliding it in place as the columns move on
    and refilling it when the rows move on. A band of rows is therefore read once per band, as
    a whole slab would be, but only the columns the current patches touch are held (192 of
    1024 columns for patches 128 wide on 64-column chunks). Strips are read a few chunks at a
    time (:data:`READ_CHUNKS`) into the preallocated cache, so the array's reader never holds
    a whole slab of decoded chunks. :meth:`read` reads just the region asked for (for random
    patches), without the cache.

    The tensors indexing returns are views of the cache, valid until the next indexing (copy
    them to keep them: the gatherer copies each patch into its batch at once).

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
        chunks = _chunk_shape(array, len(shape))
        self._chunks = chunks[-3:] if chunks is not None else None  # (rows, columns, depth)
        self._channel_bands = -(-shape[0] // chunks[0]) if chunks and len(shape) == 4 else 1
        self._channel_chunk = chunks[0] if chunks and len(shape) == 4 else self.shape[0]
        self._strip = self._chunks[1] if self._chunks is not None else _STRIP
        self._cache: torch.Tensor | None = None  # (C, rows, width, K), preallocated
        self._rows = (0, 0)  # rows the cache is for
        self._columns = (0, 0)  # columns it holds, from its first column on

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
        row_bounds, column_bounds = _bounds(rows, self.shape[1]), _bounds(columns, self.shape[2])
        if row_bounds is None or column_bounds is None:  # not a patch: read it as asked
            return self.read(rows, columns, depth)[channels]
        (lo, hi), (left, right) = row_bounds, column_bounds
        if not self._holds(lo, hi, left, right):
            self._load(lo, hi, left, right)
        assert self._cache is not None
        top, first = self._rows[0], self._columns[0]
        return self._cache[channels, lo - top : hi - top, left - first : right - first, depth]

    def _holds(self, lo: int, hi: int, left: int, right: int) -> bool:
        return (
            self._cache is not None
            and self._rows[0] <= lo
            and hi <= self._rows[1]
            and self._columns[0] <= left
            and right <= self._columns[1]
        )

    def _load(self, lo: int, hi: int, left: int, right: int) -> None:
        """Make the cache hold rows ``[lo, hi)`` × columns ``[left, right)`` (whole strips)."""
        strip, length = self._strip, self.shape[2]
        first = left - left % strip
        last = min(-(-right // strip) * strip, length)
        cache, (held_first, held_last) = self._cache, self._columns
        if (
            cache is not None
            and self._rows[0] == lo
            and hi <= self._rows[1]
            and first >= held_first
            and last - first <= cache.shape[2]
        ):  # the same rows, further on: slide the columns still needed, read the new ones
            self._slide(first - held_first, max(held_last - first, 0))
            start = max(held_last, first)
        else:
            stop = min(max(hi, lo + self.slab_rows), self.shape[1])
            width = min(max(last - first, -(-(right - left + strip - 1) // strip) * strip), length)
            if cache is None or cache.shape[1] != stop - lo or cache.shape[2] < width:
                self._cache = cache = None  # dropped before the next one is allocated
                dtype = torch.from_numpy(torch_compatible(np.empty(0, self.dtype))).dtype
                self._cache = torch.empty(
                    (self.shape[0], stop - lo, width, self.shape[3]), dtype=dtype
                )
            self._rows, start = (lo, stop), first
        self._columns = (first, max(last, start))
        self._fill(start, last)

    def _slide(self, shift: int, keep: int) -> None:
        """Move ``keep`` cached columns from ``shift`` on to the front (non-overlapping blocks)."""
        cache = self._cache
        if cache is None or shift <= 0 or keep <= 0:
            return
        for start in range(0, keep, shift):
            count = min(shift, keep - start)
            cache[:, :, start : start + count].copy_(
                cache[:, :, start + shift : start + shift + count]
            )

    def _fill(self, start: int, stop: int) -> None:
        """Read columns ``[start, stop)`` of the cached rows, at most READ_CHUNKS chunks (and
        READ_BYTES) a read."""
        cache = self._cache
        if cache is None or start >= stop:
            return
        (lo, hi), first = self._rows, self._columns[0]
        channels, depth = self.shape[0], self.shape[3]
        if self._chunks is None:  # no chunks: one read per strip
            channel_groups = [slice(0, channels)]
            row_groups, depth_groups = [slice(lo, hi)], [slice(0, depth)]
        else:  # whole chunks, as many depth chunks as fit, then fewer rows, then fewer channels
            row_chunk, column_chunk, depth_chunk = self._chunks
            chunk_bytes = self._channel_chunk * row_chunk * column_chunk * depth_chunk
            most = max(1, min(READ_CHUNKS, READ_BYTES // (chunk_bytes * self.dtype.itemsize)))
            channel_bands = self._channel_bands
            row_bands = (hi - 1) // row_chunk - lo // row_chunk + 1
            channel_count = min(channel_bands, most)
            row_count = min(row_bands, max(1, most // channel_count))
            depth_count = max(1, most // (channel_count * row_count))
            channel_groups = _groups(0, channels, self._channel_chunk, channel_count)
            row_groups = _groups(lo, hi, row_chunk, row_count)
            depth_groups = _groups(0, depth, depth_chunk, depth_count)
        for column in range(start, stop, self._strip):
            columns = slice(column, min(column + self._strip, stop))
            for part, rows, planes in itertools.product(channel_groups, row_groups, depth_groups):
                index = (rows, columns, planes)
                piece = self._fetch((part, *index) if self.channels_first else index)
                piece = torch_compatible(piece if self.channels_first else piece[None], self._name)
                target = cache[
                    part,
                    rows.start - lo : rows.stop - lo,
                    column - first : columns.stop - first,
                    planes,
                ]
                np.copyto(target.numpy(), piece)

    def cached_or_read(self, rows: slice, columns: slice, depth: slice) -> torch.Tensor:
        """``[:, rows, columns, depth]`` from the cache when it holds them, else read.

        Never changes the cache (for reads off the patch order, e.g. mirrored borders).
        """
        row_bounds, column_bounds = _bounds(rows, self.shape[1]), _bounds(columns, self.shape[2])
        if (
            row_bounds is not None
            and column_bounds is not None
            and self._holds(*row_bounds, *column_bounds)
        ):
            assert self._cache is not None
            top, first = self._rows[0], self._columns[0]
            (lo, hi), (left, right) = row_bounds, column_bounds
            return self._cache[:, lo - top : hi - top, left - first : right - first, depth]
        return self.read(rows, columns, depth)

    def release(self) -> None:
        """Drop the cache (e.g. at the end of a run)."""
        self._cache, self._rows, self._columns = None, (0, 0), (0, 0)

    def load(self) -> torch.Tensor:
        """The whole volume in memory (what the lazy path avoids: only for small arrays)."""
        return self.read(slice(0, self.shape[1]), slice(None), slice(None))

    def __repr__(self) -> str:
        return f"LazyVolume({type(self.array).__name__}, shape={self.shape}, dtype={self.dtype})"


__all__ = ["READ_BYTES", "READ_CHUNKS", "LazyVolume", "SliceableArray", "is_lazy_array"]
