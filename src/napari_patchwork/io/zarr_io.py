"""Zarr and OME-Zarr: opening inputs, naming corrupt chunks, creating outputs.

This is the only module of the package that knows zarr (imported on first use: the module
itself loads without it). The core reads any array it can slice and writes to any sink it can
assign rows to; this module supplies the zarr side of both.

- Opening: :func:`open_zarr` opens a plain zarr array, or one level of an OME-Zarr image
  (0.4 / 0.5); :func:`layer_data_from_zarr` opens one lazily as napari layer data (every
  level, placed with the ``scale`` and ``translation`` of the finest one). Arrays are
  ``(I, J, K)`` or ``(C, I, J, K)`` (channels first, opened with ``channel_axis=0``).
- Reading: :func:`corrupt_chunk_error` turns a failed read of a zarr array into a
  :class:`CorruptChunkError` naming the store and the chunk.
- Writing: :class:`ZarrOutput` creates the arrays of one run under a temporary name beside
  the target (``.out.zarr.partial-<pid>``), renames the store when the run completes and
  removes it when the run fails; both the streamed single-process run and the dask engine
  create their outputs through it.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LayerData = tuple[Any, dict[str, Any], str]


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """Whether the path names a zarr store (``….zarr``).

    Examples
    --------
    >>> is_zarr_path("cells.ome.zarr/"), is_zarr_path("brain.nii.gz")
    (True, False)
    """
    return str(path).rstrip("/\\").lower().endswith(".zarr")


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading or writing zarr needs 'zarr': pip install napari-patchwork[zarr]"
        ) from error
    return zarr


def multiscale_paths(attributes: dict[str, Any]) -> list[str]:
    """Dataset paths of an OME-Zarr image, finest first (versions 0.4 and 0.5).

    Examples
    --------
    >>> multiscale_paths({"multiscales": [{"datasets": [{"path": "0"}, {"path": "1"}]}]})
    ['0', '1']
    >>> multiscale_paths({})
    []
    """
    multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
    if not multiscales:
        return []
    return [str(dataset["path"]) for dataset in multiscales[0].get("datasets", [])]


def open_zarr(path: str | os.PathLike[str], level: int = 0) -> Any:
    """Open a zarr array, or level ``level`` of an OME-Zarr multiscale image, for reading.

    Requires the optional ``zarr`` package (``pip install napari-patchwork[zarr]``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the store cannot be opened, is a group that is not an OME-Zarr image, or has no
        level ``level``.
    """
    zarr = _zarr()
    if not os.path.exists(path):
        raise FileNotFoundError(f"zarr path does not exist: '{path}'")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:
        raise ValueError(f"cannot open zarr store '{path}': {error}") from error
    if hasattr(node, "shape"):
        return node
    datasets = multiscale_paths(dict(node.attrs))
    if not datasets:
        raise ValueError(f"zarr group '{path}' is not an OME-Zarr image (no 'multiscales')")
    if not 0 <= level < len(datasets):
        raise ValueError(f"level must be in [0, {len(datasets) - 1}] for '{path}', got {level}")
    return node[datasets[level]]


def _placement(attributes: dict[str, Any], ndim: int) -> dict[str, Any]:
    multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
    if not multiscales:
        return {}
    placement = {}
    for transform in multiscales[0]["datasets"][0].get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            placement["scale"] = tuple(transform["scale"][-ndim:])
        elif transform.get("type") == "translation":
            placement["translate"] = tuple(transform["translation"][-ndim:])
    return placement


def layer_data_from_zarr(path: str | os.PathLike[str]) -> list[LayerData]:
    """Open a zarr array or OME-Zarr image lazily as napari layer data."""
    zarr = _zarr()
    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        levels, attributes = [node], {}
    else:
        attributes = dict(node.attrs)
        paths = multiscale_paths(attributes)
        levels = [open_zarr(path, level) for level in range(len(paths))]
        if not levels:
            raise ValueError(f"zarr group '{path}' is not an OME-Zarr image (no 'multiscales')")
    shape = tuple(levels[0].shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"zarr '{path}' has shape {shape}; expected (I, J, K) or (C, I, J, K)")
    meta: dict[str, Any] = {
        "name": Path(str(path).rstrip("/\\")).name.removesuffix(".zarr").removesuffix(".ome"),
        "metadata": {"path": str(path)},
        "rgb": False,  # volumes: a last axis of 3 or 4 voxels is slices, not colours
        **_placement(attributes, 3),
    }
    if len(levels) > 1:
        meta["multiscale"] = True
    data = levels if len(levels) > 1 else levels[0]
    if len(shape) == 4:
        meta["channel_axis"] = 0
    return [(data, meta, "image")]


# --- reading: corrupt chunks ------------------------------------------------------------


class CorruptChunkError(ValueError):
    """A chunk of a lazily read input cannot be read or decoded (truncated, garbage…).

    Parameters
    ----------
    store : str
        The input store (path or URL), as the user named it.
    chunk : tuple of int
        The chunk's index in the array's chunk grid.
    key : str, optional
        The chunk's key in the store (``'c/0/1/0/1'``).
    reason : str
        What the decoder said.

    Examples
    --------
    >>> error = CorruptChunkError("in.zarr", (0, 1, 0, 1), "c/0/1/0/1", "Zstd decompression error")
    >>> print(error)
    corrupt chunk (0, 1, 0, 1) ('c/0/1/0/1') of input 'in.zarr': Zstd decompression error
    """

    def __init__(self, store: str, chunk: tuple[int, ...], key: str | None, reason: str) -> None:
        self.store, self.chunk, self.key, self.reason = store, tuple(chunk), key, reason
        where = f" ({key!r})" if key else ""
        super().__init__(f"corrupt chunk {self.chunk}{where} of input {store!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable: dask sends it from worker processes
        return (type(self), (self.store, self.chunk, self.key, self.reason))


class _ZarrTaskNoise(logging.Filter):
    """Drops asyncio's "Task was destroyed but it is pending" for zarr's abandoned reads.

    When one chunk of a read fails, zarr abandons the other chunk tasks of that read; asyncio
    logs each one when it is collected. The failure itself is reported once, by us.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Task was destroyed but it is pending" in message and "zarr" in message)


_NOISE_FILTER = _ZarrTaskNoise()


def _quiet_zarr_task_noise() -> None:
    logger = logging.getLogger("asyncio")
    if _NOISE_FILTER not in logger.filters:
        logger.addFilter(_NOISE_FILTER)


def store_name(array: Any) -> str | None:
    """The path (or URL) of the store behind a zarr array, None for other arrays.

    Examples
    --------
    >>> store_name([1, 2]) is None
    True
    """
    store_path = getattr(array, "store_path", None)
    if store_path is None:
        return None
    root = getattr(getattr(store_path, "store", None), "root", None)
    inner = str(getattr(store_path, "path", "") or "")
    if root is not None:
        return os.path.join(str(root), inner) if inner else str(root)
    return str(store_path)


def _chunk_key(array: Any, chunk: tuple[int, ...]) -> str | None:
    encode = getattr(getattr(array, "metadata", None), "encode_chunk_key", None)
    try:
        return str(encode(chunk)) if encode is not None else None
    except Exception:  # pragma: no cover - metadata of another zarr version
        return None


def find_corrupt_chunk(array: Any, index: tuple[slice, ...]) -> tuple[int, ...] | None:
    """The first chunk of the zarr ``array`` under ``index`` that fails to read, or None.

    Reads the chunks one at a time (the diagnosis of a failed read, not the normal path).
    """
    chunks = getattr(array, "chunks", None)
    if chunks is None:
        return None
    shape = tuple(int(s) for s in array.shape)
    ranges = []
    for axis, size, chunk in zip(index, shape, chunks):
        start, stop, _ = axis.indices(size)
        ranges.append(range(start // chunk, max(stop - 1, start) // chunk + 1))
    for position in itertools.product(*ranges):
        region = tuple(
            slice(p * c, min((p + 1) * c, s)) for p, c, s in zip(position, chunks, shape)
        )
        try:
            array[region]
        except Exception:
            return tuple(position)
    return None


def corrupt_chunk_error(
    array: Any, index: tuple[slice, ...], error: BaseException
) -> CorruptChunkError | None:
    """What a failed ``array[index]`` means: the corrupt chunk of a zarr array, or None.

    None when ``array`` is not a zarr array or every chunk under ``index`` reads (the
    failure is then the caller's to re-raise as it is).

    Examples
    --------
    >>> corrupt_chunk_error([0, 1], (slice(0, 1),), OSError("disk")) is None
    True
    """
    store = store_name(array)
    if store is None:
        return None
    _quiet_zarr_task_noise()
    chunk = find_corrupt_chunk(array, index)
    if chunk is None:
        return None
    reason = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return CorruptChunkError(store, chunk, _chunk_key(array, chunk), reason)


# --- writing: outputs ---------------------------------------------------------------------


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Where a zarr output is written until complete: ``.name.partial-<pid>`` beside it.

    Examples
    --------
    >>> partial_path("/data/out.zarr").name.startswith(".out.zarr.partial-")
    True
    """
    target = Path(path)
    return target.parent / f".{target.name}.partial-{os.getpid()}"


def replace_with(partial: Path, target: Path, overwrite: bool) -> None:
    """Rename the complete ``partial`` store to ``target`` (replacing it if ``overwrite``).

    Raises
    ------
    ValueError
        If ``target`` exists and ``overwrite`` is False (``partial`` is removed).
    """
    if target.exists() and not overwrite:
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(f"output exists: '{target}' (pass overwrite=True to replace it)")
    old = target.parent / f".{target.name}.replaced-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)


def default_chunks(shape: Sequence[int]) -> tuple[int, int, int]:
    """64³ chunks of the last three axes (or the whole axis when shorter).

    Examples
    --------
    >>> default_chunks((2, 300, 40, 64))
    (64, 40, 64)
    """
    return (min(64, shape[-3]), min(64, shape[-2]), min(64, shape[-1]))


class ZarrOutput:
    """The zarr store of one run: created under its partial name, renamed when complete.

    Each output of the model is one array: at ``path`` for a model returning one tensor
    (``name`` None), else one array per key in a group at ``path``. Arrays are float32
    ``(C, I, J, K)``, or uint8 ``(1, I, J, K)`` label maps with ``labels``.

    Parameters
    ----------
    path : path
        The output store.
    existing : bool
        The store exists already (a block of a dask run, ``path`` being the run's partial
        store): :meth:`create` opens its arrays for writing, :meth:`commit` renames nothing
        and :meth:`discard` removes nothing.
    chunks : tuple of 3 int, optional
        Spatial chunks (default: the ``chunk_rows`` given to :meth:`create`, 64 in-plane).
    overwrite : bool
        Replace an existing store once the new one is complete.
    labels : bool
        Create uint8 one-channel label maps instead of float32 arrays.
    attributes : dict, optional
        Written to the attributes of every array created.

    Raises
    ------
    ValueError
        If ``path`` exists and neither ``existing`` nor ``overwrite`` is set.

    Examples
    --------
    >>> import tempfile
    >>> store = ZarrOutput(f"{tempfile.mkdtemp()}/out.zarr")
    >>> array = store.create(2, (8, 4, 4), None, chunk_rows=4)
    >>> array[:, 0:4] = 1.0
    >>> result = store.commit([None])[None]
    >>> result.shape, result.chunks, float(result[0, 0, 0, 0])
    ((2, 8, 4, 4), (2, 4, 4, 4), 1.0)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        existing: bool = False,
        chunks: tuple[int, int, int] | None = None,
        overwrite: bool = False,
        labels: bool = False,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        self.path, self.existing, self.overwrite, self.labels = (
            Path(path),
            existing,
            overwrite,
            labels,
        )
        self.chunks, self.attributes = chunks, dict(attributes or {})
        self.partial = partial_path(path)
        if not existing and self.path.exists() and not overwrite:
            raise ValueError(f"output exists: '{self.path}' (pass overwrite=True to replace it)")

    def create(
        self, channels: int, shape: tuple[int, int, int], name: str | None, chunk_rows: int
    ) -> Any:
        """The array of output ``name`` with ``channels`` channels over ``shape`` voxels.

        Raises
        ------
        ValueError
            If a label map would need more than 256 classes, or ``name`` cannot name a
            zarr array.
        """
        zarr = _zarr()
        if self.existing:
            return zarr.open_array(self._node(self.path, name), mode="r+")
        if self.labels and channels > 256:
            raise ValueError(
                f"a uint8 label map holds at most 256 classes; the model has {channels}"
            )
        chunks = self.chunks or (min(chunk_rows, shape[0]), *default_chunks(shape)[1:])
        settings: dict[str, Any] = {
            "shape": (1 if self.labels else channels, *shape),
            "chunks": (1 if self.labels else channels, *chunks),
            "dtype": "uint8" if self.labels else "float32",
        }
        if self.attributes:
            settings["attributes"] = self.attributes
        if name is None:
            return zarr.create_array(str(self.partial), overwrite=True, **settings)
        group = zarr.open_group(str(self.partial), mode="a")
        try:
            return group.create_array(name, **settings)
        except (ValueError, TypeError) as error:
            message = f"the model's output {name!r} cannot name a zarr array: {error}"
            raise ValueError(message) from None

    def commit(self, names: Sequence[str | None]) -> dict[str | None, Any]:
        """Rename the complete store to ``path``; the finished arrays by output name."""
        zarr = _zarr()
        if not self.existing:
            replace_with(self.partial, self.path, self.overwrite)
        return {name: zarr.open_array(self._node(self.path, name), mode="r") for name in names}

    def discard(self) -> None:
        """Remove the partial store (a failed or cancelled run)."""
        if not self.existing:
            shutil.rmtree(self.partial, ignore_errors=True)

    @staticmethod
    def _node(root: Path, name: str | None) -> str:
        return str(root if name is None else root / name)


__all__ = [
    "CorruptChunkError",
    "ZarrOutput",
    "corrupt_chunk_error",
    "default_chunks",
    "is_zarr_path",
    "layer_data_from_zarr",
    "multiscale_paths",
    "open_zarr",
    "partial_path",
    "replace_with",
    "store_name",
]
