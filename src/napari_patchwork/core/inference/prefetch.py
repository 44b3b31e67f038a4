"""``Prefetcher``: gathers the next batch (and copies it to the device) while the model runs.

On an accelerator a worker thread gathers batch n + 1 into a second (pinned) buffer while the
model runs on batch n; on the CPU batches are gathered in the calling thread, one buffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.inference.buffers import keep_batch_buffer, take_batch_buffer
from napari_patchwork.core.inference.grid import GridPlan
from napari_patchwork.core.inference.patches import PatchGatherer


class Prefetcher:
    """Gathers batch n + 1 (and copies it to the device) while the model runs on batch n.

    Parameters
    ----------
    gatherer : PatchGatherer
        Cuts the patches out of the volume.
    plan : GridPlan
        The grid, in rank order.
    batch_size : int
        Patches per batch.
    device : torch.device
        Where the batches go.
    ranks : range, optional
        The ranks to gather (default: the whole grid).

    Examples
    --------
    >>> plan = GridPlan((4, 4, 4), (2, 2, 2))
    >>> gatherer = PatchGatherer(torch.rand(1, 4, 4, 4))
    >>> with Prefetcher(gatherer, plan, 3, torch.device("cpu")) as batches:
    ...     [(first, stop, tuple(batch.shape)) for first, stop, _, batch in batches][-1]
    (6, 8, (2, 1, 2, 2, 2))
    """

    def __init__(
        self,
        gatherer: PatchGatherer,
        plan: GridPlan,
        batch_size: int,
        device: torch.device,
        ranks: range | None = None,
    ) -> None:
        self.gatherer, self.plan, self.device = gatherer, plan, device
        ranks = range(len(plan)) if ranks is None else ranks
        self.ranges = [
            (f, min(f + batch_size, ranks.stop)) for f in range(ranks.start, ranks.stop, batch_size)
        ]
        shape = (min(batch_size, len(plan)), gatherer.volume.shape[0], *plan.patch_size)
        if device.type == "cpu":  # one buffer: a batch is used before the next is gathered
            self.buffers = [take_batch_buffer(shape)]  # the last run's, its pages already there
        else:
            pin = device.type == "cuda"
            self.buffers = [
                torch.empty(shape, dtype=torch.float32, pin_memory=pin) for _ in range(2)
            ]
        self.events: list[Any] = [None, None]
        self.inference_mode = torch.is_inference_mode_enabled()  # thread-local: mirror the caller's
        self.executor = (
            ThreadPoolExecutor(1, thread_name_prefix="patchwork-prefetch")
            if device.type != "cpu"
            else None
        )

    def _prepare(self, index: int) -> tuple[list[PatchLocation], torch.Tensor]:
        first, stop = self.ranges[index]
        slot = index % len(self.buffers)
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the device copy from this buffer has finished
        locations = self.plan.locations(first, stop)
        if torch.is_inference_mode_enabled() == self.inference_mode:  # the caller's thread
            batch = self.gatherer.gather(locations, out=self.buffers[slot])
        else:
            with torch.inference_mode(self.inference_mode):
                batch = self.gatherer.gather(locations, out=self.buffers[slot])
        if self.device.type == "cpu":
            return locations, batch
        moved = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self.events[slot] = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self.events[slot].record()
        return locations, moved

    def __enter__(self) -> Iterator[tuple[int, int, list[PatchLocation], torch.Tensor]]:
        return self._batches()

    def _batches(self) -> Iterator[tuple[int, int, list[PatchLocation], torch.Tensor]]:
        """``(first, stop, locations, batch)`` per batch, ranks ``first .. stop - 1``."""
        if self.executor is None:  # CPU: a second thread only fights the model's OpenMP threads
            for index, (first, stop) in enumerate(self.ranges):
                yield (first, stop, *self._prepare(index))
            return
        future = self.executor.submit(self._prepare, 0)
        for index, (first, stop) in enumerate(self.ranges):
            locations, batch = future.result()
            if index + 1 < len(self.ranges):
                future = self.executor.submit(self._prepare, index + 1)
            yield first, stop, locations, batch

    def __exit__(self, *_: Any) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        if self.device.type == "cpu":
            keep_batch_buffer(self.buffers[0])
