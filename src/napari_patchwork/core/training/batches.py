"""Training batches: patches balanced over the painted classes, shuffled ahead in a thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import torch

from napari_patchwork.core.batching.collate import collate_subjects
from napari_patchwork.core.batching.queue import Queue
from napari_patchwork.core.data.subject import Subject
from napari_patchwork.core.samplers.label import LabelSampler


class BalancedSampler:
    """A LabelSampler over the annotated classes present in each subject, equally weighted."""

    def __init__(self, patch_size: int, generator: torch.Generator) -> None:
        self.patch_size = (patch_size,) * 3
        self.generator = generator

    def __call__(self, subject: Subject) -> Iterator[Subject]:
        present = [v for v in torch.unique(subject["annotations"].data).tolist() if v > 0]
        sampler = LabelSampler(
            None,
            self.patch_size,
            "annotations",
            dict.fromkeys(present, 1.0),
            generator=self.generator,
        )
        return sampler(subject)


class BatchStream:
    """Shuffled batches from a Queue, assembled ahead of the training loop in a thread.

    The Queue does not shuffle (it would use torch's global generator, shared with the
    caller); patches are shuffled here with the trainer's own generator instead.
    """

    def __init__(
        self, patches: Queue, batch_size: int, generator: torch.Generator, ahead: int
    ) -> None:
        self._batches: queue.Queue[Any] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._batch_size, self._generator = batch_size, generator
        self._thread = threading.Thread(
            target=self._fill, args=(patches,), daemon=True, name="patchwork-train-batches"
        )
        self._thread.start()

    def _fill(self, patches: Queue) -> None:
        try:
            buffer: list[Subject] = []
            while not self._stop.is_set():
                for patch in patches:
                    buffer.append(patch)
                    if len(buffer) == patches.max_length and not self._emit(buffer):
                        return
        except BaseException as error:  # re-raised in the training loop
            self._batches.put(error)

    def _emit(self, buffer: list[Subject]) -> bool:
        order = torch.randperm(len(buffer), generator=self._generator).tolist()
        size = self._batch_size
        for first in range(0, len(order) - size + 1, size):
            batch = collate_subjects([buffer[i] for i in order[first : first + size]])
            item = (batch.image.data, batch.annotations.data)
            while True:
                if self._stop.is_set():
                    return False
                try:
                    self._batches.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
        buffer.clear()
        return True

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        item = self._batches.get()
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._batches.get(timeout=0.05)
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
