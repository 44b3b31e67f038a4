"""Deterministic synthetic sample data: blobs and tubes with a bias field and noise.

Labels: 0 background, 1 blobs (bright, round), 2 tubes (dimmer, thin). The probability map
is a smoothed foreground mask, for trying ``WeightedSampler``. Nothing is downloaded.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SAMPLE_SPACING = (0.5, 0.5, 0.8)
SAMPLE_NAMES = ("image", "labels", "probability")


@dataclass(frozen=True)
class SampleVolume:
    """A synthetic volume: ``image`` (float32), ``labels`` (uint8), ``probability`` (float32)."""

    image: np.ndarray
    labels: np.ndarray
    probability: np.ndarray
    affine: np.ndarray


def _box(centre: np.ndarray, radius: float, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(max(int(c - radius - 1), 0), min(int(c + radius + 2), s))
        for c, s in zip(centre, shape)
    )


def _grid(box: tuple[slice, ...]) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij"), -1)


def _draw_blob(labels: np.ndarray, rng: np.random.Generator) -> None:
    shape = labels.shape
    radii = rng.uniform(0.04, 0.08, 3) * min(shape) + 2
    centre = rng.uniform(radii.max(), np.array(shape) - radii.max())
    box = _box(centre, radii.max(), shape)
    inside = (((_grid(box) - centre) / radii) ** 2).sum(-1) <= 1
    labels[box][inside] = 1


def _draw_tube(labels: np.ndarray, rng: np.random.Generator) -> None:
    shape = np.array(labels.shape)
    start, stop = rng.uniform(0.1, 0.9, (2, 3)) * shape
    radius = rng.uniform(1.5, 3.0)
    box = tuple(
        slice(max(int(min(a, b) - radius - 1), 0), min(int(max(a, b) + radius + 2), s))
        for a, b, s in zip(start, stop, shape)
    )
    points = _grid(box)
    direction = stop - start
    t = np.clip(((points - start) @ direction) / (direction @ direction), 0, 1)
    distance = np.linalg.norm(points - (start + t[..., None] * direction), axis=-1)
    region = labels[box]
    region[(distance <= radius) & (region == 0)] = 2


def _smooth(volume: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(3 * sigma)
    kernel = torch.exp(-0.5 * (torch.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = kernel / kernel.sum()
    tensor = torch.from_numpy(volume.astype(np.float32))[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = -1
        padding = [0, 0, 0]
        padding[axis] = radius
        tensor = torch.nn.functional.conv3d(tensor, kernel.view(shape), padding=tuple(padding))
    return tensor[0, 0].numpy()


def make_sample(shape: tuple[int, int, int] = (160, 160, 160), seed: int = 0) -> SampleVolume:
    """Build a synthetic volume (deterministic for a seed).

    Examples
    --------
    >>> sample = make_sample((32, 32, 32), seed=1)
    >>> sample.image.shape, sorted(np.unique(sample.labels).tolist())
    ((32, 32, 32), [0, 1, 2])
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    scale = np.prod(shape) / 160**3
    for _ in range(max(2, round(18 * scale))):
        _draw_blob(labels, rng)
    for _ in range(max(2, round(14 * scale ** (1 / 3) * scale ** (1 / 3)))):
        _draw_tube(labels, rng)
    intensity = np.choose(labels, [0.15, 0.75, 0.5]).astype(np.float32)
    coordinates = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    phases = rng.uniform(0, 2 * np.pi, 3)
    bias = 1 + 0.25 * np.prod([np.cos(np.pi * c + p) for c, p in zip(coordinates, phases)], axis=0)
    image = _smooth(intensity, 0.8) * bias + rng.normal(0, 0.07, shape)
    probability = np.clip(_smooth((labels > 0).astype(np.float32), 4.0) * 4, 0, 1) + 0.01
    affine = np.diag([*SAMPLE_SPACING, 1.0])
    return SampleVolume(image.astype(np.float32), labels, probability.astype(np.float32), affine)


def sample(
    directory: str | os.PathLike[str] | None = None,
    shape: tuple[int, int, int] = (160, 160, 160),
    seed: int = 0,
) -> dict[str, Path]:
    """Write the sample as NIfTI files (``image``, ``labels``, ``probability``); return the paths.

    Files already written for the same shape and seed are reused.

    Examples
    --------
    >>> import tempfile
    >>> paths = sample(tempfile.mkdtemp(), shape=(24, 24, 24))
    >>> sorted(paths)
    ['image', 'labels', 'probability']
    """
    from .io.nifti import write_nifti

    if directory is None:
        directory = Path(tempfile.gettempdir()) / "napari-patchwork-sample"
    folder = Path(directory) / f"{'x'.join(map(str, shape))}-seed{seed}"
    paths = {name: folder / f"{name}.nii.gz" for name in SAMPLE_NAMES}
    if all(path.exists() for path in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    volume = make_sample(shape, seed)
    for name, path in paths.items():
        write_nifti(path, getattr(volume, name)[None], volume.affine)
    return paths
