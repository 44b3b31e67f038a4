"""napari glue shared by the widgets: layer choices, placing result layers, parsing fields."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

OVERLAY = "napari_patchwork_overlay"  # metadata key marking layers our widgets draw


def layer_choices(viewer: Any, kind: type[Any], allow_none: bool = False) -> Any:
    """A ``choices`` callable for a ComboBox listing the user's layers of one type."""

    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        found = [
            (layer.name, layer)
            for layer in viewer.layers
            if isinstance(layer, kind) and not layer.metadata.get(OVERLAY)
        ]
        return ([("none", None)] if allow_none else []) + found

    return choices


def watch_layers(lifecycle: Lifecycle, viewer: Any, *combos: Any, on_first: Any = None) -> None:
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

    lifecycle.connect(viewer.layers.events.inserted, refresh)
    lifecycle.connect(viewer.layers.events.removed, refresh)


_CREATION_ONLY = {"name", "vector_style", "blending", "colormap", "visible"}
_PLACEMENT = ("scale", "translate", "rotate", "shear", "affine")


def _layer_class(kind: str) -> type[Any]:
    import napari.layers

    classes: dict[str, type[Any]] = {
        "image": napari.layers.Image,
        "labels": napari.layers.Labels,
        "vectors": napari.layers.Vectors,
        "points": napari.layers.Points,
    }
    return classes[kind]


def data_to_world_matrix(layer: Any) -> np.ndarray:
    """The ``4 × 4`` matrix of ``layer.data_to_world`` on its last three axes (public API only).

    napari composes ``affine ∘ translate ∘ rotate ∘ shear ∘ scale``; the matrix is read back by
    mapping the origin and the unit vectors, so every transform napari can hold is covered.
    """
    lead = [0.0] * (layer.ndim - 3)
    origin = np.asarray(layer.data_to_world([*lead, 0.0, 0.0, 0.0]), float)[-3:]
    matrix = np.eye(4)
    matrix[:3, 3] = origin
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.asarray(layer.data_to_world([*lead, *unit]), float)[-3:] - origin
    return matrix


def placement_like(
    like: Any, offset: Sequence[float] | None = None, leading_axes: int = 0
) -> dict[str, Any]:
    """Layer keywords that place a new layer exactly like layer ``like`` (the plugin's one rule).

    The new layer's ``data_to_world`` equals ``like``'s on the last three axes, shifted by
    ``offset`` voxels of ``like`` (an ROI crop starting there): ``new(x) = like(x + offset)``.
    A 3D input's own ``scale``, ``rotate``, ``shear`` and ``affine`` are copied (its translate
    absorbs the offset through them), so the user sees the same numbers on both layers. With
    ``leading_axes`` (channels first), those axes are placed at identity and the three spatial
    axes get the input's full transform as an ``affine``.
    """
    from napari.utils.transforms import Affine

    shift = np.zeros(3) if offset is None else np.asarray(offset, float)
    if like.ndim == 3 and leading_axes == 0:
        physical = Affine(scale=like.scale, rotate=like.rotate, shear=like.shear, ndim=3)
        return {
            "scale": tuple(like.scale),
            "translate": tuple(np.asarray(like.translate) + physical(shift)),
            "rotate": np.asarray(like.rotate),
            "shear": np.asarray(like.shear),
            "affine": like.affine.affine_matrix,
        }
    spatial = data_to_world_matrix(like)
    spatial[:3, 3] += spatial[:3, :3] @ shift
    matrix = np.eye(leading_axes + 4)
    matrix[leading_axes:, leading_axes:] = spatial
    return {"affine": matrix}


def show_layer(  # noqa: PLR0913
    viewer: Any,
    name: str,
    kind: str,
    data: Any,
    like: Any = None,
    create: bool = True,
    *,
    offset: Sequence[float] | None = None,
    overlay: bool = True,
    **kwargs: Any,
) -> Any:
    """Update the layer called ``name`` or add it, placed like layer ``like``.

    Placement follows :func:`placement_like` (``offset``: the voxel of ``like`` where this
    layer's data starts). ``overlay=False`` marks results a user may reuse as inputs (labels,
    probabilities): they are offered in the widgets' layer pickers; overlays (grid lines,
    boxes) are not. With ``create=False`` (redraws driven by viewer events) only the data of an
    existing layer changes: a missing layer stays missing (the user removed it, or the viewer
    is closing), and placement is left alone (changing it fires the very events that called us).
    """
    if not create and name not in viewer.layers:
        return None
    placement: dict[str, Any] = {}
    if like is not None:
        leading = max(0, np.ndim(data) - 3) if hasattr(data, "shape") else 0
        placement = placement_like(like, offset, leading)
    if name in viewer.layers:
        layer = viewer.layers[name]
        if isinstance(layer, _layer_class(kind)) and layer.ndim == len(np.shape(data)):
            layer.data = data
            if create:
                _update_properties(layer, {**placement, **kwargs})
                keep_above(viewer.layers, layer, like)
            return layer
        viewer.layers.remove(layer)
    add = getattr(viewer, f"add_{kind}")
    if kind == "image":  # a volume of 3 or 4 slices on its last axis is not colours
        kwargs.setdefault("rgb", False)
    metadata = {**kwargs.pop("metadata", {}), OVERLAY: overlay}
    return add(data, name=name, metadata=metadata, **placement, **kwargs)


def keep_above(layers: Any, layer: Any, like: Any) -> None:
    """Move a reused ``layer`` to the top if it lies below ``like`` (a grid drawn before on
    another image, which the user then opened or chose, was hidden under it). To the top,
    not just above ``like``: a widget's layers, reused in the order it made them, then stack
    as they did when made (the grid lines above their tint)."""
    if like is None:
        return
    try:
        index, below = layers.index(layer), layers.index(like)
    except ValueError:  # ``like`` is not (or no longer) in this viewer
        return
    if index < below:
        layers.move(index, len(layers))


def _update_properties(layer: Any, properties: dict[str, Any]) -> None:
    for key, value in properties.items():
        if key in _CREATION_ONLY:
            continue
        current = getattr(layer, key, None)
        if key == "affine" and current is not None:
            current = current.affine_matrix
        if not np.array_equal(np.asarray(current, dtype=object), np.asarray(value, dtype=object)):
            setattr(layer, key, value)


def redraw_values(layer: Any) -> None:
    """Redraw a layer whose values changed in place mid-run (same shape and placement).

    Only the displayed slice is redone: the extent (unchanged, and clearing it re-emits the
    transforms, 4 ms), the thumbnail (2 ms) and the label highlight wait for the final
    ``layer.refresh()``. Measured in the training widget's live previews: the handler's
    median 4.7 → 3.6 ms.
    """
    layer.refresh(thumbnail=False, extent=False, highlight=False)


class Lifecycle:
    """Everything one dock widget connected to the viewer, undone when the dock goes away.

    The dock goes away when napari removes it (its widget loses its parent), when its Qt
    widget is destroyed, or when the main window closes. Then ``on_close`` runs once (the
    widget cancels its worker there), every recorded connection is disconnected, and
    :attr:`closed` is set: worker results that arrive later must be dropped.
    Reopening the widget starts with a fresh set of connections.
    """

    def __init__(self, widget: Any, on_close: Callable[[], None] | None = None) -> None:
        from qtpy.QtCore import QEvent, QObject

        self.closed = False
        self._on_close = on_close
        self._undo: list[Callable[[], None]] = []
        lifecycle = self

        class Watcher(QObject):
            """Watches the widget (removed from its dock) and its windows (closed)."""

            watched_windows: set[int] = set()  # ids only: holding windows would leak viewers

            def eventFilter(self, watched: Any, event: Any) -> bool:  # noqa: N802 (Qt name)
                if lifecycle.closed:  # still installed on windows it watched: nothing to do
                    return False
                kind = event.type()
                if kind == QEvent.Type.ParentChange and watched is native:
                    if native.parent() is None:
                        lifecycle.close()
                if kind == QEvent.Type.ParentChange:  # the dock moved into a window: watch it
                    window = native.window()
                    if window is not native and id(window) not in self.watched_windows:
                        self.watched_windows.add(id(window))
                        window.installEventFilter(self)
                elif kind == QEvent.Type.Close and watched is not native and watched.isWindow():
                    if watched is native.window():  # the main window (or a floating dock)
                        lifecycle.close()
                return False

        native = widget.native
        self._widget = widget
        self._watcher = Watcher()
        native.installEventFilter(self._watcher)
        on_destroyed = lambda *_: lifecycle.close()  # noqa: E731
        native.destroyed.connect(on_destroyed)
        # once closed, no slot of ours runs from Qt any more: a closed viewer's widgets can be
        # collected later (widgets/_workers.py waits for the user's pause), and a `destroyed`
        # slot or event filter called from that collection crashed PyQt
        self._undo.append(lambda: native.destroyed.disconnect(on_destroyed))
        self._undo.append(lambda: native.removeEventFilter(self._watcher))

    def connect(self, emitter: Any, callback: Callable[..., Any]) -> None:
        """``emitter.connect(callback)``, disconnected on close."""
        emitter.connect(callback)
        self._undo.append(lambda: emitter.disconnect(callback))

    def add_mouse_callback(self, callbacks: list[Any], callback: Callable[..., Any]) -> None:
        """Append to a viewer callback list (e.g. ``mouse_drag_callbacks``), removed on close."""
        callbacks.append(callback)

        def remove() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        self._undo.append(remove)

    def close(self) -> None:
        """Run ``on_close`` and disconnect everything (idempotent)."""
        if getattr(self, "closed", True):  # True too while Python tears the object down
            return
        self.closed = True
        if self._on_close is not None:
            self._on_close()
        for undo in reversed(self._undo):
            try:
                undo()
            except (RuntimeError, ValueError, TypeError):  # already gone with the viewer
                pass
        self._undo.clear()
        self._disconnect_napari_choices()

    def _disconnect_napari_choices(self) -> None:
        """napari's ``add_dock_widget`` connects layer events to ``reset_choices``; undo that."""
        viewer = getattr(self._widget, "viewer", None)
        if viewer is None:
            return
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered, events.renamed):
            try:
                emitter.disconnect(self._widget.reset_choices)
            except (RuntimeError, ValueError, TypeError):
                pass


def message_label(label: str, value: str = "") -> Any:
    """A read-only text that wraps inside the dock's width and never widens the dock.

    Long texts (errors, lists) wrap over several lines; the dock keeps its width however long
    the text is, so napari never saves a huge window geometry.
    """
    from magicgui.widgets import Label
    from qtpy.QtWidgets import QSizePolicy

    widget = Label(label=label, value=value)
    widget.native.setWordWrap(True)
    widget.native.setMinimumWidth(1)
    policy = widget.native.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    widget.native.setSizePolicy(policy)
    return widget


def class_legend(layer: Any, values: Sequence[int]) -> str:
    """Rich text: a coloured square and the value of each class, in ``layer``'s colours."""
    items = []
    for value in values:
        rgba = np.asarray(layer.colormap.map(np.array([value])))[0]
        colour = "#" + "".join(f"{round(float(c) * 255):02x}" for c in rgba[:3])
        items.append(f'<span style="color:{colour}">■</span>&nbsp;{value}')
    return " &nbsp; ".join(items)


def summarise_ranks(ranks: Sequence[int], limit: int = 6) -> str:
    """'#3, #4' or, past ``limit``, '216 patches hold this voxel; ranks 0–215' (never long).

    Examples
    --------
    >>> summarise_ranks([1, 2])
    '2 patches hold this voxel: #1, #2'
    >>> summarise_ranks(list(range(216)))
    '216 patches hold this voxel; ranks 0–215'
    """
    ranks = sorted(ranks)
    if len(ranks) <= limit:
        noun = "patch holds" if len(ranks) == 1 else "patches hold"
        return f"{len(ranks)} {noun} this voxel: " + ", ".join(f"#{r}" for r in ranks)
    return f"{len(ranks)} patches hold this voxel; ranks {ranks[0]}–{ranks[-1]}"


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


def redraw_on_slice_change(lifecycle: Lifecycle, viewer: Any, draw: Any) -> None:
    """Call ``draw(create=False)`` when the slice or the 2D/3D display changes (never re-entrant).

    Redraws change existing layers only, so the events they fire cannot add layers back. A
    slice change fired by the draw itself (new lines can widen the slider's range, which
    moves the slice on an oblique scan) is drawn once more after it, at most twice, so
    what is drawn is the slice on screen.
    """
    busy, again = [False], [False]

    def redraw(*_: Any) -> None:
        if busy[0]:
            again[0] = True
            return
        busy[0] = True
        try:
            for _attempt in range(3):
                again[0] = False
                draw(create=False)
                if not again[0]:
                    break
        finally:
            busy[0] = False

    lifecycle.connect(viewer.dims.events.current_step, redraw)
    lifecycle.connect(viewer.dims.events.ndisplay, redraw)


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
    data_axis = world_axis - (viewer.dims.ndim - layer.ndim)
    return data_axis, int(round(sliced_index(layer, data_axis, viewer.dims.point[world_axis])))


def sliced_index(layer: Any, data_axis: int, world: float) -> float:
    """The data coordinate on ``data_axis`` of the slice napari shows of ``layer`` when that
    axis is sliced at the world coordinate ``world``.

    napari slices through the sliced axis alone (its slice input restricts ``world_to_data``
    to the axes not displayed): on an oblique scan, mapping the whole point instead gives
    another slice than the one on screen. ``world_to_data`` is affine: its diagonal entry and
    offset on that axis, from two public calls.
    """
    offset = float(np.asarray(layer.world_to_data(np.zeros(layer.ndim)))[data_axis])
    unit = np.zeros(layer.ndim)
    unit[data_axis] = 1.0
    gain = float(np.asarray(layer.world_to_data(unit))[data_axis]) - offset
    return offset + gain * float(world)


def voxel_on_screen(viewer: Any, layer: Any, position: Any) -> tuple[float, float, float]:
    """The data point of a 3D ``layer`` drawn at the world ``position`` (a mouse event's).

    In 3D, and for a scan whose axes are the world's, this is ``world_to_data``. In a 2D
    view of an oblique scan napari draws the slice :func:`slice_position` gives, placed by the
    displayed axes' part of the layer's transform alone: the point under the cursor is that
    slice and the displayed axes' part inverted (``world_to_data`` of the whole point lands
    off the slice on screen).
    """
    point = np.asarray(layer.world_to_data(position), float)[-3:]
    axis, index = slice_position(viewer, layer)
    if axis is None:
        return (float(point[0]), float(point[1]), float(point[2]))
    shown = [a for a in range(3) if a != axis]
    world_axes = [a + viewer.dims.ndim - 3 for a in shown]
    placed = displayed_block(layer, shown)
    if placed is None:
        return (float(point[0]), float(point[1]), float(point[2]))
    block, offset = placed
    world = np.asarray(position, float)[world_axes]
    point[shown] = np.linalg.solve(block, world - offset)
    point[axis] = index
    return (float(point[0]), float(point[1]), float(point[2]))


def axis_aligned(layer: Any) -> bool:
    """Whether the layer's voxel axes map onto the world's (no rotation, shear or swap): then
    napari's 2D slices are exact, and an offset along any axis stays out of the plane."""
    linear = data_to_world_matrix(layer)[:3, :3]
    scale = float(np.abs(linear).max()) or 1.0
    return bool(np.abs(linear - np.diag(np.diag(linear))).max() <= 1e-6 * scale)  # float32 noise


def displayed_block(layer: Any, shown: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The displayed axes' part of the layer's ``data_to_world`` (linear block, offset), or
    None where it cannot be inverted (a scan whose voxel axes are swapped against the world's:
    napari cannot draw its 2D slices faithfully either)."""
    matrix = data_to_world_matrix(layer)
    block = matrix[np.ix_(list(shown), list(shown))]
    if np.linalg.cond(block) > 1e8:
        return None
    return block, matrix[list(shown), 3]


def axis_to_anchor(viewer: Any, like: Any) -> int | None:
    """The data axis on which a layer covering part of ``like`` must start at voxel 0 to be
    drawn in place, or None (3D views, scans whose axes are the world's).

    napari draws a 2D slice by the displayed axes' part of a layer's transform: on an
    oblique scan an offset along the sliced axis moves the layer *within* the plane (by the
    scan's rotation; 11 world units for a patch 36 slices deep on the user test's scan).
    """
    axis, _ = slice_position(viewer, like)
    return None if axis is None or axis_aligned(like) else axis


def starting_on_the_slice_axis(
    viewer: Any, like: Any, data: np.ndarray, offset: Sequence[int]
) -> tuple[np.ndarray, list[int]]:
    """``(data, offset)`` of a 3D box layer placed like ``like``, padded with zeros to start
    at 0 on :func:`axis_to_anchor`'s axis, where it is drawn in place; else as they are."""
    axis = axis_to_anchor(viewer, like)
    if axis is None or offset[axis] == 0:
        return data, list(offset)
    widths = [(0, 0)] * data.ndim
    widths[data.ndim - 3 + axis] = (int(offset[axis]), 0)
    moved = [int(o) for o in offset]
    moved[axis] = 0
    return np.pad(data, widths), moved


def shape_of(layer: Any) -> tuple[int, int, int]:
    """The layer's 3D shape, without reading its data (multiscale: the finest level)."""
    shape = tuple(int(s) for s in layer.level_shapes[0]) if layer.multiscale else layer.data.shape
    if len(shape) != 3:
        raise ValueError(f"layer '{layer.name}' must be 3D, got shape {tuple(shape)}")
    return (shape[0], shape[1], shape[2])


def shape_or_none(layer: Any) -> tuple[int, int, int] | None:
    """:func:`shape_of` the chosen layer, None when none is chosen or it is not 3D (the
    widget's settings check says why)."""
    try:
        return None if layer is None else shape_of(layer)
    except ValueError:
        return None


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
