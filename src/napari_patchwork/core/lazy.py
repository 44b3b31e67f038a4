"""Volumes read patch by patch from arrays that do not live in memory (zarr, dask, memmap).

The core never imports zarr or dask: anything with ``shape``, ``dtype`` and numpy-style
slicing is accepted. Tiled inference reads through a cache of one slab along the first axis,
because it visits patches in rank order (first axis slowest): each input voxel is read from
storage about ``patch / step`` times, not once per patch that contains it. Random access (the
samplers) reads only the region asked for (:meth:`LazyVolume.read`).

A chunk that cannot be decoded raises :class:`CorruptChunkError`, naming the store and the
chunk, instead of the codec's own message.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any

import numpy as np
import torch


class CorruptChunkError(ValueError):
    """A chunk of a lazily read input cannot be read or decoded (truncated, garbage…).

    Parameters
    ----------
    store : str
        The input store (path or URL), as the user named it.
    chunk : tuple of int
        The chunk's index in the array's chunk grid.
    key : str, optional
        The chunk's key in the store (``'c/0/1/0/1'``).
    reason : str
        What the decoder said.

    Examples
    --------
    >>> error = CorruptChunkError("in.zarr", (0, 1, 0, 1), "c/0/1/0/1", "Zstd decompression error")
    >>> print(error)
    corrupt chunk (0, 1, 0, 1) ('c/0/1/0/1') of input 'in.zarr': Zstd decompression error
    """

    def __init__(self, store: str, chunk: tuple[int, ...], key: str | None, reason: str) -> None:
        self.store, self.chunk, self.key, self.reason = store, tuple(chunk), key, reason
        where = f" ({key!r})" if key else ""
        super().__init__(f"corrupt chunk {self.chunk}{where} of input {store!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable: dask sends it from worker processes
        return (type(self), (self.store, self.chunk, self.key, self.reason))


class _ZarrTaskNoise(logging.Filter):
    """Drops asyncio's "Task was destroyed but it is pending" for zarr's abandoned reads.

    When one chunk of a read fails, zarr abandons the other chunk tasks of that read; asyncio
    logs each one when it is collected. The failure itself is reported once, by us.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Task was destroyed but it is pending" in message and "zarr" in message)


_NOISE_FILTER = _ZarrTaskNoise()


def _quiet_zarr_task_noise() -> None:
    logger = logging.getLogger("asyncio")
    if _NOISE_FILTER not in logger.filters:
        logger.addFilter(_NOISE_FILTER)


def store_name(array: Any) -> str | None:
    """The path (or URL) of the store behind a zarr array, None for other arrays.

    Examples
    --------
    >>> store_name(np.zeros(3)) is None
    True
    """
    store_path = getattr(array, "store_path", None)
    if store_path is None:
        return None
    root = getattr(getattr(store_path, "store", None), "root", None)
    inner = str(getattr(store_path, "path", "") or "")
    if root is not None:
        return os.path.join(str(root), inner) if inner else str(root)
    return str(store_path)


def _chunk_key(array: Any, chunk: tuple[int, ...]) -> str | None:
    encode = getattr(getattr(array, "metadata", None), "encode_chunk_key", None)
    try:
        return str(encode(chunk)) if encode is not None else None
    except Exception:  # pragma: no cover - metadata of another zarr version
        return None


def find_corrupt_chunk(array: Any, index: tuple[slice, ...]) -> tuple[int, ...] | None:
    """The first chunk of the zarr ``array`` under ``index`` that fails to read, or None.

    Reads the chunks one at a time (the diagnosis of a failed read, not the normal path).
    """
    chunks = getattr(array, "chunks", None)
    if chunks is None:
        return None
    shape = tuple(int(s) for s in array.shape)
    ranges = []
    for axis, size, chunk in zip(index, shape, chunks):
        start, stop, _ = axis.indices(size)
        ranges.append(range(start // chunk, max(stop - 1, start) // chunk + 1))
    for position in itertools.product(*ranges):
        region = tuple(
            slice(p * c, min((p + 1) * c, s)) for p, c, s in zip(position, chunks, shape)
        )
        try:
            array[region]
        except Exception:
            return tuple(position)
    return None


def is_lazy_array(data: Any) -> bool:
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


def _for_torch(array: np.ndarray) -> np.ndarray:
    """Native byte order and a dtype torch holds exactly (as in-memory images are converted)."""
    if not array.dtype.isnative:  # zarr gives '<f4' on little-endian machines: no copy then
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype == np.uint16:
        return array.astype(np.int32)
    if array.dtype in (np.uint32, np.uint64):
        if array.dtype == np.uint64 and int(array.max(initial=0)) > np.iinfo(np.int64).max:
            raise ValueError("a uint64 input holds values above the int64 range; renumber first")
        return array.astype(np.int64)
    return array


class LazyVolume:
    """A ``(C, I, J, K)`` view of a lazily read array, returning torch tensors for slices.

    Indexing (``volume[:, rows, columns, depth]``) goes through a cache of ``slab_rows`` full
    rows (for tiled inference, which visits the volume first axis slowest); :meth:`read`
    reads just the region asked for (for random patches). The old slab is dropped before the
    next is read, so at most one slab is held.

    Parameters
    ----------
    array : array-like
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
    >>> volume.read(slice(3, 4), slice(3, 4), slice(3, 4)).item(), volume.voxels_read
    (63.0, 49)
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
        self.voxels_read = 0  # voxels (all channels) read from storage

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
        array = _for_torch(array)
        if isinstance(self.array, np.ndarray) and np.may_share_memory(array, self.array):
            array = np.array(array, copy=True)  # a memmap: copy out of the (read-only) mapping
        array = np.ascontiguousarray(array)
        self.rows_read += array.shape[1]
        self.voxels_read += array.size
        return torch.from_numpy(array)

    def _fetch(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self.array[index])
        except Exception as error:
            store = store_name(self.array)
            if store is None:
                raise
            _quiet_zarr_task_noise()
            chunk = find_corrupt_chunk(self.array, index)
            if chunk is None:
                raise
            reason = f"{type(error).__name__}: {error}".strip().splitlines()[0]
            raise CorruptChunkError(store, chunk, _chunk_key(self.array, chunk), reason) from None

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
