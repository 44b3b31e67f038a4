"""Gathering patches from a resident volume: slicing inside, index mapping at padded borders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .lazy import LazyVolume
from .location import PatchLocation

_STATISTICS = {
    "mean": lambda v: v.float().mean(),
    "median": lambda v: v.float().median(),
    "minimum": lambda v: v.min(),
    "maximum": lambda v: v.max(),
}


def _map_indices(indices: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Map out-of-range indices into ``[0, size)`` as numpy's ``pad`` modes do."""
    if mode == "wrap":
        return indices % size
    if mode == "reflect" and size > 1:
        period = 2 * (size - 1)
        folded = indices.abs() % period
        return torch.where(folded >= size, period - folded, folded)
    if mode == "symmetric":
        folded = indices % (2 * size)
        return torch.where(folded >= size, 2 * size - 1 - folded, folded)
    return indices.clamp(0, size - 1)  # edge, and the in-range part of constant modes


class PatchGatherer:
    """Copies patches of a ``(C, I, J, K)`` volume into batch buffers, padding at borders.

    Patches inside the volume are plain slice copies (with dtype conversion on the fly, so an
    integer volume is never copied whole); patches crossing the border gather mapped indices
    (``'edge'``, ``'reflect'``, ``'symmetric'``, ``'wrap'``) or fill with a constant (a number,
    ``'constant'`` with ``fill``, or a statistic of the volume).

    Examples
    --------
    >>> volume = torch.arange(4.0).reshape(1, 4, 1, 1)
    >>> gatherer = PatchGatherer(volume, "reflect")
    >>> gatherer.gather([PatchLocation((-2, 0, 0), (3, 1, 1))])[0, 0, :, 0, 0].tolist()
    [2.0, 1.0, 0.0]
    """

    def __init__(
        self,
        volume: torch.Tensor | LazyVolume,
        padding_mode: str | float | None = None,
        fill: float = 0.0,
    ) -> None:
        self.volume = volume
        self.mode: str | None = None
        self.fill = float(fill)
        if isinstance(padding_mode, (int, float)) and not isinstance(padding_mode, bool):
            self.fill = float(padding_mode)
        elif padding_mode in _STATISTICS:
            if not isinstance(volume, torch.Tensor):
                raise ValueError(
                    f"padding_mode={padding_mode!r} needs the whole volume in memory;"
                    " for lazily read volumes use a number, 'constant' or a numpy pad mode"
                )
            self.fill = float(_STATISTICS[str(padding_mode)](volume))
        elif padding_mode is not None and padding_mode != "constant":
            self.mode = str(padding_mode)

    def gather(
        self,
        locations: Sequence[PatchLocation],
        out: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Return ``(B, C, I, J, K)`` patches, written into ``out[:B]`` when given."""
        size = locations[0].size
        if out is None:
            out = torch.empty((len(locations), self.volume.shape[0], *size), dtype=dtype)
        batch = out[: len(locations)]
        shape = self.volume.shape[1:]
        for patch, location in zip(batch, locations):
            if location.inside(shape):
                patch.copy_(self.volume[(slice(None), *location.to_slices())])
            else:
                self._gather_border(patch, location)
        return batch

    def _gather_border(self, patch: torch.Tensor, location: PatchLocation) -> None:
        shape = self.volume.shape[1:]
        if self.mode is None:  # constant: fill, then copy the part inside
            patch.fill_(self.fill)
            target, source = [], []
            for ini, fin, size in zip(location.index_ini, location.index_fin, shape):
                lo, hi = max(ini, 0), min(fin, size)
                target.append(slice(lo - ini, hi - ini))
                source.append(slice(lo, hi))
            if all(t.start < t.stop for t in target):
                patch[(slice(None), *target)].copy_(self.volume[(slice(None), *source)])
            return
        mapped = [
            _map_indices(torch.arange(ini, fin), size, self.mode)
            for ini, fin, size in zip(location.index_ini, location.index_fin, shape)
        ]
        bounds = tuple(slice(int(i.min()), int(i.max()) + 1) for i in mapped)
        region = self.volume[(slice(None), *bounds)]  # a view of a tensor; one read if lazy
        for axis, indices in enumerate(mapped):
            region = region.index_select(axis + 1, indices - int(indices.min()))
        patch.copy_(region)


class PaddedVolume:
    """A lazily read volume seen through padding: ``(C, I + 2b, J + 2b, K + 2b)``, read on demand.

    Reads become patch gathers on the source (index mapping at the borders), so padding a
    zarr-backed image costs nothing until a patch is read.

    Examples
    --------
    >>> import numpy as np
    >>> padded = PaddedVolume(LazyVolume(np.arange(4.0).reshape(4, 1, 1)), (2, 0, 0), "reflect")
    >>> padded.shape, padded[:, 0:3, 0:1, 0:1].ravel().tolist()
    ((1, 8, 1, 1), [2.0, 1.0, 0.0])
    """

    def __init__(
        self,
        source: LazyVolume,
        border: Sequence[int],
        padding_mode: str | float,
        fill: float = 0.0,
    ) -> None:
        self.source, self.border = source, tuple(int(b) for b in border)
        self.gatherer = PatchGatherer(source, padding_mode, fill)
        self.shape = (source.shape[0], *(s + 2 * b for s, b in zip(source.spatial_shape, border)))
        self.dtype = source.dtype
        self._torch_dtype = source.read(slice(0, 1), slice(0, 1), slice(0, 1)).dtype

    def __getitem__(self, index: tuple[slice, ...]) -> Any:
        channels, *spatial = index
        ranges = [range(*axis.indices(size)) for axis, size in zip(spatial, self.shape[1:])]
        location = PatchLocation(
            [r.start - b for r, b in zip(ranges, self.border)], [len(r) for r in ranges]
        )
        patch = self.gatherer.gather([location], dtype=self._torch_dtype)[0]
        return patch[channels].numpy()
