"""napari glue shared by the widgets: layer choices, placing result layers, parsing fields."""

from __future__ import annotations

from typing import Any

import numpy as np

OVERLAY = "napari_patchwork_overlay"  # metadata key marking layers our widgets draw


def layer_choices(viewer: Any, kind: type, allow_none: bool = False) -> Any:
    """A ``choices`` callable for a ComboBox listing the user's layers of one type."""

    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        found = [
            (layer.name, layer)
            for layer in viewer.layers
            if isinstance(layer, kind) and not layer.metadata.get(OVERLAY)
        ]
        return ([("none", None)] if allow_none else []) + found

    return choices


def watch_layers(viewer: Any, *combos: Any, on_first: Any = None) -> None:
    """Refresh layer ComboBoxes when layers come and go, without firing their callbacks.

    ``on_first`` runs when an inserted layer fills a ComboBox that was empty (the user opened
    the widget first, then the data). Removals never trigger redraws: while the viewer closes,
    a redraw would add layers back as fast as they are removed.
    """

    def refresh(event: Any) -> None:
        empty_before = [combo.value is None for combo in combos]
        for combo in combos:
            with combo.changed.blocked():
                combo.reset_choices()
        filled = any(
            empty and combo.value is not None for empty, combo in zip(empty_before, combos)
        )
        if event.type == "inserted" and filled and on_first is not None:
            on_first()

    viewer.layers.events.inserted.connect(refresh)
    viewer.layers.events.removed.connect(refresh)


_CREATION_ONLY = {"name", "vector_style", "blending", "colormap", "visible", "out_of_slice_display"}


def show_layer(
    viewer: Any,
    name: str,
    kind: str,
    data: Any,
    like: Any = None,
    create: bool = True,
    **kwargs: Any,
) -> Any:
    """Update the layer called ``name`` or add it, placed like layer ``like`` (scale, translate).

    With ``create=False`` (redraws driven by viewer events) only the data of an existing layer
    changes: a missing layer stays missing (the user removed it, or the viewer is closing), and
    placement is left alone (changing it fires the very events that called us).
    """
    if not create and name not in viewer.layers:
        return None
    placement = {}
    if like is not None:
        placement = {"scale": like.scale[-3:], "translate": like.translate[-3:]}
    if name in viewer.layers:
        layer = viewer.layers[name]
        if layer._type_string == kind:
            layer.data = data
            if create:
                for key, value in {**placement, **kwargs}.items():
                    current = np.asarray(getattr(layer, key, None), dtype=object)
                    if key not in _CREATION_ONLY and not np.array_equal(
                        current, np.asarray(value, dtype=object)
                    ):
                        setattr(layer, key, value)
            return layer
        viewer.layers.remove(layer)
    add = getattr(viewer, f"add_{kind}")
    metadata = {**kwargs.pop("metadata", {}), OVERLAY: True}
    return add(data, name=name, metadata=metadata, **placement, **kwargs)


def parse_size(text: str, name: str) -> int | tuple[int, int, int]:
    """'64' or '64, 64, 32' → an int or 3 ints (core validation does the rest)."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{name} must be 1 or 3 integers, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 3:
        return (values[0], values[1], values[2])
    raise ValueError(f"{name} must be 1 or 3 integers, got {text!r}")


def parse_label_probabilities(text: str) -> dict[int, float] | None:
    """'0: 0.5, 1: 0.5' → {0: 0.5, 1: 0.5}; empty → None (uniform foreground)."""
    text = str(text).strip()
    if not text:
        return None
    result = {}
    for item in text.split(","):
        label, _, weight = item.partition(":")
        try:
            result[int(label)] = float(weight)
        except ValueError:
            raise ValueError(
                f"label probabilities must look like '0: 0.5, 1: 0.5', got {text!r}"
            ) from None
    return result


def redraw_on_slice_change(viewer: Any, draw: Any) -> None:
    """Call ``draw(create=False)`` when the slice or the 2D/3D display changes (never re-entrant).

    Redraws change existing layers only, so the events they fire cannot add layers back.
    """
    busy = [False]

    def redraw(*_: Any) -> None:
        if busy[0]:
            return
        busy[0] = True
        try:
            draw(create=False)
        finally:
            busy[0] = False

    viewer.dims.events.current_step.connect(redraw)
    viewer.dims.events.ndisplay.connect(redraw)


def is_shown(viewer: Any, layer: Any) -> bool:
    """Whether ``layer`` is (still) one of the viewer's layers."""
    return layer is not None and any(existing is layer for existing in viewer.layers)


def slice_position(viewer: Any, layer: Any) -> tuple[int | None, int]:
    """The sliced data axis of a 3D layer and the current index on it (None in 3D view)."""
    if viewer.dims.ndisplay == 3:
        return None, 0
    not_displayed = [axis for axis in viewer.dims.not_displayed if axis >= viewer.dims.ndim - 3]
    if not not_displayed:
        return None, 0
    world_axis = not_displayed[-1]
    data_point = layer.world_to_data(viewer.dims.point)
    data_axis = world_axis - (viewer.dims.ndim - layer.ndim)
    return data_axis, int(round(float(np.asarray(data_point)[data_axis])))


def shape_of(layer: Any) -> tuple[int, int, int]:
    """The layer's 3D shape, without reading its data (multiscale: the finest level)."""
    shape = tuple(int(s) for s in layer.level_shapes[0]) if layer.multiscale else layer.data.shape
    if len(shape) != 3:
        raise ValueError(f"layer '{layer.name}' must be 3D, got shape {tuple(shape)}")
    return (shape[0], shape[1], shape[2])


def lazy_data_of(layer: Any) -> Any:
    """The layer's finest-level array as it is (numpy, zarr, dask…), without reading it."""
    data = layer.data[0] if layer.multiscale else layer.data
    shape_of(layer)  # 3D check
    return data


def volume_of(layer: Any) -> np.ndarray:
    """The layer's 3D data as a numpy array (channels of multi-channel images are refused)."""
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise ValueError(f"layer '{layer.name}' must be 3D, got shape {data.shape}")
    return data
