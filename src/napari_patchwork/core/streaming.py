"""Out-of-core outputs: finished rows of the aggregate go to an array on disk as they complete.

Patches run in rank order, first axis slowest. When the first patch of grid row ``a + 1``
arrives, no later patch touches output rows before ``start[a + 1]``: they are final, so they
are normalised (with the exact 1D weight sums) and written out, and the buffer slides on. The
buffer holds one patch height of rows, so memory is bounded by a slab, whatever the volume.

A run can also cover a block of rows only (a ``dask`` task): it runs exactly the patches that
touch the block, in the same order and with the same weights as a whole-volume run, and
writes only the block's rows, so blocks put together equal the single-process result.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._validation import to_triplet
from .grid import GridPlan
from .merger import GridMerger
from .postprocess import to_labels
from .types import TypeTriplet


@dataclass(frozen=True)
class StreamTarget:
    """Where a streamed run writes, and which rows.

    Attributes
    ----------
    create : callable
        ``create(channels, output_shape)`` returns the sink: an array-like ``(C, I', J', K')``
        supporting ``sink[:, rows] = numpy_array`` (a zarr array, a numpy memmap…).
    rows : tuple of 2 int, optional
        Input rows ``[start, stop)`` of the first axis to produce (default: all).
    transform : callable, optional
        Applied to each slab of finished ``(C, rows, J', K')`` outputs before writing (e.g.
        :func:`labels_of_slab`, to write label maps instead of raw outputs).
    """

    create: Callable[[int, tuple[int, int, int]], Any]
    rows: tuple[int, int] | None = None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


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


class StreamingMerger(GridMerger):
    """A :class:`GridMerger` keeping one patch height of rows, writing finished rows to a sink.

    Examples
    --------
    >>> import numpy as np
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
        sink: Any,
        rows: tuple[int, int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self._channels = channels
        super().__init__(plan, mode, channels, output_patch, device)
        factor = self.factor[0]
        low, high = rows if rows is not None else (0, plan.spatial_shape[0])
        self.write_rows = (int(low * factor + 1e-9), min(int(high * factor + 1e-9), self.shape[0]))
        self.sink, self.transform = sink, transform
        first = block_ranks(plan, rows).start
        self.base = max(self.axes[0].starts[plan.unravel(first)[0]], 0)
        self.current_row = plan.unravel(first)[0]

    def _allocate(self, channels: int, device: torch.device) -> torch.Tensor:
        rows = min(round(self.plan.patch_size[0] * self.factor[0]), self.shape[0])
        return torch.zeros((channels, rows, *self.shape[1:]), dtype=torch.float32, device=device)

    def _buffer_region(self, rank: int, target: tuple[slice, ...]) -> torch.Tensor:
        row = self.plan.unravel(rank)[0]
        if row != self.current_row:  # rows before this grid row's start are final
            self._flush(max(self.axes[0].starts[row], 0))
            self.current_row = row
        rows = slice(target[0].start - self.base, target[0].stop - self.base)
        return self.values[(slice(None), rows, *target[1:])]

    def _flush(self, upto: int) -> None:
        """Normalise rows ``[base, upto)``, write those in ``write_rows``, slide the buffer."""
        count = upto - self.base
        if count <= 0:
            return
        finished = self.values[:, :count]
        if self.mode != "crop":
            finished = finished * self._inverse_weight(self.base, upto)
        low, high = max(self.base, self.write_rows[0]), min(upto, self.write_rows[1])
        if low < high:
            part = finished[:, low - self.base : high - self.base]
            if self.transform is not None:
                part = self.transform(part)
            self.sink[:, low:high] = part.cpu().numpy()
        kept = self.values.shape[1] - count
        if kept > 0:
            self.values[:, :kept] = self.values[:, count:].clone()
        self.values[:, max(kept, 0) :] = 0
        self.base = upto

    def _inverse_weight(self, start: int, stop: int) -> torch.Tensor:
        inverse = self._inverse_axes()
        plane = inverse[1][:, None] * inverse[2][None, :]  # same products as GridMerger.finalize
        return inverse[0][start:stop, None, None] * plane

    def finalize(self, slab: int = 8) -> None:  # type: ignore[override]
        """Write the remaining rows (call once every patch of the block is added)."""
        self._flush(min(self.base + self.values.shape[1], self.shape[0]))

    def normalized(self, done: int, box: tuple[slice, ...]) -> torch.Tensor:
        raise RuntimeError("streamed outputs have no in-memory preview; read the sink")


def labels_of_slab(outputs: torch.Tensor) -> torch.Tensor:
    """``(1, rows, J, K)`` uint8 labels of a slab of raw outputs (argmax, or logit > 0)."""
    return to_labels(outputs).to(torch.uint8)[None]


def zarr_target(
    path: str | os.PathLike[str],
    rows: tuple[int, int] | None = None,
    chunks: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    labels: bool = False,
) -> StreamTarget:
    """A :class:`StreamTarget` creating (or, for a block, opening) a zarr array: float32 raw
    outputs, or with ``labels`` a one-channel uint8 label map."""

    def create(channels: int, shape: tuple[int, int, int]) -> Any:
        channels = 1 if labels else channels
        import zarr

        if rows is not None:  # a block of a run whose array already exists
            return zarr.open_array(str(path), mode="r+")
        if os.path.exists(path) and not overwrite:
            raise ValueError(f"output exists: '{path}' (pass overwrite=True to replace it)")
        return zarr.create_array(
            str(path),
            shape=(channels, *shape),
            chunks=(
                channels,
                *(to_triplet(chunks, "output_chunks") if chunks else default_chunks(shape)),
            ),
            dtype="uint8" if labels else "float32",
            overwrite=True,
        )

    return StreamTarget(create, rows, labels_of_slab if labels else None)


def default_chunks(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """64³ chunks (or the whole axis when shorter)."""
    return tuple(min(64, s) for s in shape[-3:])  # type: ignore[return-value]
