"""How the Patch grid draws in the viewer: its layers' names and colours, and Shapes layers of
lines kept one screen pixel wide (napari draws line widths in data units, so they follow the
image layer's transform and the camera zoom).

The user's active layer stays active while these layers are added (:func:`keep_active`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from napari.layers import Shapes

from ._grid_geometry import LINE_PIXELS, line_widths
from ._napari import OVERLAY, data_to_world_matrix, keep_above, placement_like

GRID_LAYER, OVERLAP_LAYER, SELECTED_LAYER = "patch grid", "patch overlap", "selected patch"
CURSOR_LAYER, SHARED_LAYER = "patch under cursor", "zones shared with neighbours"
LINE_COLOURS = {GRID_LAYER: "yellow", SELECTED_LAYER: "red", CURSOR_LAYER: "cyan"}


@contextmanager
def keep_active(viewer: Any) -> Iterator[None]:
    """Adding a layer makes it the active one; the user's active layer stays active."""
    active = viewer.layers.selection.active
    try:
        yield
    finally:
        if active is not None and any(layer is active for layer in viewer.layers):
            viewer.layers.selection.active = active


def place(layer: Any, placement: dict[str, Any]) -> None:
    """Move ``layer`` to ``placement``, setting only the keys that differ."""
    for key, value in placement.items():
        current = layer.affine.affine_matrix if key == "affine" else getattr(layer, key)
        if not np.allclose(np.asarray(current, float), np.asarray(value, float)):
            setattr(layer, key, value)


def camera(viewer: Any) -> Any:
    """The viewer's camera."""
    scene = getattr(viewer, "scene", None)  # napari >= 0.9 (viewer.camera is deprecated)
    return scene.camera if scene is not None else viewer.camera


def screen_widths(viewer: Any, like: Any, lines: np.ndarray) -> Any:
    """Per line (in the data of image layer ``like``), the data width one screen pixel wide."""
    displayed = [a - (viewer.dims.ndim - like.ndim) for a in viewer.dims.displayed]
    linear = data_to_world_matrix(like)[:3, :3]
    view_camera = camera(viewer)
    view = view_camera.view_direction if viewer.dims.ndisplay == 3 else None
    return line_widths(lines, linear, displayed, float(view_camera.zoom), view)


def show_lines(viewer: Any, like: Any, name: str, lines: np.ndarray, create: bool = True) -> None:
    """Update the Shapes layer of lines ``name`` (or add it, placed like ``like``).

    Shapes, not Vectors: only Shapes take one width per line, and on anisotropic voxels
    the lines along different axes need different data widths to look alike. Without
    ``create``, only a layer already there is updated.
    """
    if not create and name not in viewer.layers:
        return
    lines = np.asarray(lines, float).reshape(-1, 2, 3)
    widths = screen_widths(viewer, like, lines)
    colour = LINE_COLOURS[name]
    placement = placement_like(like)
    if name in viewer.layers and isinstance(viewer.layers[name], Shapes):
        layer = viewer.layers[name]
        drawn = np.asarray(layer.data, float).reshape(-1, 2, 3)
        if not np.array_equal(drawn, lines):  # 3D views do not change with the slice
            layer.data = []
            if len(lines):  # one triangulation, with the widths (not one per setter)
                layer.add_lines(list(lines), edge_width=widths, edge_color=colour)
        elif create and len(lines):  # same lines, maybe another placement: new widths
            layer.edge_width = widths
            layer.refresh()  # napari redraws edges on new widths only when asked
        if create:
            place(layer, placement)
            keep_above(viewer.layers, layer, like)
        return
    if name in viewer.layers:
        viewer.layers.remove(name)
    with keep_active(viewer):
        viewer.add_shapes(
            [(line, "line") for line in lines] or None,
            ndim=3,
            name=name,
            edge_width=widths or LINE_PIXELS,
            edge_color=colour,
            face_color="transparent",
            opacity=0.7 if name == GRID_LAYER else 1.0,
            metadata={OVERLAY: True},
            **placement,
        )


def refresh_widths(viewer: Any, like: Any) -> None:
    """New widths for the drawn lines, one screen pixel wide at the current zoom and view."""
    for name in (GRID_LAYER, SELECTED_LAYER, CURSOR_LAYER):
        if name in viewer.layers and isinstance(viewer.layers[name], Shapes):
            layer = viewer.layers[name]
            if layer.nshapes:
                layer.edge_width = screen_widths(viewer, like, np.asarray(layer.data, float))
                layer.refresh()
