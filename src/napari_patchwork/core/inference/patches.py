"""Gathering patches from a resident volume: slicing inside, index mapping at padded borders."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from napari_patchwork.core._validation import check_padding_mode
from napari_patchwork.core.data.lazy import LazyVolume
from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.inference.box import box_view, is_plain
from napari_patchwork.core.types import TypeDType

_NUMPY_DTYPES: dict[torch.dtype, np.dtype[Any]] = {}


def _numpy_dtype(dtype: TypeDType) -> np.dtype[Any]:
    if isinstance(dtype, torch.dtype):
        if dtype not in _NUMPY_DTYPES:  # checked once per run: keep it off the run's time
            _NUMPY_DTYPES[dtype] = torch.empty(0, dtype=dtype).numpy().dtype
        return _NUMPY_DTYPES[dtype]
    kind: np.dtype[Any] = np.dtype(dtype)
    return kind


def _triplet(values: Sequence[int]) -> tuple[int, int, int]:
    a, b, c = values
    return (int(a), int(b), int(c))


def constant_fits(value: float, dtype: TypeDType) -> bool:
    """Whether the padding constant ``value`` is held exactly by ``dtype`` (numpy or torch).

    Examples
    --------
    >>> constant_fits(-1000, np.uint8), constant_fits(-1000, np.int16), constant_fits(0.5, "int32")
    (False, True, False)
    """
    kind = _numpy_dtype(dtype)
    value = float(value)
    if kind.kind == "b":
        return value in (0.0, 1.0)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        return value.is_integer() and info.min <= value <= info.max
    if kind.kind == "f":
        return not np.isfinite(value) or abs(value) <= float(np.finfo(kind).max)
    return False


def dtype_holding(value: float, dtype: TypeDType) -> np.dtype[Any]:
    """The smallest promotion of ``dtype`` that holds the constant ``value`` (numpy dtype).

    Examples
    --------
    >>> dtype_holding(-1000, np.uint8), dtype_holding(0.5, np.uint8), dtype_holding(3, np.float32)
    (dtype('int16'), dtype('float32'), dtype('float32'))
    """
    kind = _numpy_dtype(dtype)
    if constant_fits(value, kind):
        return kind
    value = float(value)
    if value.is_integer() and kind.kind in "biu":
        promoted = np.promote_types(kind, np.min_scalar_type(int(value)))
        if constant_fits(value, promoted):
            return promoted
    return np.promote_types(kind, np.float32 if abs(value) < 3e38 else np.float64)


def check_constant_fits(value: float, dtype: TypeDType, what: str) -> None:
    """Refuse a padding constant that would wrap or overflow in ``dtype``.

    Raises
    ------
    ValueError
        ``"padding constant -1000 does not fit <what> of dtype uint8"``.
    """
    if not constant_fits(value, dtype):
        shown = int(value) if float(value).is_integer() else value
        raise ValueError(
            f"padding constant {shown} does not fit {what} of dtype {_numpy_dtype(dtype)};"
            " use a constant in the dtype's range (e.g. 0 for label maps)"
        )


_STATISTICS: dict[str, Callable[[np.ndarray[Any, Any]], Any]] = {
    "mean": np.mean,
    "median": np.median,
    "minimum": np.min,
    "maximum": np.max,
}


def _statistic(volume: torch.Tensor, mode: str) -> float:
    """``np.mean``/``np.median``/``np.min``/``np.max`` of the whole volume (as ``np.pad``)."""
    try:
        array = volume.detach().cpu().numpy()
    except TypeError:  # a dtype numpy lacks (bfloat16)
        array = volume.detach().cpu().float().numpy()
    return float(_STATISTICS[mode](array))


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

    The one padding implementation of the package: :func:`pad_volume` (and through it
    ``GridSampler``'s padding) gathers the padded volume as one patch; the values are those
    of ``np.pad`` in every mode.

    Parameters
    ----------
    volume : torch.Tensor or LazyVolume
        ``(C, I, J, K)`` voxels.
    padding_mode : str or float, optional
        None or ``'constant'`` (fill with ``fill``), a number (fill with it), ``'edge'``,
        ``'reflect'``, ``'symmetric'``, ``'wrap'`` (as ``np.pad``), or ``'mean'``,
        ``'median'``, ``'minimum'``, ``'maximum'`` (fill with that statistic of the whole
        volume, which must then be in memory).
    fill : float
        The constant of ``'constant'`` (and of None, for patches crossing the border).
    cached : bool
        Read patches inside a lazily read volume through its slab cache.

    Patches inside the volume are plain slice copies (with dtype conversion on the fly, so an
    integer volume is never copied whole); patches crossing the border gather mapped indices
    (``'edge'``, ``'reflect'``, ``'symmetric'``, ``'wrap'``) or fill with a constant (a number,
    ``'constant'`` with ``fill``, or a statistic of the volume).

    A lazily read volume is read only where a patch lies (plus what its padding mirrors, as
    contiguous runs: a ``'wrap'`` border never reads the rows in between). With ``cached``
    (tiled inference, patches in rank order) patches inside the volume go through the
    volume's slab cache; without it (random access: samplers) each patch reads only its
    chunks.

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
        cached: bool = True,
    ) -> None:
        if not isinstance(volume, (torch.Tensor, LazyVolume)):
            raise TypeError(f"volume must be a torch.Tensor or a LazyVolume, got {type(volume)}")
        if len(volume.shape) != 4:
            raise ValueError(f"volume must be (C, I, J, K), got shape {tuple(volume.shape)}")
        check_padding_mode(padding_mode)
        if isinstance(fill, bool) or not isinstance(fill, (int, float, np.integer, np.floating)):
            raise TypeError(f"fill must be a number, got {fill!r}")
        self.volume = volume
        #: The volume where patches inside it are one view (box_view), else None.
        self._viewable = volume if isinstance(volume, torch.Tensor) and is_plain(volume) else None
        self.cached = cached
        self._fits: set[torch.dtype] = set()  # dtypes the padding constant was checked against
        self.mode: str | None = None
        self.fill = float(fill)
        self.statistic = padding_mode in _STATISTICS
        if isinstance(padding_mode, (int, float)) and not isinstance(padding_mode, bool):
            self.fill = float(padding_mode)
        elif self.statistic:
            if not isinstance(volume, torch.Tensor):
                raise ValueError(
                    f"padding_mode={padding_mode!r} needs the whole volume in memory;"
                    " for lazily read volumes use a number, 'constant' or a numpy pad mode"
                )
            self.fill = _statistic(volume, str(padding_mode))
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
        if self.mode is None and not self.statistic and batch.dtype not in self._fits:
            check_constant_fits(self.fill, batch.dtype, "the patches")  # a constant must fit
            self._fits.add(batch.dtype)
        shape = self.volume.shape[1:]
        volume = self._viewable
        for patch, location in zip(batch.unbind(0), locations):
            if not location.inside(shape):
                self._gather_border(patch, location)
            elif volume is not None:  # one view, not three slices (the hot path of a run)
                patch.copy_(box_view(volume, location.index, location.size))
            else:
                patch.copy_(self._region(location.to_slices()))
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
                patch[(slice(None), *target)].copy_(self._region(tuple(source), border=True))
            return
        mapped = [
            _map_indices(torch.arange(ini, fin), size, self.mode)
            for ini, fin, size in zip(location.index_ini, location.index_fin, shape)
        ]
        if isinstance(self.volume, torch.Tensor):
            bounds = tuple(slice(int(i.min()), int(i.max()) + 1) for i in mapped)
            region = self.volume[(slice(None), *bounds)]  # a view
            offsets = [int(i.min()) for i in mapped]
        else:
            region, offsets = self._read_runs(mapped), [0, 0, 0]
            mapped = [torch.searchsorted(torch.unique(i), i) for i in mapped]
        for axis, (indices, offset) in enumerate(zip(mapped, offsets)):
            region = region.index_select(axis + 1, indices - offset)
        patch.copy_(region)

    def _region(self, index: Sequence[slice], border: bool = False) -> torch.Tensor:
        """``volume[:, *index]``: through the slab cache only for inside patches when cached."""
        volume = self.volume
        if isinstance(volume, LazyVolume):
            rows, columns, depth = index
            if not self.cached:
                return volume.read(rows, columns, depth)
            if border:
                return volume.cached_or_read(rows, columns, depth)
        return volume[(slice(None), *index)]

    def _read_runs(self, mapped: list[torch.Tensor]) -> torch.Tensor:
        """The voxels at the sorted unique mapped indices of each axis, read run by run."""
        uniques = [torch.unique(indices) for indices in mapped]
        runs = [_runs(unique.tolist()) for unique in uniques]
        region: torch.Tensor | None = None
        for blocks in itertools.product(*runs):
            read = self._region([slice(lo, hi) for lo, hi, _ in blocks], border=True)
            if region is None:
                region = torch.empty((read.shape[0], *(len(u) for u in uniques)), dtype=read.dtype)
            at = [slice(p, p + hi - lo) for lo, hi, p in blocks]
            region[(slice(None), *at)] = read
        assert region is not None
        return region


def _runs(values: list[int]) -> list[tuple[int, int, int]]:
    """Contiguous runs ``(start, stop, position)`` of sorted unique integers.

    Examples
    --------
    >>> _runs([0, 1, 2, 7, 8])
    [(0, 3, 0), (7, 9, 3)]
    """
    runs: list[tuple[int, int, int]] = []
    for position, value in enumerate(values):
        if runs and runs[-1][1] == value:
            runs[-1] = (runs[-1][0], value + 1, runs[-1][2])
        else:
            runs.append((value, value + 1, position))
    return runs


def pad_volume(
    volume: torch.Tensor,
    border: Sequence[int],
    padding_mode: str | float,
    fill: float = 0.0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``volume`` ``(C, I, J, K)`` padded by ``border`` voxels on each side of each axis.

    The values of ``np.pad(volume, ((0, 0), *((b, b) for b in border)), mode)`` for the numpy
    modes; a number (or ``'constant'`` with ``fill``) pads with that constant, which must fit
    ``dtype`` (default: the volume's); a statistic mode pads with ``np.mean`` … ``np.max`` of
    the volume, cast to ``dtype`` as numpy casts. Gathered by :class:`PatchGatherer`.

    Examples
    --------
    >>> pad_volume(torch.arange(3).reshape(1, 3, 1, 1), (2, 0, 0), "reflect").ravel().tolist()
    [2, 1, 0, 1, 2, 1, 0]
    """
    if not isinstance(volume, torch.Tensor):
        raise TypeError(f"volume must be a torch.Tensor, got {type(volume)}")
    if len(border) != 3 or any(isinstance(b, bool) or int(b) != b or b < 0 for b in border):
        raise ValueError(f"border must be 3 ints >= 0, got {border!r}")
    gatherer = PatchGatherer(volume, padding_mode, fill)
    location = PatchLocation(
        _triplet([-int(b) for b in border]),
        _triplet([s + 2 * int(b) for s, b in zip(volume.shape[1:], border)]),
    )
    return gatherer.gather([location], dtype=volume.dtype if dtype is None else dtype)[0]


class PaddedVolume:
    """A lazily read volume seen through padding: ``(C, I + 2b, J + 2b, K + 2b)``, read on demand.

    Reads become patch gathers on the source (index mapping at the borders), so padding a
    zarr-backed image costs nothing until a patch is read. ``dtype`` (numpy) sets the dtype of
    what is read (e.g. one that holds a negative constant); reading raises ``ValueError`` when
    a constant does not fit it.

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
        dtype: npt.DTypeLike | None = None,
    ) -> None:
        self.source, self.border = source, tuple(int(b) for b in border)
        self.gatherer = PatchGatherer(source, padding_mode, fill, cached=False)
        self.shape = (source.shape[0], *(s + 2 * b for s, b in zip(source.spatial_shape, border)))
        read_dtype = source.read(slice(0, 1), slice(0, 1), slice(0, 1)).dtype
        self.dtype = source.dtype if dtype is None else np.dtype(dtype)
        self._torch_dtype = (
            read_dtype if dtype is None else torch.from_numpy(np.empty(0, np.dtype(dtype))).dtype
        )

    def __getitem__(self, index: tuple[slice, ...]) -> Any:
        channels, *spatial = index
        ranges = [range(*axis.indices(size)) for axis, size in zip(spatial, self.shape[1:])]
        location = PatchLocation(
            _triplet([r.start - b for r, b in zip(ranges, self.border)]),
            _triplet([len(r) for r in ranges]),
        )
        patch = self.gatherer.gather([location], dtype=self._torch_dtype)[0]
        return patch[channels].numpy()
