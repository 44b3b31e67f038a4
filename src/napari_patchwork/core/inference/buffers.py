"""CPU buffers of a tiled run whose pages are already there: the output, the batch.

A page of memory touched for the first time faults: 2.3-11 µs each on this VM, 1024 of them for
a 4 MiB batch, more than a whole 128³ identity run. glibc hands a large block that was freed
back to the system (or trims the heap), so a run after other large frees (a peer's run, a NIfTI
loaded and dropped) touches fresh pages. The output comes from the C heap in a block the
previous output's hole fits (:func:`heap_empty`); the batch buffer of the last CPU run is kept
for the next (:func:`take_batch_buffer`, :func:`keep_batch_buffer`).
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

#: The largest CPU batch buffer kept between runs (one buffer is kept, the last run's).
KEPT_BATCH_BYTES = 64 << 20
_kept: list[torch.Tensor] = []
_kept_lock = threading.Lock()


def heap_empty(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor from the C heap (numpy's ``malloc``), 64-byte aligned.

    The CPU output buffer of a run (:class:`GridMerger` zeroes its rows just before their
    first patch, while the patches' rows are in the cache).

    torch allocates large CPU tensors with ``posix_memalign``, which asks glibc for the size
    plus the alignment: the block a freed output leaves is then too small for the next
    output of the same size, the heap grows and the new buffer's pages fault in afresh (2048
    faults at 128³; 59 and 33 runs of 77 in a loop of runs, 2.3-6 µs a fault on this VM,
    up to half a 128³ run). A plain heap block of the same size fits the hole it left: 0
    runs of 77 fault. A loop over subjects, or the widget run after run, is that loop.

    Examples
    --------
    >>> buffer = heap_empty((1, 4, 4, 4))
    >>> buffer.shape, buffer.dtype, buffer.data_ptr() % 64
    (torch.Size([1, 4, 4, 4]), torch.float32, 0)
    """
    count = math.prod(shape)
    raw = np.empty(count + 16, np.float32)  # room to start on a 64-byte boundary
    skip = (-raw.ctypes.data % 64) // 4
    return torch.from_numpy(raw[skip : skip + count].reshape(shape))


def take_batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 CPU batch buffer of ``shape``: the one the last run kept, if it fits, else new.

    The caller owns it until it hands it back with :func:`keep_batch_buffer` (two runs at once
    never share one). It is an inference tensor inside ``torch.inference_mode`` and a normal
    one outside, as a new tensor would be.

    Examples
    --------
    >>> first = take_batch_buffer((2, 1, 4, 4, 4))
    >>> keep_batch_buffer(first)
    >>> take_batch_buffer((2, 1, 4, 4, 4)) is first, take_batch_buffer((2, 1, 4, 4, 4)) is first
    (True, False)
    """
    inference = torch.is_inference_mode_enabled()
    with _kept_lock:
        for index, buffer in enumerate(_kept):
            if tuple(buffer.shape) == tuple(shape) and buffer.is_inference() == inference:
                return _kept.pop(index)
    return heap_empty(shape)


def keep_batch_buffer(buffer: torch.Tensor) -> None:
    """Keep a run's CPU batch buffer for the next run (in place of the one kept before), if it
    is at most :data:`KEPT_BATCH_BYTES`."""
    if buffer.device.type != "cpu" or buffer.numel() * buffer.element_size() > KEPT_BATCH_BYTES:
        return
    with _kept_lock:
        _kept[:] = [buffer]
