"""Out-of-core outputs: finished rows of the aggregate go to an array on disk as they complete.

Patches run in rank order, first axis slowest. When the first patch of grid row ``a + 1``
arrives, no later patch touches output rows before ``start[a + 1]``: they are final, so they
are normalised in place (with the exact 1D weight sums) and written out, and the buffer slides
on. Writes cover whole chunk bands of the output whenever the buffer can hold the finished
rows until their band is complete (by default the output's chunk rows follow the grid step,
so every write but possibly the last is whole chunks and zarr never reads a chunk back). The
buffer holds one patch height of rows plus an eighth, whatever the volume. Each write covers
one chunk band, one chunk (:data:`WRITE_CHUNKS`) per assignment, so that zarr holds one chunk
in flight; the blending window is built row by row (no 45 MiB of temporaries, see
:func:`~napari_patchwork.core.inference.blending.blending_window`); a streamed run also has
glibc unmap freed large blocks (:func:`return_freed_memory`), which its codec threads and the
model would otherwise keep.

The merger writes to any :class:`RowSink` (``sink[:, rows] = array``) that an
:class:`OutputStore` creates; this module does not know zarr. :func:`zarr_target` streams to
:class:`napari_patchwork.io.zarr_io.ZarrOutput`, which writes under a temporary name beside
the target (``.out.zarr.partial-<pid>``) and renames the store when the run completes; a
failed or cancelled run removes it, so nothing at the output path is ever half-written.

A run can also cover a block of rows only (a ``dask`` task): it runs exactly the patches that
touch the block, in the same order and with the same weights as a whole-volume run, and
writes only the block's rows, so blocks put together equal the single-process result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from napari_patchwork.core._validation import to_triplet
from napari_patchwork.core.allocator import M_MMAP_THRESHOLD, set_malloc_option
from napari_patchwork.core.inference.grid import GridPlan
from napari_patchwork.core.inference.merger import GridMerger
from napari_patchwork.core.inference.postprocess import ACTIVATIONS, to_labels, to_probabilities
from napari_patchwork.core.types import TypeTriplet
from napari_patchwork.io.zarr_io import ZarrOutput

Transform = Callable[[torch.Tensor], torch.Tensor]

#: Set to False before a run to leave glibc's malloc as it is (see :func:`return_freed_memory`).
TUNE_ALLOCATOR = True
_MMAP_THRESHOLD = 256 * 1024
_tuned = False


def return_freed_memory() -> bool:
    """Have glibc return freed blocks of 256 KiB and more to the system (once per process).

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after
    which such blocks come from heaps that are only given back from the top: zarr's decoding
    threads (one heap each) and the model's activations then keep 70–170 MiB that nothing
    uses, more than half a slab. A streamed run therefore calls ``mallopt(M_MMAP_THRESHOLD,
    256 KiB)``, what ``MALLOC_MMAP_THRESHOLD_=262144`` does at start-up; it holds for the rest
    of the process (blocks of 256 KiB and more are mapped and unmapped each time).

    Nothing is changed when :data:`TUNE_ALLOCATOR` is False, when the environment sets
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or a
    ``glibc.malloc`` tunable (the user chose), or off glibc (``mallopt`` missing or refusing).

    Returns
    -------
    bool
        Whether the threshold is set (by this call or an earlier one).
    """
    global _tuned
    if _tuned or not TUNE_ALLOCATOR:
        return _tuned
    _tuned = set_malloc_option(M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    return _tuned


class RowSink(Protocol):
    """What a streamed output is written to: ``sink[:, rows] = numpy_array``.

    A zarr array, a numpy memmap or array… An optional ``chunks`` (or ``shards``) tuple
    tells the merger which row bands to write whole.
    """

    def __setitem__(self, index: Any, value: np.ndarray) -> None: ...


class OutputStore(Protocol):
    """Creates the sinks of one streamed run, and finishes or removes them.

    :class:`napari_patchwork.io.zarr_io.ZarrOutput` is the zarr implementation.
    """

    def create(
        self, channels: int, shape: tuple[int, int, int], name: str | None, chunk_rows: int
    ) -> RowSink:
        """The sink of output ``name``: ``(channels, *shape)``."""

    def commit(self, names: Sequence[str | None]) -> dict[str | None, Any]:
        """Called once every row is written: the finished outputs by name."""

    def discard(self) -> None:
        """Called when the run fails or is cancelled."""


@dataclass(frozen=True)
class StreamTarget:
    """Where a streamed run writes, and which rows.

    Attributes
    ----------
    create : callable
        ``create(channels, output_shape, name, chunk_rows)`` returns the sink of one output:
        an array-like ``(C, I', J', K')`` supporting ``sink[:, rows] = numpy_array`` (a zarr
        array, a numpy memmap…). ``name`` is None for a model returning one tensor, else the
        key of the model's dict; ``chunk_rows`` is the row chunking that keeps every write
        on whole chunks (a suggestion: a sink may use its own).
    rows : tuple of 2 int, optional
        Input rows ``[start, stop)`` of the first axis to produce (default: all).
    transform : callable, optional
        Applied to finished ``(C, rows, J', K')`` outputs (a few rows at a time) before
        writing (e.g. :func:`labels_of_slab`, to write label maps instead of raw outputs).
    commit : callable, optional
        ``commit(names)`` is called once when every row is written; it returns the finished
        outputs by name (e.g. the renamed zarr arrays).
    discard : callable, optional
        Called when the run fails or is cancelled (e.g. removes a partial zarr store).
    """

    create: Callable[[int, tuple[int, int, int], str | None, int], RowSink]
    rows: tuple[int, int] | None = None
    transform: Transform | None = None
    commit: Callable[[list[str | None]], dict[str | None, Any]] | None = None
    discard: Callable[[], None] | None = None


def block_ranks(plan: GridPlan, rows: tuple[int, int] | None) -> range:
    """Ranks of the patches touching input rows ``[start, stop)`` (all ranks for None)."""
    if rows is None:
        return range(len(plan))
    start, stop = rows
    size = plan.patch_size[0]
    touching = [a for a, s in enumerate(plan.starts[0]) if s < stop and s + size > start]
    if not touching:
        raise ValueError(f"rows {rows} are outside the volume of {plan.spatial_shape[0]} rows")
    per_row = plan.counts[1] * plan.counts[2]
    return range(touching[0] * per_row, (touching[-1] + 1) * per_row)


def aligned_chunk_rows(starts: list[int], length: int) -> int:
    """Output chunk rows on which every flush but the last falls (grid starts in output rows).

    The greatest common divisor of the inner row starts, when between 16 and 128 rows
    (halved while larger); otherwise 64 (or the whole axis when shorter).

    Examples
    --------
    >>> aligned_chunk_rows([0, 48, 96, 144, 160], 224), aligned_chunk_rows([-8, 40, 88, 96], 150)
    (48, 64)
    """
    inner = [s for s in starts[1:-1] if 0 < s < length]
    rows = math.gcd(*inner) if inner else 0
    while rows > 128 and rows % 2 == 0:
        rows //= 2
    return rows if 16 <= rows <= 128 else min(64, length)


#: Chunks written by one assignment. zarr encodes the chunks of one assignment concurrently,
#: each with its encoded bytes (and, for a partly written chunk, the chunk read back): one at a
#: time holds the least (two measured 2–6 MiB more on a 256² cross-section). Raise it to
#: encode on more cores at once.
WRITE_CHUNKS = 1


def _pieces(sink: Any, plane: tuple[int, ...], most: int) -> list[tuple[slice, slice]]:
    """In-plane ``(columns, depth)`` pieces of whole chunks (shards), at most ``most`` each.

    One piece (the whole plane) for sinks without chunks or planes of at most ``most``.

    Examples
    --------
    >>> class Sink:
    ...     chunks = (1, 8, 4, 4)
    >>> [(j.start, j.stop, k.start, k.stop) for j, k in _pieces(Sink(), (8, 16), 4)]
    [(0, 4, 0, 16), (4, 8, 0, 16)]
    >>> len(_pieces(Sink(), (8, 16), 8)), len(_pieces(Sink(), (8, 16), 2))
    (1, 4)
    """
    chunks = getattr(sink, "shards", None) or getattr(sink, "chunks", None)
    whole = [(slice(None), slice(None))]
    if not isinstance(chunks, tuple) or len(chunks) < 4 or most <= 0:
        return whole
    (columns, depth), (width, height) = plane[:2], (int(chunks[2]), int(chunks[3]))
    across = math.ceil(depth / height)
    if math.ceil(columns / width) * across <= most:
        return whole
    if across >= most:  # pieces along both axes
        step_j, step_k = width, height * most
    else:
        step_j, step_k = width * max(1, most // across), depth
    return [
        (slice(j, min(j + step_j, columns)), slice(k, min(k + step_k, depth)))
        for j in range(0, columns, step_j)
        for k in range(0, depth, step_k)
    ]


def _has_chunks(sink: Any) -> bool:
    """Whether the sink is chunked (zarr, h5py…), not a plain array."""
    return any(
        isinstance(getattr(sink, name, None), tuple) and len(getattr(sink, name)) >= 2
        for name in ("shards", "chunks")
    )


def _chunk_rows(sink: Any) -> int:
    """Rows of a sink's chunks (or shards) along the first spatial axis; 1 for plain arrays."""
    for name in ("shards", "chunks"):
        value = getattr(sink, name, None)
        if isinstance(value, tuple) and len(value) >= 2:
            return int(value[1])
    return 1


class StreamingMerger(GridMerger):
    """A :class:`GridMerger` keeping one patch height of rows, writing finished rows to a sink.

    Examples
    --------
    >>> plan = GridPlan((8, 4, 4), (4, 4, 4), (2, 0, 0))
    >>> sink = np.zeros((1, 8, 4, 4), np.float32)
    >>> merger = StreamingMerger(plan, "average", 1, (4, 4, 4), torch.device("cpu"), sink)
    >>> merger.add(torch.ones(len(plan), 1, 4, 4, 4), 0)
    >>> merger.finalize()
    >>> bool((sink == 1).all())
    True
    """

    def __init__(
        self,
        plan: GridPlan,
        mode: str,
        channels: int,
        output_patch: TypeTriplet,
        device: torch.device,
        sink: RowSink,
        rows: tuple[int, int] | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.sink = sink
        super().__init__(plan, mode, channels, output_patch, device)
        factor = self.factor[0]
        low, high = rows if rows is not None else (0, plan.spatial_shape[0])
        self.write_rows = (int(low * factor + 1e-9), min(int(high * factor + 1e-9), self.shape[0]))
        self.sink, self.transform = sink, transform
        self.chunk_rows = _chunk_rows(sink)
        first = block_ranks(plan, rows).start
        self.base = max(self.axes[0].starts[plan.unravel(first)[0]], 0)
        self.current_row = plan.unravel(first)[0]
        self.rows_written: list[tuple[int, int]] = []  # what each write covered (measurable)
        self._plane: torch.Tensor | None = None
        self._inverse: list[torch.Tensor] = []
        self._normalised = self.base  # rows before this are divided by their weights
        self._pieces = _pieces(sink, self.shape[1:], WRITE_CHUNKS)
        # Chunked sinks get one chunk band per assignment even when a band is one piece (whole
        # planes): one assignment of many bands had zarr encode up to 10 chunks at once.
        self._chunked = _has_chunks(sink)
        self._finished = False

    def _allocate(self, channels: int, device: torch.device) -> torch.Tensor:
        rows = min(self._capacity(), self.shape[0])
        return torch.zeros((channels, rows, *self.shape[1:]), dtype=torch.float32, device=device)

    def _capacity(self) -> int:
        """One patch height of rows, plus what holding rows for whole chunk bands needs (if
        that is at most an eighth more)."""
        axis, rows = self.axes[0], _chunk_rows(self.sink)
        needs = [axis.size]
        for start in axis.starts[1:]:
            upto = max(start, 0)
            needs.append(min(start + axis.size, axis.length) - (upto - upto % rows))
        return max(need for need in needs if need <= axis.size + axis.size // 8)

    def _buffer_region(self, row: int, target: tuple[slice, ...]) -> torch.Tensor:
        if row != self.current_row:  # rows before this grid row's start are final
            start = self.axes[0].starts[row]
            self._flush(max(start, 0), min(start + self.axes[0].size, self.shape[0]))
            self.current_row = row
        rows = slice(target[0].start - self.base, target[0].stop - self.base)
        return self.values[(slice(None), rows, *target[1:])]

    def _flush(self, upto: int, next_top: int | None = None) -> None:
        """Rows before ``upto`` are final: normalise, write whole chunk bands, slide.

        ``next_top`` is the end of the rows the next grid row touches (None at the end).
        """
        if upto <= self.base:
            return
        self._normalise(upto)
        cut = upto
        if next_top is not None and self.chunk_rows > 1:
            aligned = max(upto - upto % self.chunk_rows, self.base)
            if next_top - aligned <= self.values.shape[1]:
                cut = aligned  # hold the finished rows of a partly finished chunk band
        self._write(self.base, cut)
        self._slide(cut - self.base)
        self.base = cut

    def to(self, device: torch.device) -> None:
        """Move the buffer (the weight vectors follow at the next flush)."""
        super().to(device)
        self._plane = None

    def _normalise(self, upto: int) -> None:
        """Divide the rows ``[normalised, upto)`` by their weights, in place, row by row."""
        done = max(self._normalised, self.base)
        if self.mode != "crop":
            if self._plane is None:
                self._inverse = self._inverse_axes()
                self._plane = self._inverse[1][:, None] * self._inverse[2][None, :]
            for row in range(done, upto):  # the same two products as GridMerger._normalise_rows
                self.values[:, row - self.base].mul_(self._plane).mul_(self._inverse[0][row])
        self._normalised = upto

    def _write(self, start: int, stop: int) -> None:
        low, high = max(start, self.write_rows[0]), min(stop, self.write_rows[1])
        if low >= high:
            return
        band, top = (self.chunk_rows if self._chunked else high), low
        while top < high:  # one chunk band, a few chunks at a time
            bottom = min(top - top % band + band, high)
            part = self.values[:, top - self.base : bottom - self.base]
            for columns, depth in self._pieces:
                piece = part[:, :, columns, depth]
                if self.transform is not None:
                    value = _transformed(piece, self.transform)
                else:
                    value = piece.cpu().numpy()
                self.sink[:, top:bottom, columns, depth] = value
            top = bottom
        self.rows_written.append((low, high))

    def _slide(self, count: int) -> None:
        """Move the rows after ``count`` to the front (row by row: no second buffer)."""
        if count <= 0:
            return
        rows = self.values.shape[1]
        for row in range(rows - count):
            self.values[:, row].copy_(self.values[:, row + count])
        self.values[:, max(rows - count, 0) :].zero_()

    def finalize(self, slab: int = 8) -> None:  # type: ignore[override]
        """Write the remaining rows (call once every patch of the block is added)."""
        if not self._finished:
            self._flush(min(self.base + self.values.shape[1], self.shape[0]))
            self._finished = True

    def normalized(self, done: int, box: tuple[slice, ...]) -> torch.Tensor:
        raise RuntimeError("streamed outputs have no in-memory preview; read the sink")


def _transformed(part: torch.Tensor, transform: Transform, rows: int = 4) -> np.ndarray:
    """``transform`` applied a few rows at a time (its temporaries stay small)."""
    out: np.ndarray | None = None
    for start in range(0, part.shape[1], rows):
        piece = transform(part[:, start : start + rows]).cpu().numpy()
        if out is None:
            out = np.empty((piece.shape[0], part.shape[1], *piece.shape[2:]), piece.dtype)
        out[:, start : start + rows] = piece
    assert out is not None
    return out


def labels_of_slab(outputs: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """``(1, rows, J, K)`` uint8 labels of a slab of raw outputs (argmax, or logit > 0).

    The activation does not change an argmax; it sets the one-channel threshold (logit > 0,
    or probability > 0.5 with ``'none'``).

    Examples
    --------
    >>> labels_of_slab(torch.tensor([[[[0.2]]], [[[0.9]]]])).tolist()
    [[[[1]]]]
    """
    return to_labels(outputs, activation).to(torch.uint8)[None]


def _transform_of(labels: bool, activation: str | None) -> Transform | None:
    if labels:
        return lambda outputs: labels_of_slab(outputs, activation or "softmax")
    if activation is not None and activation != "none":
        return lambda outputs: to_probabilities(outputs, activation)
    return None


def _check_activation(activation: str | None) -> None:
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {activation!r}")


def zarr_target(
    path: str | os.PathLike[str],
    rows: tuple[int, int] | None = None,
    chunks: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    labels: bool = False,
    activation: str | None = None,
) -> StreamTarget:
    """A :class:`StreamTarget` writing a new zarr store (or, for a block, an existing one).

    Parameters
    ----------
    path : path
        The output store. A model returning one tensor writes a ``(C, I, J, K)`` array there;
        a model returning a dict writes a group with one array per key.
    rows : tuple of 2 int, optional
        Only these input rows (a block of a dask run): the store exists, and is written in
        place (the dask engine renames it when every block is done).
    chunks : tuple of 3 int, optional
        Spatial chunks (default: rows on the grid step, 64 in-plane).
    overwrite : bool
        Replace an existing store once the new one is complete.
    labels : bool
        Write a one-channel uint8 label map (argmax, or logit > 0) instead of raw outputs.
    activation : {'softmax', 'sigmoid', 'none'}, optional
        Write probabilities instead of raw outputs; with ``labels``, the one-channel
        threshold (see :func:`labels_of_slab`).

    Raises
    ------
    ValueError
        If ``path`` exists and ``overwrite`` is False.
    """
    _check_activation(activation)  # before the store checks its path
    return store_target(
        ZarrOutput(
            path,
            existing=rows is not None,
            chunks=to_triplet(chunks, "output_chunks") if chunks else None,
            overwrite=overwrite,
            labels=labels,
        ),
        rows,
        labels,
        activation,
    )


def store_target(
    store: OutputStore,
    rows: tuple[int, int] | None = None,
    labels: bool = False,
    activation: str | None = None,
) -> StreamTarget:
    """A :class:`StreamTarget` writing into the sinks ``store`` creates.

    Parameters
    ----------
    store : OutputStore
        Creates the sinks, then commits (or discards) them.
    rows : tuple of 2 int, optional
        Only these input rows (a block of a larger run).
    labels : bool
        Write one-channel uint8 label maps (argmax, or logit > 0) instead of raw outputs
        (``store`` must create uint8 one-channel sinks then).
    activation : {'softmax', 'sigmoid', 'none'}, optional
        Write probabilities instead of raw outputs; with ``labels``, the one-channel
        threshold (see :func:`labels_of_slab`).

    Raises
    ------
    ValueError
        If ``activation`` is not one of the activations.

    Examples
    --------
    >>> class Memory:
    ...     def create(self, channels, shape, name, chunk_rows):
    ...         self.array = np.zeros((channels, *shape), np.float32)
    ...         return self.array
    ...     def commit(self, names):
    ...         return {name: self.array for name in names}
    ...     def discard(self):
    ...         pass
    >>> target = store_target(Memory(), activation="sigmoid")
    >>> target.create(1, (2, 2, 2), None, 2).shape
    (1, 2, 2, 2)
    """
    _check_activation(activation)
    return StreamTarget(
        store.create, rows, _transform_of(labels, activation), store.commit, store.discard
    )
