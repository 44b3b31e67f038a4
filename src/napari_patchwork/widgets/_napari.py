"""napari glue shared by the widgets: layer choices, placing result layers, parsing fields."""

from __future__ import annotations

from typing import Any

import numpy as np


def layer_choices(viewer: Any, kind: type, allow_none: bool = False) -> Any:
    """A ``choices`` callable for a ComboBox listing the viewer's layers of one type."""

    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        found = [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]
        return ([("none", None)] if allow_none else []) + found

    return choices


def watch_layers(viewer: Any, *combos: Any) -> None:
    """Refresh layer ComboBoxes when layers are added, removed or renamed."""

    def refresh(*_: Any) -> None:
        for combo in combos:
            combo.reset_choices()

    viewer.layers.events.inserted.connect(refresh)
    viewer.layers.events.removed.connect(refresh)


def show_layer(
    viewer: Any, name: str, kind: str, data: Any, like: Any = None, **kwargs: Any
) -> Any:
    """Update the layer called ``name`` or add it, placed like layer ``like`` (scale, translate)."""
    placement = {}
    if like is not None:
        placement = {"scale": like.scale[-3:], "translate": like.translate[-3:]}
    if name in viewer.layers:
        layer = viewer.layers[name]
        if layer._type_string == kind:
            layer.data = data
            for key, value in {**placement, **kwargs}.items():
                if key not in ("name", "vector_style", "blending", "colormap"):
                    setattr(layer, key, value)
            return layer
        viewer.layers.remove(layer)
    add = getattr(viewer, f"add_{kind}")
    return add(data, name=name, **placement, **kwargs)


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


def volume_of(layer: Any) -> np.ndarray:
    """The layer's 3D data as a numpy array (channels of multi-channel images are refused)."""
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise ValueError(f"layer '{layer.name}' must be 3D, got shape {data.shape}")
    return data
