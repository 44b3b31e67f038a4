"""Device choice: the one place that decides where models run by default."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """The devices this machine can run models on, best first (``'cpu'`` always last).

    Examples
    --------
    >>> available_devices()[-1]
    'cpu'
    """
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return [*devices, "cpu"]


def default_device() -> str:
    """``'cuda'`` if available, else ``'mps'`` if available, else ``'cpu'``.

    Examples
    --------
    >>> default_device() in available_devices()
    True
    """
    return available_devices()[0]
