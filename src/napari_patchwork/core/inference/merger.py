"""``GridMerger``: accumulates model outputs over a grid processed in rank order.

Because the patches of a grid are added in lexicographic order and the blending window is
separable, the sum of the windows of the patches done so far is a sum of three separable terms
(full planes, full rows of the current plane, patches of the current row). The merger
therefore keeps no weight volume and spends no pass per patch on weights: it evaluates the
exact weight of any region from 1D vectors, for previews and for the final division.

The rank order also says when rows of the buffer are first and last touched: rows are zeroed
just before the first grid row of patches that reaches them, and divided by their weights as
soon as the next grid row starts past them. Both passes then work on rows still in the cache,
and no pass over the whole buffer is left for the end.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.inference.blending import _WINDOWS_1D, blending_window
from napari_patchwork.core.inference.box import box_view
from napari_patchwork.core.inference.buffers import heap_empty
from napari_patchwork.core.inference.grid import GridPlan, crop_intervals
from napari_patchwork.core.types import TypeTriplet


def _scale(value: int, factor: float) -> int:
    return math.floor(value * factor + 1e-9)


@dataclass(frozen=True)
class _Axis:
    """One axis of the output grid: starts, sizes and 1D weight sums (shared: never modified)."""

    starts: list[int]  # patch starts in output coordinates
    size: int  # output patch size
    length: int  # output axis length
    owned: list[tuple[int, int]]  # crop mode: voxels each start owns
    prefix: torch.Tensor  # (n + 1, length): sum of the windows of the first m starts
    windows: torch.Tensor  # (n, length): the window of start m alone
    #: Per start: the (buffer, patch) slices where its patch lands, and whether the patch
    #: slice is the whole patch.
    placements: list[tuple[slice, slice, bool]]
    inverse: torch.Tensor  # (length,) float32: 1 / the complete weight sum where positive, else 0
    unit: bool  # every inverse is exactly 1 (average blending, patches that do not overlap)


def _axis_plan(
    starts: tuple[int, ...],
    patch: int,
    overlap: int,
    length: int,
    factor: float,
    mode: str,
    input_length: int,
    padded: bool,
) -> _Axis:
    size = round(patch * factor)
    scaled = [_scale(s, factor) for s in starts]
    window = _WINDOWS_1D.get(mode, _WINDOWS_1D["average"])(size)
    owned = []
    if mode == "crop":
        intervals = crop_intervals(input_length, patch, overlap, padded)
        owned = [(_scale(intervals[s][0], factor), _scale(intervals[s][1], factor)) for s in starts]
    windows = torch.zeros(len(starts), length, dtype=torch.float64)
    placements = []
    for m, start in enumerate(scaled):
        lo, hi = max(start, 0), min(start + size, length)
        windows[m, lo:hi] = window[lo - start : hi - start]
        if mode == "crop":
            lo, hi = owned[m]
        placements.append((slice(lo, hi), slice(lo - start, hi - start), hi - lo == size))
    prefix = torch.cat([torch.zeros(1, length, dtype=torch.float64), windows.cumsum(0)])
    inverse = torch.where(prefix[-1] > 0, 1 / prefix[-1], 0).to(torch.float32)
    unit = bool((inverse == 1).all())
    return _Axis(scaled, size, length, owned, prefix, windows, placements, inverse, unit)


#: Bytes of axis plans kept for the next run of the same grid (the widget re-running a grid, a
#: benchmark): the most recently used plans, up to this many bytes of tensors in all; a plan
#: larger than this is planned afresh each run.
AXIS_CACHE_BYTES = 32 << 20
_axis_cache: OrderedDict[tuple[object, ...], tuple[_Axis, int]] = OrderedDict()
_axis_cache_lock = threading.Lock()


def _plan_bytes(axis: _Axis) -> int:
    return sum(t.numel() * t.element_size() for t in (axis.prefix, axis.windows, axis.inverse))


#: ``_axis_plan``'s arguments: starts, patch, overlap, length, factor, mode, input length, padded.
_AxisKey = tuple[tuple[int, ...], int, int, int, float, str, int, bool]


def _planned_axis(key: _AxisKey) -> _Axis:
    """The plan of one axis, from the cache of recent plans when it holds it."""
    with _axis_cache_lock:
        held = _axis_cache.get(key)
        if held is not None:
            _axis_cache.move_to_end(key)
            return held[0]
    axis = _axis_plan(*key)
    size = _plan_bytes(axis)
    if size <= AXIS_CACHE_BYTES:
        with _axis_cache_lock:
            _axis_cache[key] = (axis, size)
            total = sum(bytes_ for _, bytes_ in _axis_cache.values())
            while total > AXIS_CACHE_BYTES:
                _, (_, evicted) = _axis_cache.popitem(last=False)
                total -= evicted
    return axis


#: Bytes of buffer rows normalised at a time (a block stays in the cache while it is
#: multiplied twice and summed; split between the threads, half of a 4 MiB block fits each
#: core's 2 MiB L2 here). 4 MiB measured faster than 1 MiB at 128³, 192³ and 256³ (gaussian
#: identity runs 5.87 → 5.70, 28.3 → 27.2, 64.7 → 63.0 ms, 50 round-robin runs each,
#: 2026-12-07); whole-buffer passes are slower once the output leaves the cache (256³: 7.0 ms
#: against 4.5 ms for the finalize alone).
NORMALISE_BLOCK_BYTES = 4 << 20


def _one_patch_per_voxel(plan: GridPlan) -> bool:
    """Whether no two patches of the grid overlap (overlap 0 and patches that fit exactly).

    Then a weighted blend divides each voxel's one weight by itself: the result is the patch's
    value, exactly as with ``'average'`` (and with no window to read or weight to divide by).
    """
    return all(
        later - earlier >= patch
        for starts, patch in zip(plan.starts, plan.patch_size)
        for earlier, later in zip(starts, starts[1:])
    )


def _outer(i: torch.Tensor, j: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return i[:, None, None] * j[None, :, None] * k[None, None, :]


class GridMerger:
    """Output buffers of one named output over a :class:`GridPlan`.

    Parameters
    ----------
    plan : GridPlan
        The grid (in input coordinates).
    mode : {'crop', 'average', 'hann', 'gaussian'}
        Overlap mode.
    channels : int
        Output channels.
    output_patch : tuple of 3 int
        Spatial size of the model's output patches (an integer multiple or divisor of the patch).
    device : torch.device
        Where the buffer lives.

    Notes
    -----
    Patches must be added in rank order. Mid-run, :attr:`values` holds finished rows
    (already divided by their weights), sums in the rows the current grid row reaches, and
    uninitialised memory below; :meth:`normalized` reads it correctly, :meth:`finalize`
    finishes it. ``mode`` becomes ``'average'`` on a grid where no two patches overlap.

    Examples
    --------
    >>> plan = GridPlan((6, 6, 6), (4, 4, 4), (2, 2, 2))
    >>> merger = GridMerger(plan, "hann", 1, (4, 4, 4), torch.device("cpu"))
    >>> volume = torch.rand(1, 6, 6, 6)
    >>> for rank in range(len(plan)):
    ...     location = plan.location(rank)
    ...     merger.add(volume[(slice(None), *location.to_slices())][None], rank)
    >>> torch.allclose(merger.finalize(), volume)
    True
    """

    def __init__(
        self,
        plan: GridPlan,
        mode: str,
        channels: int,
        output_patch: TypeTriplet,
        device: torch.device,
    ) -> None:
        if mode in ("hann", "gaussian") and _one_patch_per_voxel(plan):
            mode = "average"  # every voxel from one patch: any blend is that patch's value
        self.plan, self.mode = plan, mode
        self.output_patch = tuple(output_patch)
        self.next_rank = 0  # patches before this rank are merged (a retried batch skips them)
        self.factor = tuple(q / p for q, p in zip(output_patch, plan.patch_size))
        self.shape = tuple(int(s * f) for s, f in zip(plan.spatial_shape, self.factor))
        self.axes = [  # cached: a run of the same grid again (the widget, a benchmark) reuses them
            _planned_axis((tuple(starts), p, o, length, f, mode, s, plan.padded))
            for starts, p, o, length, f, s in zip(
                plan.starts,
                plan.patch_size,
                plan.patch_overlap,
                self.shape,
                self.factor,
                plan.spatial_shape,
            )
        ]
        self.values = self._allocate(channels, device)
        self.patch_shape = (channels, *self.output_patch)  # (C, I', J', K') of one output patch
        self._per_row = plan.counts[1] * plan.counts[2]  # patches in a grid row
        self._placements = [axis.placements for axis in self.axes]
        self._row = -1  # the grid row (first axis) of the last patch added
        self._zeroed_rows = 0  # buffer rows before this are zeroed (and hold sums or results)
        self._final_rows = 0  # buffer rows before this are divided by their weights: final
        self._block_sums: list[torch.Tensor] = []  # a sum per normalised block (the NaN check)
        self._summed_rows = 0  # the block sums cover the rows before this
        #: 1/F_i and 1/F_j ⊗ 1/F_k, each None where it is all ones; None until first needed.
        self._factors: tuple[torch.Tensor | None, torch.Tensor | None] | None = None
        self.window = (
            None
            if mode in ("crop", "average")
            else blending_window(mode, output_patch, torch.float32, str(device))
        )

    def _allocate(self, channels: int, device: torch.device) -> torch.Tensor:
        """The uninitialised buffer (rows are zeroed as the grid reaches them)."""
        if device.type != "cpu":
            return torch.empty((channels, *self.shape), dtype=torch.float32, device=device)
        return heap_empty((channels, *self.shape))

    def to(self, device: torch.device) -> None:
        """Move the buffer (e.g. to the CPU after a GPU out-of-memory error)."""
        self.values = self.values.to(device)
        self._factors = None
        self._block_sums = [total.to(device) for total in self._block_sums]
        if self.window is not None:
            self.window = self.window.to(device)

    def add(self, outputs: torch.Tensor, first_rank: int) -> None:
        """Add ``(B, C, I', J', K')`` outputs of the patches of ranks ``first_rank …``."""
        outputs = outputs.to(self.values.device, torch.float32, non_blocking=True)
        crop, window = self.mode == "crop", self.window
        per_row, per_column = self._per_row, self.plan.counts[2]
        along_i, along_j, along_k = self._placements
        for offset, patch in enumerate(outputs.unbind(0)):
            rank = first_rank + offset
            if rank < self.next_rank:
                continue
            row, rest = divmod(rank, per_row)  # plan.unravel, inlined: this loop is per patch
            (ti, si, wi), (tj, sj, wj), (tk, sk, wk) = (
                along_i[row],
                along_j[rest // per_column],
                along_k[rest % per_column],
            )
            region = self._buffer_region(row, (ti, tj, tk))
            whole = wi and wj and wk
            part = patch if whole else patch[:, si, sj, sk]
            if crop:
                region.copy_(part)
            elif window is None:
                region.add_(part)
            else:
                region.addcmul_(part, window if whole else window[:, si, sj, sk])
            self.next_rank = rank + 1

    def _buffer_region(self, row: int, target: tuple[slice, ...]) -> torch.Tensor:
        """The part of the buffer where a patch of this grid row lands at ``target`` (output
        coordinates).

        The first patch of a grid row first finishes the rows before the row's start (no
        later patch reaches them) and zeroes the rows the grid row reaches for the first time.
        """
        if row != self._row:
            axis = self.axes[0]
            start = axis.starts[row]
            self._normalise_rows(max(start, 0))
            self._zero_rows(min(start + axis.size, axis.length))
            self._row = row  # last: a batch retried after an error here does both again
        ti, tj, tk = target
        return box_view(
            self.values,
            (ti.start, tj.start, tk.start),
            (ti.stop - ti.start, tj.stop - tj.start, tk.stop - tk.start),
        )

    def _inverse_axes(self) -> list[torch.Tensor]:
        """Per axis, ``1 / F`` where the complete 1D weight sum ``F`` is positive, else 0."""
        return [axis.inverse.to(self.values.device) for axis in self.axes]

    def _zero_rows(self, stop: int) -> None:
        """Zero the buffer rows ``[zeroed, stop)`` (just before the first patch reaches them)."""
        if stop > self._zeroed_rows:
            self.values[:, self._zeroed_rows : stop].zero_()
            self._zeroed_rows = stop

    def _normalise_rows(self, stop: int) -> None:
        """Divide the finished rows ``[final, stop)`` by their weights, in place.

        With every patch reaching them done, the weight of these rows is exactly
        ``F_i ⊗ F_j ⊗ F_k``: each block of rows (about :data:`NORMALISE_BLOCK_BYTES`) is
        multiplied by the ``(J, K)`` plane ``1/F_j ⊗ 1/F_k``, by its ``1/F_i`` and summed
        while it is in the cache, no weight volume built.
        """
        start = self._final_rows
        if stop <= start:
            return
        if self.mode == "crop":
            self._final_rows = self._summed_rows = stop
            return
        if self._factors is None:
            along_i, along_j, along_k = self._inverse_axes()
            unit_i, unit_j, unit_k = (axis.unit for axis in self.axes)
            self._factors = (  # a factor of ones is left out (no pass multiplying by 1)
                None if unit_i else along_i,
                None if unit_j and unit_k else along_j[:, None] * along_k[None, :],
            )
        inverse_i, plane = self._factors
        channels = self.values.shape[0]
        step = max(1, NORMALISE_BLOCK_BYTES // max(1, channels * self.shape[1] * self.shape[2] * 4))
        for first in range(start, stop, step):
            last = min(first + step, stop)
            block = self.values[:, first:last]
            if plane is not None:
                block.mul_(plane)
            if inverse_i is not None:
                block.mul_(inverse_i[first:last, None, None])
            self._final_rows = last  # before the sum: a retry must not divide this block again
            self._block_sums.append(block.sum())
            self._summed_rows = last

    def region(self, rank: int) -> tuple[slice, slice, slice]:
        """The output voxels the patch of this rank touches."""
        a, b, c = (
            slice(max(ax.starts[i], 0), min(ax.starts[i] + ax.size, ax.length))
            for ax, i in zip(self.axes, self.plan.unravel(rank))
        )
        return (a, b, c)

    def weights(self, done: int, box: tuple[slice, ...]) -> torch.Tensor:
        """Exact sum of the windows of the first ``done`` patches over ``box`` (I', J', K')."""
        a, b, c = self.plan.unravel(done)
        ax_i, ax_j, ax_k = self.axes
        si, sj, sk = box
        full_j, full_k = ax_j.prefix[-1, sj], ax_k.prefix[-1, sk]
        total = _outer(ax_i.prefix[a, si], full_j, full_k)
        if a < len(ax_i.starts):
            window_i = ax_i.windows[a, si]
            total += _outer(window_i, ax_j.prefix[b, sj], full_k)
            total += _outer(window_i, ax_j.windows[b, sj], ax_k.prefix[c, sk])
        return total.to(torch.float32)

    def normalized(self, done: int, box: tuple[slice, ...]) -> torch.Tensor:
        """A new ``(C, *box)`` tensor: the aggregate of the first ``done`` patches so far.

        Valid for the patches added so far (``done`` the number added): rows already final
        are copied, rows no patch has reached are 0.
        """
        values = self.values[(slice(None), *box)]
        low, high, _ = box[0].indices(self.shape[0])
        final = min(max(self._final_rows - low, 0), values.shape[1])  # box rows already final
        zeroed = min(max(self._zeroed_rows - low, 0), values.shape[1])  # box rows ever reached
        if self.mode == "crop":
            result = values.clone()
        else:
            weight = self.weights(done, box).to(values.device)
            weight[:final] = 1
            result = torch.where(weight > 0, values / weight, torch.zeros((), device=values.device))
        result[:, zeroed:] = 0
        return result

    def finalize(self) -> torch.Tensor:
        """Normalise the rows not yet final, in place, and return the buffer (call it once
        every patch is added; again, it returns the same buffer).

        Rows are normalised as the grid passes them (:meth:`_normalise_rows`); what is left
        here is the last grid row's rows.
        """
        self._zero_rows(self.shape[0])  # rows no patch reaches (none on a covering grid)
        self._normalise_rows(self.shape[0])
        return self.values

    def all_finite(self) -> bool:
        """Whether the finalized buffer holds no NaN or infinity.

        Cheap after :meth:`finalize`: a finite sum of a block means every value in it is
        finite; only where a sum is not (NaN, infinity or an overflow) is the buffer read.
        """
        summed = self._summed_rows == self.shape[0]  # a sum per block (none lost to an error)
        if summed and self._block_sums:
            if bool(torch.isfinite(torch.stack(self._block_sums)).all()):
                return True
        return bool(torch.isfinite(self.values).all())

    def location(self, rank: int) -> PatchLocation:
        """The patch's location in input coordinates."""
        return self.plan.location(rank)
