"""Zarr and OME-Zarr volumes as lazy napari layer data (nothing is read until drawn).

A plain zarr array opens as one image; an OME-Zarr image (0.4 / 0.5) opens as a multiscale
image with every level, placed with the ``scale`` and ``translation`` of its finest level.
Arrays are ``(I, J, K)`` or ``(C, I, J, K)`` (channels first, opened with ``channel_axis=0``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.lazy import multiscale_paths, open_zarr

LayerData = tuple[Any, dict[str, Any], str]


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """Whether the path names a zarr store (``….zarr``)."""
    return str(path).rstrip("/\\").lower().endswith(".zarr")


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
    import zarr

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
        **_placement(attributes, 3),
    }
    if len(levels) > 1:
        meta["multiscale"] = True
    data = levels if len(levels) > 1 else levels[0]
    if len(shape) == 4:
        meta["channel_axis"] = 0
    return [(data, meta, "image")]
