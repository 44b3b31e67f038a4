"""Random intensity and spatial augmentation of training subjects (a ``Queue`` transform).

The intensity changes are the ones another scanner makes: a smooth multiplicative bias field,
a gamma change of contrast, a different intensity scale and offset, and noise. The spatial
change is random flips, applied alike to every image of the subject (labels stay aligned).
:func:`simulate_scanner` applies one fixed set of the same changes, to test how a model copes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_patchwork.core.data.subject import Subject


def _check_range(value: Any, name: str, low: float, high: float = math.inf) -> tuple[float, float]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise TypeError(f"{name} must be a pair of numbers (min, max), got {value!r}")
    first, second = float(value[0]), float(value[1])
    if not (low <= first <= second <= high):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return (first, second)


def _check_probability(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class AugmentationConfig:
    """Ranges of the random augmentations; every draw is uniform in its range.

    Parameters
    ----------
    flip_probability : float
        Chance of flipping each spatial axis.
    bias_field : float
        Largest coefficient of the cubic polynomial whose exponential is the bias field
        (0 turns it off; 0.3 gives fields of about ±35 %).
    gamma : (float, float)
        Range of ``log(gamma)``; contrast becomes ``low + span * t ** gamma`` with ``t`` the
        intensity rescaled to [0, 1] between the 0.5th and 99.5th percentiles (default:
        gamma 0.67–1.5; ``(0, 0)``: off).
    scale : (float, float)
        Range of ``log`` of the multiplicative intensity scale (default 0.6–1.65×;
        ``(0, 0)``: off).
    shift : float
        Largest offset added, as a fraction of the intensity span (default ±10 %).
    noise : (float, float)
        Range of the Gaussian noise's standard deviation, as a fraction of the image's.
    probability : float
        Chance of applying each intensity augmentation.

    Notes
    -----
    ``AugmentationConfig()`` changes contrast (gamma, scale, shift) as well as flipping,
    adding bias fields and noise: the set that trains a model for other scanners when their
    intensities are not harmonised. Training's default is :data:`FLIPS_AND_NOISE`, since
    harmonisation maps bias fields, gamma and scale away. Measured with
    ``benchmarks/bench_training.py --seconds 240 --augmentation full flips-noise none``
    (harmonised, filter network, one run, quiet 2-core machine): nibabel's EPI volume 0.679 /
    0.933 / 0.920 Dice (forest 0.950), on another scanner 0.676 / 0.923 / 0.923; the
    synthetic volume 0.802 / 0.691 / 0.696 (forest 0.633), on another scanner 0.634 / 0.619 /
    0.667.

    Examples
    --------
    >>> AugmentationConfig(flip_probability=0.0).flip_probability
    0.0
    >>> NO_CONTRAST.gamma, AugmentationConfig().gamma
    ((0.0, 0.0), (-0.4, 0.4))
    """

    flip_probability: float = 0.5
    bias_field: float = 0.3
    gamma: tuple[float, float] = (-0.4, 0.4)
    scale: tuple[float, float] = (-0.5, 0.5)
    shift: float = 0.1
    noise: tuple[float, float] = (0.0, 0.1)
    probability: float = 0.8

    def __post_init__(self) -> None:
        _check_probability(self.flip_probability, "flip_probability")
        _check_probability(self.probability, "probability")
        for name in ("bias_field", "shift"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        object.__setattr__(self, "gamma", _check_range(self.gamma, "gamma", -3.0, 3.0))
        object.__setattr__(self, "scale", _check_range(self.scale, "scale", -5.0, 5.0))
        object.__setattr__(self, "noise", _check_range(self.noise, "noise", 0.0))


NO_CONTRAST: AugmentationConfig = AugmentationConfig(gamma=(0.0, 0.0), scale=(0.0, 0.0), shift=0.0)
"""The defaults less gamma, intensity scale and shift: flips, bias fields and noise."""

FLIPS_AND_NOISE: AugmentationConfig = AugmentationConfig(
    bias_field=0.0, gamma=(0.0, 0.0), scale=(0.0, 0.0), shift=0.0
)
"""Flips and noise only: what is left to vary once volumes are harmonised
(:mod:`~napari_patchwork.core.data.harmonisation` maps bias fields, gamma and scale away)."""


def bias_field(
    shape: tuple[int, int, int], coefficients: np.ndarray, order: int = 3
) -> torch.Tensor:
    """A smooth ``(I, J, K)`` float32 field ``exp(sum c_abc x^a y^b z^c)``, ``a + b + c <= order``.

    Coordinates run over [-1, 1] on each axis; ``coefficients`` is ``(order+1,)*3`` (terms of
    higher total degree are ignored).

    Examples
    --------
    >>> field = bias_field((4, 4, 4), np.zeros((4, 4, 4)))
    >>> float(field.min()), float(field.max())
    (1.0, 1.0)
    """
    powers = [
        torch.linspace(-1, 1, size, dtype=torch.float32)[None] ** torch.arange(order + 1)[:, None]
        for size in shape
    ]
    degree = np.add.outer(
        np.add.outer(np.arange(order + 1), np.arange(order + 1)), np.arange(order + 1)
    )
    kept = torch.from_numpy(np.where(degree <= order, coefficients, 0.0).astype(np.float32))
    return torch.exp(torch.einsum("abc,ai,bj,ck->ijk", kept, *powers))


def _span(image: torch.Tensor) -> tuple[float, float]:
    flat = image.reshape(-1).float()
    if flat.numel() > 200_000:  # percentiles of a strided subset: same answer, far faster
        flat = flat[:: flat.numel() // 200_000]
    low, high = torch.quantile(flat, torch.tensor([0.005, 0.995])).tolist()
    return low, max(high, low + 1e-6)


def apply_gamma(image: torch.Tensor, gamma: float) -> torch.Tensor:
    """Change contrast: ``low + span * clip(t, 0, 1) ** gamma`` plus what lies outside [0, 1].

    Examples
    --------
    >>> ramp = torch.linspace(0, 1, 5)[None, None, None]
    >>> torch.allclose(apply_gamma(ramp, 1.0), ramp), bool(apply_gamma(ramp, 2.0)[..., 2] < 0.5)
    (True, True)
    """
    low, high = _span(image)
    t = (image.float() - low) / (high - low)
    inside = t.clamp(0, 1)
    return low + (high - low) * (inside**gamma + (t - inside))


class RandomAugmentation:
    """A ``Queue`` transform: random flips, bias field, gamma, scale, shift and noise.

    Intensity changes apply to ``image_name`` only; flips to every image of the subject.

    Parameters
    ----------
    config : AugmentationConfig, optional
        The ranges (defaults if omitted).
    image_name : str
        The intensity image to change.
    seed : int, optional
        Seed of the private generator (reproducible when called in a fixed order).

    Examples
    --------
    >>> from napari_patchwork import LabelMap, ScalarImage
    >>> subject = Subject(image=ScalarImage(torch.rand(1, 8, 8, 8)),
    ...                   annotations=LabelMap(torch.ones(1, 8, 8, 8, dtype=torch.int64)))
    >>> augmented = RandomAugmentation(seed=0)(subject)
    >>> augmented.image.data.shape, int(augmented.annotations.data.sum())
    (torch.Size([1, 8, 8, 8]), 512)
    """

    def __init__(
        self,
        config: AugmentationConfig | None = None,
        image_name: str = "image",
        seed: int | None = None,
    ) -> None:
        if config is not None and not isinstance(config, AugmentationConfig):
            raise TypeError(f"config must be an AugmentationConfig, got {type(config)}")
        self.config = config or AugmentationConfig()
        self.image_name = image_name
        self.rng = np.random.default_rng(seed)

    def __call__(self, subject: Subject) -> Subject:
        """Return an augmented copy of ``subject``."""
        image = subject.check_image(self.image_name, "image_name")
        data = self._intensity(image.data.float())
        dims = [axis + 1 for axis in range(3) if self.rng.random() < self.config.flip_probability]
        items: dict[str, Any] = {}
        for name, value in subject.items():
            if name == self.image_name:
                value = image.with_data(data)
            if dims and hasattr(value, "with_data"):
                value = value.with_data(value.data.flip(dims))
            items[name] = value
        return subject.derived(items)

    def _applies(self) -> bool:
        return bool(self.rng.random() < self.config.probability)

    def _intensity(self, data: torch.Tensor) -> torch.Tensor:
        config, rng = self.config, self.rng
        if config.bias_field > 0 and self._applies():
            coefficients = rng.uniform(-config.bias_field, config.bias_field, (4, 4, 4))
            coefficients[0, 0, 0] = 0.0
            data = data * bias_field(tuple(data.shape[1:]), coefficients)  # type: ignore[arg-type]
        if config.gamma != (0.0, 0.0) and self._applies():
            data = apply_gamma(data, math.exp(rng.uniform(*config.gamma)))
        if (config.scale != (0.0, 0.0) or config.shift > 0) and self._applies():
            low, high = _span(data)
            offset = rng.uniform(-config.shift, config.shift) * (high - low)
            data = data * math.exp(rng.uniform(*config.scale)) + offset
        if config.noise[1] > 0 and self._applies():
            std = rng.uniform(*config.noise) * float(data.std())
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            data = data + std * torch.randn(data.shape, generator=generator)
        return data


def simulate_scanner(
    image: torch.Tensor,
    *,
    bias: float = 0.25,
    gamma: float = 1.4,
    scale: float = 1.6,
    noise: float = 0.05,
    seed: int = 0,
) -> torch.Tensor:
    """The same anatomy as another scanner would show it (one fixed draw of each change).

    Parameters
    ----------
    image : torch.Tensor
        ``(C, I, J, K)`` intensities.
    bias : float
        Largest coefficient of the bias field's polynomial.
    gamma : float
        Contrast exponent (:func:`apply_gamma`).
    scale : float
        Intensity scale.
    noise : float
        Added Gaussian noise, as a fraction of the image's standard deviation.
    seed : int
        Seed of the bias field and the noise.

    Examples
    --------
    >>> shifted = simulate_scanner(torch.rand(1, 8, 8, 8), seed=1)
    >>> shifted.shape, shifted.dtype
    (torch.Size([1, 8, 8, 8]), torch.float32)
    """
    rng = np.random.default_rng(seed)
    coefficients = rng.uniform(-bias, bias, (4, 4, 4))
    coefficients[0, 0, 0] = 0.0
    data = image.float() * bias_field(tuple(image.shape[1:]), coefficients)  # type: ignore[arg-type]
    data = apply_gamma(data, gamma) * scale
    generator = torch.Generator().manual_seed(seed)
    return data + noise * float(data.std()) * torch.randn(data.shape, generator=generator)
