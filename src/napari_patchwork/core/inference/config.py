"""``InferenceConfig``: every setting of a tiled-inference run, validated once."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypedDict

import torch

from napari_patchwork.core._validation import (
    check_overlap,
    check_padding_mode,
    check_patch_fits,
    check_positive_int,
    to_triplet,
)
from napari_patchwork.core.data.harmonisation import Harmonisation
from napari_patchwork.core.types import OVERLAP_MODES, TypeSize, TypeTriplet


def _check_device(value: object, name: str) -> torch.device | None:
    if value is None:
        return None
    if not isinstance(value, (str, torch.device)):
        raise TypeError(f"{name} must be a torch.device or a string like 'cuda', got {value!r}")
    try:
        return torch.device(value)
    except RuntimeError as error:
        raise ValueError(f"{name}={value!r} is not a valid device: {error}") from None


class InferenceSettings(TypedDict, total=False):
    """The fields of :class:`InferenceConfig` as keyword arguments (``**settings`` of
    :func:`~napari_patchwork.infer` and :func:`~napari_patchwork.iter_infer`).

    A test keeps these keys equal to the dataclass's fields.
    """

    patch_size: TypeSize
    patch_overlap: TypeSize
    overlap_mode: str
    batch_size: int
    device: str | torch.device | None
    aggregate_device: str | torch.device | None
    amp: bool
    padding_mode: str | float | None
    tta: bool
    fixed_batch: bool
    compile: bool
    harmonisation: Harmonisation | None


@dataclass(frozen=True, kw_only=True)
class InferenceConfig:
    """Settings of a tiled-inference run; the CLI, the widget and the API all build one.

    Every argument is keyword-only: the settings are named where they are set.

    Parameters
    ----------
    patch_size : int or tuple of 3 int
        Spatial size of the patches fed to the model.
    patch_overlap : int or tuple of 3 int
        Overlap between patches (even, smaller than the patch).
    overlap_mode : {'gaussian', 'hann', 'average', 'crop'}
        How overlapping outputs are blended. Where no two patches overlap, every mode gives
        the patches' own values, exactly.
    batch_size : int
        Patches per model call.
    device : str or torch.device, optional
        Where the model runs; default: where its parameters are (CPU for plain functions).
    aggregate_device : str or torch.device, optional
        Where outputs accumulate; default: the model's device when the output fits there.
    amp : bool
        Run the model under autocast (float16 on CUDA, bfloat16 on CPU); accumulate in float32.
    padding_mode : str or float, optional
        Pad by half the overlap before tiling (as ``GridSampler``); None: no padding.
    tta : bool
        Average the outputs of the 8 flips of each patch (nnU-Net mirroring).
    fixed_batch : bool
        Always call the model with ``batch_size`` patches (the last batch is padded by
        repeating its last patch; the extra outputs are dropped), for models exported with a
        static batch size.
    compile : bool
        Wrap the model in ``torch.compile`` (a one-off compilation, then faster calls for some
        networks: 1.34x for MONAI's UNet, ~1.0x for the demo U-Net on this project's CPU; see
        docs/benchmarks.md). Off by default.
    harmonisation : Harmonisation, optional
        Map the input onto the training volume's intensity field and contrast before tiling
        (:mod:`~napari_patchwork.core.data.harmonisation`; a model file trained here carries
        its reference). Its input field is fitted when the run starts unless already bound.

    Examples
    --------
    >>> InferenceConfig(patch_size=64, patch_overlap=16).patch_size
    (64, 64, 64)
    """

    patch_size: TypeSize
    patch_overlap: TypeSize = 0
    overlap_mode: str = "gaussian"
    batch_size: int = 4
    device: Any = None
    aggregate_device: Any = None
    amp: bool = False
    padding_mode: str | float | None = None
    tta: bool = False
    fixed_batch: bool = False
    compile: bool = False
    harmonisation: Harmonisation | None = None

    def __post_init__(self) -> None:
        patch = to_triplet(self.patch_size, "patch_size")
        overlap = to_triplet(self.patch_overlap, "patch_overlap", minimum=0)
        check_overlap(patch, overlap)
        object.__setattr__(self, "patch_size", patch)
        object.__setattr__(self, "patch_overlap", overlap)
        if self.overlap_mode not in OVERLAP_MODES:
            raise ValueError(
                f"overlap_mode must be one of {OVERLAP_MODES}, got {self.overlap_mode!r}"
            )
        check_positive_int(self.batch_size, "batch_size")
        check_padding_mode(self.padding_mode)
        for name in ("amp", "tta", "fixed_batch", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.harmonisation, dict):  # from to_dict (a dask job's settings)
            object.__setattr__(self, "harmonisation", Harmonisation.from_dict(self.harmonisation))
        if self.harmonisation is not None and not isinstance(self.harmonisation, Harmonisation):
            raise TypeError(
                f"harmonisation must be a Harmonisation or None, got {type(self.harmonisation)}"
            )
        object.__setattr__(self, "device", _check_device(self.device, "device"))
        object.__setattr__(
            self, "aggregate_device", _check_device(self.aggregate_device, "aggregate_device")
        )

    @classmethod
    def resolve(cls, config: InferenceConfig | None = None, **settings: Any) -> InferenceConfig:
        """``config``, or a new config from ``settings`` (one of the two, never both).

        Raises
        ------
        TypeError
            For a setting that is not a field (named), for ``config`` given with settings,
            or for a ``config`` that is not an ``InferenceConfig``.

        Examples
        --------
        >>> InferenceConfig.resolve(patch_size=8, tta=True).tta
        True
        >>> InferenceConfig.resolve(InferenceConfig(patch_size=8)).patch_size
        (8, 8, 8)
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise TypeError(f"unexpected arguments: {unknown}; the settings are {sorted(names)}")
        if config is None:
            return cls(**settings)
        if not isinstance(config, cls):
            raise TypeError(f"config must be an InferenceConfig, got {type(config)}")
        if settings:
            raise TypeError(f"pass config or settings, not both: got config and {sorted(settings)}")
        return config

    @property
    def patch(self) -> TypeTriplet:
        """``patch_size`` as a triplet (for type checkers)."""
        return self.patch_size  # type: ignore[return-value]

    @property
    def overlap(self) -> TypeTriplet:
        """``patch_overlap`` as a triplet."""
        return self.patch_overlap  # type: ignore[return-value]

    def check_fits(self, spatial_shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` if the patch is larger than the volume (padded, if padding)."""
        border = [o // 2 if self.padding_mode is not None else 0 for o in self.overlap]
        check_patch_fits(self.patch, [s + 2 * b for s, b in zip(spatial_shape, border)])

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for saving settings."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("device", "aggregate_device"):
            values[name] = None if values[name] is None else str(values[name])
        if self.harmonisation is not None:
            values["harmonisation"] = self.harmonisation.to_dict()
        return values
