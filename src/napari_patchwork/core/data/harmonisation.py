"""Intensity harmonisation: map another scanner's volume onto the training volume's intensities.

Another scanner shows the same anatomy through a smooth multiplicative bias field, a change of
contrast (gamma) and of intensity scale. A model trained on one volume cannot tell those apart
from anatomy patch by patch, so the correction is made on the whole volume before tiling:

1. fit each volume's *field*: a cubic polynomial of the log intensities over the volume's
   ``[-1, 1]`` coordinates, least squares over the voxels above an Otsu threshold (refitted
   after each correction), clipped to the range it takes on those voxels, and the mean and
   standard deviation of what the field leaves there (:meth:`IntensityField.fit`, on a strided
   subset of at most :data:`FIT_VOXELS` voxels);
2. replace the input's field by the training volume's, and its log-contrast (standard
   deviation) by the training volume's (:class:`Harmonisation`).

The training volume itself maps onto itself exactly (gain 1), so harmonising never changes what
the model saw when it was trained. Voxels at or below a small floor (background, noise below
zero) get the gain of the floor: values are multiplied, never clipped.

What it cannot do: correct fields that are not smooth on the scale of the volume (a cubic
polynomial per axis pair) or contrast changes that are not a power law of the intensities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from napari_patchwork.core.data.lazy import LazyVolume

DEGREE = 3
"""Total degree of the field's polynomial (20 terms)."""

FIT_VOXELS = 400_000
"""At most this many voxels (a strided subset) enter a fit."""

_ITERATIONS = 4
_TERMS = [
    (a, b, c)
    for a in range(DEGREE + 1)
    for b in range(DEGREE + 1 - a)
    for c in range(DEGREE + 1 - a - b)
]


def _axis_powers(size: int, start: int, stop: int, step: int = 1) -> np.ndarray:
    """``(DEGREE + 1, n)``: powers of the ``[-1, 1]`` coordinates of voxels ``start:stop:step``."""
    coordinate = np.linspace(-1.0, 1.0, size) if size > 1 else np.zeros(1)
    values = coordinate[start:stop:step]
    return np.stack([values**power for power in range(DEGREE + 1)])


def _polynomial(coefficients: np.ndarray, powers: list[np.ndarray]) -> np.ndarray:
    """The polynomial on the grid whose per-axis powers are given."""
    tensor = np.zeros((DEGREE + 1,) * 3)
    for value, (a, b, c) in zip(coefficients, _TERMS):
        tensor[a, b, c] = value
    return np.asarray(np.einsum("abc,ai,bj,ck->ijk", tensor, *powers, optimize=True))


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    counts, edges = np.histogram(values, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)
    above = below[-1] - below
    sums = np.cumsum(counts * centres)
    mean_below = sums / np.maximum(below, 1)
    mean_above = (sums[-1] - sums) / np.maximum(above, 1)
    return float(centres[np.argmax(below * above * (mean_below - mean_above) ** 2)])


def _strided_sample(volume: Any, step: int) -> np.ndarray:
    """``volume[:, ::step, ::step, ::step]`` as float64; a lazy volume is read plane by plane."""
    rows = range(0, int(volume.shape[1]), step)
    if isinstance(volume, LazyVolume):  # one plane at a time: never a slab of a large volume
        everything = slice(None)
        planes = [volume.read(slice(i, i + 1), everything, everything).numpy() for i in rows]
    else:
        data = volume.numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
        planes = [data[:, i : i + 1] for i in rows]
    return np.concatenate([p[:, :, ::step, ::step].astype(np.float64) for p in planes], axis=1)


@dataclass(frozen=True, kw_only=True)
class IntensityField:
    """One volume's fitted intensity field (per channel), as :meth:`fit` finds it.

    Parameters
    ----------
    coefficients : tuple of tuple of float
        Per channel, the 20 coefficients of the cubic log-field polynomial.
    low, high : tuple of float
        Per channel, the range the log field is clipped to.
    mean, std : tuple of float
        Per channel, mean and standard deviation of the log intensities less the field, over
        the voxels above the Otsu threshold.
    floor : tuple of float
        Per channel, the intensity below which voxels get the floor's gain.

    Examples
    --------
    >>> volume = torch.rand(1, 8, 8, 8) + 0.5
    >>> field = IntensityField.fit(volume)
    >>> len(field.coefficients[0]), field == IntensityField.from_dict(field.to_dict())
    (20, True)
    """

    coefficients: tuple[tuple[float, ...], ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    floor: tuple[float, ...]

    @classmethod
    def fit(cls, volume: Any) -> IntensityField:
        """Fit the field of a ``(C, I, J, K)`` tensor, array or lazy volume."""
        shape = tuple(int(n) for n in volume.shape)
        if len(shape) != 4:
            raise ValueError(f"volume must be (C, I, J, K), got shape {shape}")
        step = max(1, math.ceil((math.prod(shape[1:]) / FIT_VOXELS) ** (1 / 3)))
        sample = _strided_sample(volume, step)
        powers = [_axis_powers(size, 0, size, step) for size in shape[1:]]
        design = np.stack(
            [
                np.einsum("i,j,k->ijk", powers[0][a], powers[1][b], powers[2][c]).ravel()
                for a, b, c in _TERMS
            ],
            axis=1,
        )
        channels = [_fit_channel(channel, design) for channel in sample]
        return cls(**{name: tuple(c[name] for c in channels) for name in channels[0]})

    def log_field(
        self, channel: int, shape: tuple[int, int, int], region: tuple[slice, ...]
    ) -> np.ndarray:
        """The clipped log field of ``channel`` on ``region`` of a volume of spatial ``shape``."""
        powers = [_axis_powers(size, *part.indices(size)[:2]) for size, part in zip(shape, region)]
        field = _polynomial(np.asarray(self.coefficients[channel]), powers)
        return np.asarray(np.clip(field, self.low[channel], self.high[channel]))

    def to_dict(self) -> dict[str, list[Any]]:
        """JSON-ready (the model file's metadata)."""
        return {
            name: [list(v) if isinstance(v, tuple) else v for v in getattr(self, name)]
            for name in ("coefficients", "low", "high", "mean", "std", "floor")
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IntensityField:
        """The field :meth:`to_dict` wrote."""
        try:
            return cls(
                coefficients=tuple(tuple(float(v) for v in c) for c in data["coefficients"]),
                **{
                    name: tuple(float(v) for v in data[name])
                    for name in ("low", "high", "mean", "std", "floor")
                },
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"intensity reference {data!r} is not a saved field: {error}"
            ) from None


def _least_squares(design: np.ndarray, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``lstsq(design[mask], values[mask])`` (LAPACK gelsd, as numpy), through torch: its ops
    release the GIL, numpy's lstsq holds it (15–30 ms per call at 96³, a stall of the napari
    GUI when a training run starts)."""
    keep = torch.from_numpy(mask)
    rows = torch.from_numpy(design)[keep]
    targets = torch.from_numpy(values)[keep].unsqueeze(1)
    solution = torch.linalg.lstsq(rows, targets, driver="gelsd").solution
    return np.asarray(solution[:, 0].numpy())


def _fit_channel(sample: np.ndarray, design: np.ndarray) -> dict[str, Any]:
    finite = sample[np.isfinite(sample)]
    floor = max(float(np.quantile(finite, 0.995)) * 1e-3, 1e-12) if finite.size else 1.0
    log = np.log(np.maximum(np.nan_to_num(sample, nan=floor), floor)).ravel()
    values = np.nan_to_num(sample, nan=floor).ravel()
    field = np.zeros_like(log)
    coefficients, low, high = np.zeros(design.shape[1]), 0.0, 0.0
    for _ in range(_ITERATIONS):
        corrected = values / np.exp(field)
        mask = corrected > _otsu(corrected)
        if mask.sum() < design.shape[1] * 4:
            break
        coefficients = _least_squares(design, log, mask)
        field = design @ coefficients
        low, high = float(field[mask].min()), float(field[mask].max())
        field = np.clip(field, low, high)
    corrected = values / np.exp(field)
    mask = corrected > _otsu(corrected)
    residual = (log - field)[mask] if mask.any() else log - field
    return {
        "coefficients": tuple(float(v) for v in coefficients),
        "low": low,
        "high": high,
        "mean": float(residual.mean()),
        "std": max(float(residual.std()), 1e-6),
        "floor": floor,
    }


@dataclass(frozen=True, kw_only=True)
class Harmonisation:
    """Maps a volume onto the ``reference`` volume's field and contrast.

    Parameters
    ----------
    reference : IntensityField
        The training volume's field (saved in the model file).
    volume : IntensityField, optional
        The input's own field; None: fitted on the input when a run starts (:meth:`bound`).

    Examples
    --------
    >>> image = torch.rand(1, 16, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    >>> harmonisation = Harmonisation(reference=IntensityField.fit(image))
    >>> torch.allclose(harmonisation.apply(image), image)  # the training volume is unchanged
    True
    >>> ramp = torch.linspace(-1, 1, 16)[:, None, None]
    >>> other = 1.6 * (image * torch.exp(0.3 * ramp)) ** 1.4  # field, contrast and scale
    >>> def error(volume):
    ...     return round(float((volume - image).abs().max()), 2)
    >>> error(other), error(harmonisation.apply(other))
    (2.78, 0.08)
    """

    reference: IntensityField
    volume: IntensityField | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.reference, IntensityField):
            raise TypeError(f"reference must be an IntensityField, got {type(self.reference)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the reference and, if bound, the input's field."""
        volume = None if self.volume is None else self.volume.to_dict()
        return {"reference": self.reference.to_dict(), "volume": volume}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Harmonisation:
        """The harmonisation :meth:`to_dict` wrote."""
        volume = data.get("volume")
        return cls(
            reference=IntensityField.from_dict(data["reference"]),
            volume=None if volume is None else IntensityField.from_dict(volume),
        )

    def bound(self, volume: Any) -> Harmonisation:
        """This harmonisation with the field of ``volume`` fitted (unchanged if already fitted)."""
        if self.volume is not None:
            return self
        field = IntensityField.fit(volume)
        channels = len(self.reference.coefficients)
        if len(field.coefficients) != channels:
            raise ValueError(
                f"the model was trained on {channels}-channel images, the input has"
                f" {len(field.coefficients)} channels"
            )
        return replace(self, volume=field)

    def harmonise_block(
        self, block: np.ndarray, shape: tuple[int, int, int], region: tuple[slice, ...]
    ) -> np.ndarray:
        """``block`` = ``volume[:, *region]`` (``(C, i, j, k)``) harmonised, as float32."""
        if self.volume is None:
            raise ValueError("fit the input's field first: harmonisation.bound(volume)")
        data = np.asarray(block, dtype=np.float32)
        out = np.empty(data.shape, np.float32)
        source, target = self.volume, self.reference
        for c in range(data.shape[0]):
            log = np.log(np.maximum(data[c], source.floor[c]))
            ratio = target.std[c] / source.std[c]
            gain = (log - source.log_field(c, shape, region) - source.mean[c]) * ratio
            gain += target.mean[c] + target.log_field(c, shape, region) - log
            out[c] = data[c] * np.exp(gain)
        return out

    def apply(self, volume: Any, region: tuple[slice, ...] | None = None) -> torch.Tensor:
        """A ``(C, I, J, K)`` tensor or array harmonised, or only its spatial ``region``.

        The input's field is fitted on the whole volume (if not bound yet), so a region is
        harmonised exactly as it is inside the whole.
        """
        bound = self.bound(volume)
        data = volume.numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
        shape = (int(data.shape[1]), int(data.shape[2]), int(data.shape[3]))
        box = tuple(slice(*part.indices(n)[:2]) for part, n in zip(region or (), shape))
        box = box + tuple(slice(0, n) for n in shape[len(box) :])
        block = data[(slice(None), *box)]
        return torch.from_numpy(bound.harmonise_block(block, shape, box))

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None) -> Harmonisation | None:
        """The harmonisation a model file's metadata asks for (``intensity_reference``)."""
        reference = (metadata or {}).get("intensity_reference")
        return None if reference is None else cls(reference=IntensityField.from_dict(reference))


class HarmonisedArray:
    """A lazily read ``(I, J, K)`` or ``(C, I, J, K)`` array, harmonised block by block.

    Parameters
    ----------
    array : array-like
        Sliced with basic slices (a zarr array, a memmap…).
    harmonisation : Harmonisation
        Bound to this array's field (:meth:`Harmonisation.bound`).

    Examples
    --------
    >>> data = np.random.default_rng(0).random((1, 8, 8, 8)) + 0.5
    >>> harmonisation = Harmonisation(reference=IntensityField.fit(data)).bound(data)
    >>> lazy = HarmonisedArray(data, harmonisation)
    >>> bool(np.allclose(lazy[:, 2:4, :, 1:3], data[:, 2:4, :, 1:3], atol=1e-5))
    True
    """

    def __init__(self, array: Any, harmonisation: Harmonisation) -> None:
        if len(array.shape) not in (3, 4):
            raise ValueError(f"array must be (I, J, K) or (C, I, J, K), got {tuple(array.shape)}")
        if harmonisation.volume is None:
            raise ValueError("fit the array's field first: harmonisation.bound(array)")
        self.array, self.harmonisation = array, harmonisation
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(np.float32)
        self.chunks = getattr(array, "chunks", None)
        self.store = getattr(array, "store", None)

    def __getitem__(self, index: Any) -> np.ndarray:
        ndim = len(self.shape)
        key = index if isinstance(index, tuple) else (index,)
        key = key + (slice(None),) * (ndim - len(key))
        if len(key) != ndim or not all(isinstance(k, slice) and k.step in (None, 1) for k in key):
            raise IndexError(f"harmonised arrays take {ndim} basic slices, got {index!r}")
        spatial = key[-3:]
        shape = (self.shape[-3], self.shape[-2], self.shape[-1])
        region = tuple(slice(*k.indices(n)[:2]) for k, n in zip(spatial, shape))
        if ndim == 3:
            block = np.asarray(self.array[spatial])[None]
            return np.asarray(self.harmonisation.harmonise_block(block, shape, region)[0])
        block = np.asarray(self.array[(slice(None), *spatial)])  # every channel: its own field
        harmonised = self.harmonisation.harmonise_block(block, shape, region)
        return np.asarray(harmonised[key[0]])
