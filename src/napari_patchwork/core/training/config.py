"""The settings of a training run: one frozen, keyword-only config for API, CLI and widget."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from napari_patchwork.core.training.augmentation import FLIPS_AND_NOISE, AugmentationConfig

INITS = ("scratch", "demo")  # or a saved model file, or 'module:factory'
SCHEDULES = ("cosine", "constant")
NETWORKS = ("filters", "unet")  # what init='scratch' builds
Region = tuple[slice, slice, slice]


def check_positive(value: Any, name: str, kind: type = int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    number = isinstance(value, (int, float) if kind is float else int)
    if isinstance(value, bool) or not number or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Every setting of a training run; the API, the CLI and the widget all build one.

    Parameters
    ----------
    patch_size : int
        Edge of the cubic training patches (even, >= 4).
    batch_size : int
        Patches per step.
    seconds, iterations : float or int, optional
        Time budget and step count of a run; it stops at whichever comes first (neither:
        until stopped).
    network : {'filters', 'unet'}
        What ``init='scratch'`` builds: ``'filters'``, fixed multiscale filters and a learned
        per-voxel classifier (:class:`~napari_patchwork.models.FilterNet3D`; learns from a few
        strokes in seconds), or ``'unet'``, a small U-Net learning its own filters (needs
        more strokes and time).
    init : str
        ``'scratch'``, ``'demo'`` (the bundled network, new output layer if the class count
        differs), a model file saved by :meth:`Trainer.save` or ``'module:factory'``.
    weights : str, optional
        State dict for a ``module:factory`` model.
    width : int, optional
        Channels of a new network (hidden layers of ``'filters'``, first level of
        ``'unet'``); default 32 and 8.
    learning_rate : float
        Peak AdamW learning rate.
    schedule : {'cosine', 'constant'}
        After 20 warm-up steps, ``'cosine'`` decays the rate to 5 % at the end of the run's
        budget (seconds or iterations; constant for a run without one), so the weights a
        run ends with are settled: on nibabel's EPI volume, Dice measured every 250 steps
        of a 5000-step run was 0.930-0.935 over the last six measurements with
        ``'cosine'``, 0.909-0.933 with ``'constant'`` (0.909 at the last step). Each
        run (a Continue) warms up and decays again over its own budget; a run stopped
        early ends at a higher rate. Gradients are clipped to norm 5.
    seed : int, optional
        Makes the run reproducible (initialisation, patches, augmentation).
    device : str, optional
        ``'cpu'``, ``'cuda'``…; default CUDA when available, else CPU.
    amp : bool, optional
        Mixed precision; default on CUDA only.
    augmentation : AugmentationConfig or None
        Ranges of the random augmentation; None turns it off. Default
        :data:`~napari_patchwork.core.training.augmentation.FLIPS_AND_NOISE` (flips and
        noise): harmonisation maps bias fields, gamma and scale away, and on nibabel's EPI
        volume the contrast changes of ``AugmentationConfig()`` cost 0.25 Dice (0.679 vs
        0.933, 240 s). With ``harmonise=False``, ``AugmentationConfig()`` is the setting
        that trains for other scanners.
    patches_per_volume, queue_length : int
        Patches drawn per loaded (augmented) volume, and the Queue's buffer.
    preview_every : float
        Seconds between previews when a preview region is requested.
    harmonise : bool
        Record the first image's intensity field and contrast in the model
        (:mod:`~napari_patchwork.core.data.harmonisation`): the other training images, and
        every volume the model segments later, are mapped onto them first (another scanner's
        bias field, gamma and scale). On by default.

    Examples
    --------
    >>> TrainingConfig(patch_size=16, iterations=5).batch_size
    4
    """

    patch_size: int = 32
    batch_size: int = 4
    seconds: float | None = None
    iterations: int | None = None
    network: str = "filters"
    init: str = "scratch"
    weights: str | None = None
    width: int | None = None
    learning_rate: float = 3e-3
    seed: int | None = 0
    device: str | None = None
    amp: bool | None = None
    augmentation: AugmentationConfig | None = FLIPS_AND_NOISE
    patches_per_volume: int = 16
    queue_length: int = 64
    preview_every: float = 3.0
    schedule: str = "cosine"
    harmonise: bool = True

    def _check_network(self) -> None:
        check_positive(self.width, "width", allow_none=True)
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {self.network!r}")
        if self.width is None:
            object.__setattr__(self, "width", 32 if self.network == "filters" else 8)

    def _check_switches(self) -> None:
        if not isinstance(self.harmonise, bool):
            raise TypeError(f"harmonise must be True or False, got {self.harmonise!r}")
        if self.amp is not None and not isinstance(self.amp, bool):
            raise TypeError(f"amp must be True, False or None, got {self.amp!r}")

    def __post_init__(self) -> None:
        check_positive(self.patch_size, "patch_size")
        if self.patch_size % 2 or self.patch_size < 4:
            raise ValueError(f"patch_size must be even and >= 4, got {self.patch_size}")
        for name in ("batch_size", "patches_per_volume", "queue_length"):
            check_positive(getattr(self, name), name)
        self._check_network()
        check_positive(self.iterations, "iterations", allow_none=True)
        for name in ("seconds", "learning_rate", "preview_every"):
            check_positive(getattr(self, name), name, float, allow_none=name == "seconds")
        if not isinstance(self.init, str) or not self.init:
            raise TypeError(
                f"init must be 'scratch', 'demo', a model file or module:factory, got {self.init!r}"
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ValueError(f"seed must be an int >= 0 or None, got {self.seed!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        self._check_switches()
        if self.augmentation is not None and not isinstance(self.augmentation, AugmentationConfig):
            raise TypeError(
                f"augmentation must be an AugmentationConfig or None, got {self.augmentation!r}"
            )
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            object.__setattr__(self, "device", str(torch.device(device)))
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device must be 'cpu', 'cuda', 'cuda:1'…, got {self.device!r}"
            ) from None


def merged_config(config: TrainingConfig | None, settings: dict[str, Any]) -> TrainingConfig:
    if config is not None and not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config)}")
    names = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"unexpected settings {unknown}; TrainingConfig has {sorted(names)}")
    return (
        dataclasses.replace(config, **settings)
        if config is not None
        else TrainingConfig(**settings)
    )
