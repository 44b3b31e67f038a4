"""``PatchAggregator``: stitch model outputs on patches back into volumes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from napari_patchwork.core._validation import to_triplet
from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.inference.blending import blending_window
from napari_patchwork.core.inference.grid import crop_intervals
from napari_patchwork.core.types import OVERLAP_MODES, OverlapMode, TypeTriplet

_PLAIN = "__tensor__"  # key of the output when plain tensors (not dicts) are added


@dataclass
class _Output:
    """Accumulation buffer of one named output."""

    values: torch.Tensor  # (C, *shape)
    weight_key: tuple[Any, ...]
    factor: tuple[float, float, float]


def _as_locations(locations: object, batch_size: int) -> list[PatchLocation]:
    if isinstance(locations, torch.Tensor) and locations.ndim == 2 and locations.shape[1] == 6:
        rows = locations.tolist()  # TorchIO 1.x style (B, 6) ini + fin
        locations = [
            PatchLocation((r[0], r[1], r[2]), (r[3] - r[0], r[4] - r[1], r[5] - r[2])) for r in rows
        ]
    if isinstance(locations, PatchLocation):
        locations = [locations]
    if not isinstance(locations, Sequence) or not all(
        isinstance(loc, PatchLocation) for loc in locations
    ):
        raise TypeError(f"locations must be a list of PatchLocation, got {type(locations)}")
    if len(locations) != batch_size:
        raise ValueError(
            f"locations has {len(locations)} entries but the batch has {batch_size} patches"
        )
    return list(locations)


class PatchAggregator:
    """Reassemble patch outputs into a ``(C, I, J, K)`` volume.

    Parameters
    ----------
    spatial_shape : tuple of 3 int
        Spatial shape of the volume the patch locations refer to.
    overlap_mode : {'crop', 'average', 'hann', 'gaussian'}
        ``'crop'`` keeps each voxel from the patch whose centre region holds it (half the
        overlap is trimmed from inner sides); ``'average'`` is a plain mean; ``'hann'`` and
        ``'gaussian'`` (nnU-Net, sigma = patch / 8) are weighted means without seams. The
        weighted modes divide by the true sum of weights, so borders are exact.
    patch_overlap : int or tuple of 3 int
        The sampler's overlap, needed by ``'crop'``.
    output_shape : tuple of 3 int, optional
        Spatial shape of outputs that are spatially smaller (or larger) than the patches,
        e.g. ``spatial_shape // 2`` for a stride-2 network; locations are scaled with
        ``PatchLocation.scaled``. Outputs of the patches' size always use ``spatial_shape``.
    device : torch.device or str, optional
        Where buffers live and accumulation happens; default: the first batch's device.
    dtype : torch.dtype, optional
        Accumulation dtype; default float32 (float64 for float64 batches; the batch dtype in
        crop mode).

    Notes
    -----
    One single-channel weight volume is kept per output resolution, whatever the number of
    channels. ``get_output`` before any ``add_batch`` raises ``RuntimeError``. Voxels no patch
    has reached yet are 0, so partial outputs are usable previews. Patches may extend past
    the volume (padded grids); the parts outside are ignored.

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import GridSampler, ScalarImage, Subject
    >>> subject = Subject(t1=ScalarImage(torch.rand(1, 8, 8, 8)))
    >>> sampler = GridSampler(subject, patch_size=4, patch_overlap=2)
    >>> aggregator = PatchAggregator(subject.spatial_shape, "hann", patch_overlap=2)
    >>> for patch in sampler:
    ...     aggregator.add_batch(patch.t1.data[None], [patch.patch_location])
    >>> torch.allclose(aggregator.get_output(), subject.t1.data)
    True
    """

    def __init__(
        self,
        spatial_shape: Sequence[int],
        overlap_mode: OverlapMode = "crop",
        patch_overlap: int | Sequence[int] = 0,
        output_shape: Sequence[int] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.spatial_shape = to_triplet(spatial_shape, "spatial_shape")
        if overlap_mode not in OVERLAP_MODES:
            raise ValueError(f"overlap_mode must be one of {OVERLAP_MODES}, got {overlap_mode!r}")
        self.overlap_mode = overlap_mode
        self.patch_overlap = to_triplet(patch_overlap, "patch_overlap", minimum=0)
        if any(o % 2 for o in self.patch_overlap):
            raise ValueError(f"patch_overlap must be even, got {patch_overlap!r}")
        self.output_shape = (
            None if output_shape is None else to_triplet(output_shape, "output_shape")
        )
        self.device = None if device is None else torch.device(device)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self._outputs: dict[str, _Output] = {}
        self._weights: dict[tuple[Any, ...], torch.Tensor] = {}
        self._padded = False

    # ------------------------------------------------------------------ public
    def add_batch(
        self,
        batch: torch.Tensor | Mapping[str, torch.Tensor],
        locations: Sequence[PatchLocation] | PatchLocation | torch.Tensor,
    ) -> None:
        """Add model outputs for a batch of patches.

        Parameters
        ----------
        batch : torch.Tensor or dict of str to torch.Tensor
            ``(B, C, I', J', K')`` outputs (or a dict of them, same keys every batch).
        locations : list of PatchLocation
            One location per batch item, in input-volume coordinates.
        """
        tensors = {key: value.detach() for key, value in self._as_dict(batch).items()}
        batch_size = next(iter(tensors.values())).shape[0]
        locs = _as_locations(locations, batch_size)
        for loc in locs:
            if not loc.intersects(self.spatial_shape):
                raise ValueError(f"location {loc} lies outside the volume {self.spatial_shape}")
        if any(not loc.inside(self.spatial_shape) for loc in locs):
            self._padded = True
        updated_weights: set[tuple[Any, ...]] = set()
        for key, tensor in tensors.items():
            scaled = self._scaled_locations(key, tensor, locs)
            output = self._buffer(key, tensor, locs[0])
            if self.overlap_mode == "crop":
                self._add_crop(output, tensor, locs, scaled)
            else:
                add_weight = output.weight_key not in updated_weights
                self._add_weighted(output, tensor, scaled, add_weight)
                updated_weights.add(output.weight_key)

    def get_output(self, key: str | None = None) -> torch.Tensor:
        """The aggregated ``(C, I, J, K)`` volume (a new tensor), named ``key`` for dicts."""
        output = self._output(key)
        if self.overlap_mode == "crop":
            return output.values.clone()
        weight = self._weights[output.weight_key]
        return torch.where(weight > 0, output.values / weight, torch.zeros((), dtype=weight.dtype))

    @property
    def keys(self) -> list[str]:
        """Names of the outputs added as dicts (empty for plain tensors)."""
        return [key for key in self._outputs if key != _PLAIN]

    # ------------------------------------------------------------------ checks
    def _as_dict(self, batch: object) -> dict[str, torch.Tensor]:
        if isinstance(batch, torch.Tensor):
            tensors = {_PLAIN: batch}
        elif isinstance(batch, Mapping) and batch:
            tensors = dict(batch)
        else:
            raise TypeError(f"batch must be a 5D tensor or a dict of them, got {type(batch)}")
        for key, tensor in tensors.items():
            name = "batch" if key == _PLAIN else f"batch[{key!r}]"
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor)}")
            if tensor.ndim != 5:
                raise ValueError(
                    f"{name} must be 5D (B, C, I, J, K), got shape {tuple(tensor.shape)}"
                )
        if self._outputs and set(tensors) != set(self._outputs):
            raise ValueError(
                f"batch keys {sorted(tensors)} differ from the earlier"
                f" batches' {sorted(self._outputs)}"
            )
        return tensors

    def _scaled_locations(
        self, key: str, tensor: torch.Tensor, locations: list[PatchLocation]
    ) -> list[PatchLocation]:
        patch_shape = tuple(tensor.shape[-3:])
        size = locations[0].size
        if any(q % p and p % q for q, p in zip(patch_shape, size)):
            raise ValueError(
                f"output patches of shape {patch_shape} do not match location {locations[0]}:"
                " the output size must be an integer multiple or divisor of the patch size"
            )
        factor = tuple(q / p for q, p in zip(patch_shape, size))
        scaled = []
        for loc in locations:
            target = loc.scaled(factor)
            if target.size != patch_shape or loc.size != size:
                raise ValueError(
                    f"output patches of shape {patch_shape} do not match location {loc}"
                    f" scaled by {factor}"
                )
            scaled.append(target)
        if key in self._outputs and self._outputs[key].factor != factor:
            raise ValueError(
                f"output {key!r} changed scale from {self._outputs[key].factor} to {factor}"
            )
        return scaled

    # ------------------------------------------------------------------ buffers
    def _target_shape(self, factor: tuple[float, ...]) -> TypeTriplet:
        if all(f == 1 for f in factor):
            return self.spatial_shape
        if self.output_shape is not None:
            return self.output_shape
        i, j, k = (int(s * f) for s, f in zip(self.spatial_shape, factor))
        return (i, j, k)

    def _buffer(self, key: str, tensor: torch.Tensor, location: PatchLocation) -> _Output:
        if key in self._outputs:
            output = self._outputs[key]
            if output.values.shape[0] != tensor.shape[1]:
                raise ValueError(
                    f"batch has {tensor.shape[1]} channels,"
                    f" earlier batches {output.values.shape[0]}"
                )
            return output
        factor = tuple(q / p for q, p in zip(tensor.shape[-3:], location.size))
        shape = self._target_shape(factor)
        device = self.device or tensor.device
        dtype = self._accumulation_dtype(tensor)
        values = torch.zeros((tensor.shape[1], *shape), dtype=dtype, device=device)
        weight_key = (shape, tuple(tensor.shape[-3:]))
        if self.overlap_mode != "crop" and weight_key not in self._weights:
            self._weights[weight_key] = torch.zeros((1, *shape), dtype=dtype, device=device)
        output = _Output(values, weight_key, factor)  # type: ignore[arg-type]
        self._outputs[key] = output
        return output

    def _accumulation_dtype(self, tensor: torch.Tensor) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        if self.overlap_mode == "crop":
            return tensor.dtype
        return torch.float64 if tensor.dtype == torch.float64 else torch.float32

    def _output(self, key: str | None) -> _Output:
        if not self._outputs:
            raise RuntimeError("get_output called before any add_batch: nothing aggregated yet")
        if key is None:
            if _PLAIN in self._outputs:
                return self._outputs[_PLAIN]
            if len(self._outputs) == 1:
                return next(iter(self._outputs.values()))
            raise ValueError(f"key is required when dicts were added; keys: {self.keys}")
        if key not in self._outputs:
            raise ValueError(f"key {key!r} is not an output; keys: {self.keys}")
        return self._outputs[key]

    # ------------------------------------------------------------------ modes
    def _add_weighted(
        self,
        output: _Output,
        tensor: torch.Tensor,
        locations: list[PatchLocation],
        add_weight: bool,
    ) -> None:
        values = output.values
        weight = self._weights[output.weight_key]
        size = locations[0].size
        window = blending_window(self.overlap_mode, size, values.dtype, str(values.device))
        tensor = tensor.to(device=values.device, dtype=values.dtype, non_blocking=True)
        for patch, loc in zip(tensor, locations):
            target, source = _clip(loc, values.shape[1:])
            values[(slice(None), *target)].addcmul_(
                patch[(slice(None), *source)], window[(slice(None), *source)]
            )
            if add_weight:
                weight[(slice(None), *target)].add_(window[(slice(None), *source)])

    def _add_crop(
        self,
        output: _Output,
        tensor: torch.Tensor,
        locations: list[PatchLocation],
        scaled: list[PatchLocation],
    ) -> None:
        values = output.values
        tensor = tensor.to(device=values.device, dtype=values.dtype, non_blocking=True)
        for patch, loc, target_loc in zip(tensor, locations, scaled):
            owned = self._owned(loc)
            target = tuple(
                slice(int(lo * f + 1e-9), int(hi * f + 1e-9))
                for (lo, hi), f in zip(owned, output.factor)
            )
            source = tuple(
                slice(t.start - ini, t.stop - ini) for t, ini in zip(target, target_loc.index)
            )
            values[(slice(None), *target)] = patch[(slice(None), *source)]

    def _owned(self, location: PatchLocation) -> list[tuple[int, int]]:
        """Per axis, the voxels ``[lo, hi)`` this patch owns in crop mode."""
        owned = []
        for axis, start in enumerate(location.index):
            size, patch = self.spatial_shape[axis], location.size[axis]
            overlap = self.patch_overlap[axis]
            plain = _intervals(size, patch, overlap, False) if patch <= size else {}
            padded = _intervals(size, patch, overlap, True)
            if start in padded and (self._padded or start not in plain):
                owned.append(padded[start])
            elif start in plain:
                owned.append(plain[start])
            else:  # not a grid location: trim half the overlap, keep inside the volume
                half = overlap // 2
                lo = min(max(start + (half if start > 0 else 0), 0), size)
                hi = min(max(start + patch - (half if start + patch < size else 0), lo), size)
                owned.append((lo, hi))
        return owned


def _intervals(size: int, patch: int, overlap: int, padded: bool) -> dict[int, tuple[int, int]]:
    key = (size, patch, overlap, padded)
    if key not in _INTERVAL_CACHE:
        if len(_INTERVAL_CACHE) > 256:
            _INTERVAL_CACHE.clear()
        _INTERVAL_CACHE[key] = crop_intervals(size, patch, overlap, padded)
    return _INTERVAL_CACHE[key]


_INTERVAL_CACHE: dict[tuple[int, int, int, bool], dict[int, tuple[int, int]]] = {}


def _clip(
    location: PatchLocation, shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the volume and of the patch for the part of ``location`` inside ``shape``."""
    target, source = [], []
    for ini, fin, size in zip(location.index_ini, location.index_fin, shape):
        lo, hi = max(ini, 0), min(fin, size)
        target.append(slice(lo, hi))
        source.append(slice(lo - ini, hi - ini))
    return tuple(target), tuple(source)
