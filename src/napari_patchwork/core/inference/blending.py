"""Blending windows: pure functions of the patch size, cached per size, dtype and device."""

from __future__ import annotations

import functools
import math

import torch

from napari_patchwork.core.types import TypeTriplet


def _hann_1d(size: int) -> torch.Tensor:
    # TorchIO's window: a symmetric Hann of size + 2 without its zero ends, so never zero.
    return torch.hann_window(size + 2, periodic=False, dtype=torch.float64)[1:-1]


def _gaussian_1d(size: int) -> torch.Tensor:
    # nnU-Net's importance map: sigma = size / 8, centred, peak 1.
    sigma = size / 8
    positions = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return torch.exp(-0.5 * (positions / sigma) ** 2)


def _constant_1d(size: int) -> torch.Tensor:
    return torch.ones(size, dtype=torch.float64)


_WINDOWS_1D = {"hann": _hann_1d, "gaussian": _gaussian_1d, "average": _constant_1d}


@functools.lru_cache(maxsize=32)
def blending_window(
    mode: str, size: TypeTriplet, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> torch.Tensor:
    """The ``(1, I, J, K)`` separable weight window of a blending mode, strictly positive.

    Parameters
    ----------
    mode : {'average', 'hann', 'gaussian'}
        Constant, TorchIO's Hann, or nnU-Net's Gaussian (sigma = size / 8).
    size : tuple of 3 int
        Patch size the window covers.

    Examples
    --------
    >>> window = blending_window("hann", (4, 4, 4))
    >>> window.shape, bool(window.min() > 0)
    (torch.Size([1, 4, 4, 4]), True)
    """
    if mode not in _WINDOWS_1D:
        raise ValueError(f"mode must be one of {tuple(_WINDOWS_1D)}, got {mode!r}")
    i, j, k = (_WINDOWS_1D[mode](s) for s in size)
    # Built one row of the first axis at a time, in float64 (``i * j`` then ``* k``), so that
    # the only temporaries are one (J, K) row: the whole float64 window, its mask and the mask's
    # indices were 45 MiB for 64x128x128, held beside a streamed run's slab and batch.
    floor = math.inf  # the least positive weight
    for a in range(size[0]):
        row = (i[a] * j)[:, None] * k[None, :]
        positive = row[row > 0]
        if positive.numel():
            floor = min(floor, float(positive.min()))
    window = torch.empty((1, *size), dtype=dtype)
    for a in range(size[0]):
        window[0, a] = ((i[a] * j)[:, None] * k[None, :]).clamp_(min=floor)
    return window.to(device=device)
