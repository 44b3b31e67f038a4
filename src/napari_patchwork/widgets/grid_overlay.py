"""Patch grid widget: the grid of ``GridSampler`` drawn over a volume, live.

With overlap, drawing every patch border gives a mesh in which no patch can be told apart. So
the plain grid is the *tiling*: one cell per patch, the voxels that patch owns when overlapping
predictions are cropped (``core.grid.crop_intervals``); its borders run through the middle of
the overlap zones. The patch under the cursor is outlined as a box, with the zones it shares
with its neighbours tinted, and every line is about one screen pixel wide whatever the voxel
size (napari draws line widths in data units, so they are recomputed from the layer's
transform and the camera zoom).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit
from napari.layers import Image, Shapes

from napari_patchwork.core.inference.grid import GridPlan, crop_intervals
from napari_patchwork.core.samplers.coverage import SeparableVolume, axis_coverage

from ..core.types import PADDING_MODES
from ._layers import boxes_to_vectors, grid_lines
from ._napari import (
    OVERLAY,
    Lifecycle,
    data_to_world_matrix,
    is_shown,
    layer_choices,
    message_label,
    placement_like,
    redraw_on_slice_change,
    shape_of,
    show_layer,
    slice_position,
    summarise_ranks,
    watch_layers,
)

GRID_LAYER, OVERLAP_LAYER, SELECTED_LAYER = "patch grid", "patch overlap", "selected patch"
CURSOR_LAYER, SHARED_LAYER = "patch under cursor", "zones shared with neighbours"
TILING, EDGES = "one cell per patch", "every patch edge"
LINE_PIXELS = 1.0  # width of every drawn line on screen
LINE_COLOURS = {GRID_LAYER: "yellow", SELECTED_LAYER: "red", CURSOR_LAYER: "cyan"}
CURSOR_HINT = "move the cursor over the image (2D view)"
CLICK_HINT = "click a voxel"

TOOLTIPS = {
    "image": "The 3D image the grid is planned on. Only its shape is read (huge, lazy and"
    " multiscale layers are fine).",
    "patch size": "Patch size in voxels: one number for all three axes (64) or three numbers"
    " separated by commas, one per axis (64, 64, 32). A text field so it takes both forms.",
    "patch overlap": "Voxels shared by neighbouring patches, even (half goes to each side of"
    " a border): one number (16) or one per axis (16, 16, 8). 0: patches tile the volume.",
    "padding": "none: patches stay inside the image. Otherwise the image is padded by half"
    " the patch overlap on each side and the grid covers the padded image (the mode only"
    " decides the padded values, not where the patches go).",
    "grid lines": f"{TILING}: the borders of the voxels each patch owns (where overlapping"
    f" predictions are cut), a readable grid. {EDGES}: the start and end of every patch.",
    "follow cursor": "Outline the patch under the cursor and tint the zones it shares with"
    " its neighbours (2D view).",
    "grid": "How many patches the grid has, per axis.",
    "tint": "What the tinted layers mean.",
    "under cursor": "The patch whose cell is under the cursor.",
    "selected": "Click a voxel to list the patches holding it (outlined in red).",
}


# ---------------------------------------------------------------------- pure helpers
def _triplet(text: str, label: str, minimum: int) -> tuple[int, int, int]:
    """'64' or '64, 64, 32' → three ints, with a message in the widget's words."""
    parts = str(text).replace(",", " ").split()
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 3):
        raise ValueError(
            f"{label} must be one whole number of voxels or three separated by commas"
            f" (e.g. 64 or 64, 64, 32), got {text!r}"
        )
    if any(v < minimum for v in values):
        least = "at least 1 voxel" if minimum == 1 else "0 voxels or more"
        raise ValueError(f"{label} must be {least} on every axis, got {text!r}")
    values = values * 3 if len(values) == 1 else values
    return (values[0], values[1], values[2])


def _voxels(values: Any) -> str:
    return " × ".join(str(int(v)) for v in values) + " voxels"


def _tiling(plan: GridPlan) -> list[list[tuple[int, int]]]:
    """Per axis, the ``[lo, hi)`` voxels each start owns (they partition the axis)."""
    return [
        list(crop_intervals(size, patch, overlap, plan.padded).values())
        for size, patch, overlap in zip(plan.spatial_shape, plan.patch_size, plan.patch_overlap)
    ]


def _lattice(borders: list[np.ndarray], sliced_axis: int | None, position: float) -> np.ndarray:
    """``(N, 2, 3)`` end points of full-length lines through per-axis borders.

    The cells of a product of intervals are outlined by the lines along each axis through
    every pair of borders of the other two (with ``sliced_axis``: the lines of that plane).
    """
    lines = []
    for direction in range(3):
        if direction == sliced_axis:
            continue
        across = [axis for axis in range(3) if axis != direction]
        values = [np.array([position], float) if a == sliced_axis else borders[a] for a in across]
        mesh = np.stack(np.meshgrid(*values, indexing="ij"), -1).reshape(-1, 2)
        ends = np.zeros((len(mesh), 2, 3))
        ends[:, :, across] = mesh[:, None, :]
        ends[:, 0, direction] = borders[direction][0]
        ends[:, 1, direction] = borders[direction][-1]
        lines.append(ends)
    return np.concatenate(lines) if lines else np.zeros((0, 2, 3))


def _ends(vectors: np.ndarray) -> np.ndarray:
    """napari vectors ``(start, step)`` → line end points ``(start, start + step)``."""
    vectors = np.asarray(vectors, float).reshape(-1, 2, 3)
    return np.stack([vectors[:, 0], vectors[:, 0] + vectors[:, 1]], 1)


def _line_widths(
    lines: np.ndarray,
    linear: np.ndarray,
    displayed: list[int],
    zoom: float,
    view: Any = None,
) -> Any:
    """Per line, the width in data units that napari draws ``LINE_PIXELS`` screen pixels wide.

    napari builds a line's mesh in *data* units: in 2D a band of total width ``w`` offset
    along the other displayed data axis, in 3D a tube of radius ``w`` around it. The mesh
    reaches the screen through the layer's linear transform ``M`` (restricted to the displayed
    axes) and the zoom (screen pixels per world unit). Across the line on screen (unit
    ``p``, perpendicular to the line and, in 3D, to the ``view`` direction) the mesh spans
    ``w · |(M e_b · p, M e_c · p)|`` (twice that for a tube), so ``w`` follows from it. On a
    0.5 × 3 mm plane the lines along one axis get a 6 times thinner width than the others.
    """
    if len(lines) == 0:
        return []
    block = linear[np.ix_(displayed, displayed)]
    directions = np.argmax(np.abs(lines[:, 1] - lines[:, 0]), axis=1)
    widths = np.full(len(lines), LINE_PIXELS / max(zoom, 1e-12))
    for axis in np.unique(directions):
        if axis not in displayed:
            continue
        along = block[:, displayed.index(axis)]
        along = along / np.linalg.norm(along)
        others = [block[:, i] for i, a in enumerate(displayed) if a != axis]
        if len(displayed) == 2:
            across, tube = np.array([-along[1], along[0]]), 1.0
        else:
            toward = np.asarray((1.0, 0.0, 0.0) if view is None else view, float)
            across, tube = np.cross(toward, along), 2.0
            if np.linalg.norm(across) < 1e-6:  # seen end-on: a dot, any width will do
                across = np.cross(others[0], along)
            across = across / np.linalg.norm(across)
        reach = float(np.sqrt(sum(float(o @ across) ** 2 for o in others)))
        widths[directions == axis] /= tube * max(reach, 1e-12)
    return widths.tolist()


def _coverage(plan: GridPlan) -> SeparableVolume:
    """Lazy volume of how many patches hold each voxel (a separable product, never stored)."""
    vectors = [c.numpy() for c in axis_coverage(plan)]
    most = int(np.prod([v.max() for v in vectors]))
    dtype = np.uint8 if most < 2**8 else np.uint16 if most < 2**16 else np.uint32
    return SeparableVolume(vectors, dtype=dtype)


def _legend(coverage: SeparableVolume) -> str:
    """What the tints mean: the numbers of patches that share a voxel somewhere (2, 4, 8…)."""
    per_axis = [np.unique(vector) for vector in coverage.vectors]
    products = {
        int(a) * int(b) * int(c) for a in per_axis[0] for b in per_axis[1] for c in per_axis[2]
    }
    shared = sorted(n for n in products if n > 1)
    listed = " / ".join(map(str, shared[:6])) + (" …" if len(shared) > 6 else "")
    overlap = (
        f"magenta ('{OVERLAP_LAYER}'): voxels in {listed} patches, brighter = more"
        if shared
        else f"no overlap: every voxel is in 1 patch ('{OVERLAP_LAYER}' stays dark)"
    )
    return f"{overlap}; cyan ('{SHARED_LAYER}'): where the patch under the cursor overlaps others"


def _hits(plan: GridPlan, ini: Any, fin: Any) -> list[list[int]]:
    """Per axis, the starts of the patches meeting the box ``[ini, fin)``."""
    return [
        [s for s in starts if s < f and s + p > i]
        for starts, p, i, f in zip(plan.starts, plan.patch_size, ini, fin)
    ]


@contextmanager
def _keep_active(viewer: Any) -> Iterator[None]:
    """Adding a layer makes it the active one; the user's active layer stays active."""
    active = viewer.layers.selection.active
    try:
        yield
    finally:
        if active is not None and any(layer is active for layer in viewer.layers):
            viewer.layers.selection.active = active


def _place(layer: Any, placement: dict[str, Any]) -> None:
    for key, value in placement.items():
        current = layer.affine.affine_matrix if key == "affine" else getattr(layer, key)
        if not np.allclose(np.asarray(current, float), np.asarray(value, float)):
            setattr(layer, key, value)


def _camera(viewer: Any) -> Any:
    scene = getattr(viewer, "scene", None)  # napari >= 0.9 (viewer.camera is deprecated)
    return scene.camera if scene is not None else viewer.camera


# ---------------------------------------------------------------------- widget
class PatchGridWidget(Container):
    """The patch grid of ``GridSampler`` over an image: one cell per patch, the patch under the
    cursor with the zones it shares with its neighbours, the overlap tint and the patch count.

    Click a voxel to list (and outline) the patches holding it.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer to draw in.

    Examples
    --------
    >>> viewer = napari.Viewer()  # doctest: +SKIP
    >>> viewer.add_image(np.zeros((40, 36, 32), np.float32), scale=(0.5, 0.5, 3))  # doctest: +SKIP
    >>> widget = PatchGridWidget(viewer)  # doctest: +SKIP
    >>> widget.patch_size.value, widget.patch_overlap.value = "16", "4"  # doctest: +SKIP
    >>> widget.info.value, widget.hover_voxel((20, 18, 16))  # doctest: +SKIP
    ('27 patches (3 × 3 × 3)', 13)
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=layer_choices(napari_viewer, Image))
        self.patch_size = LineEdit(label="patch size", value="64")
        self.patch_overlap = LineEdit(label="patch overlap", value="16")
        self.padding_mode = ComboBox(
            label="padding", choices=["none", *PADDING_MODES], value="none"
        )
        self.grid_lines = ComboBox(label="grid lines", choices=[TILING, EDGES], value=TILING)
        self.follow_cursor = CheckBox(label="follow cursor", value=True)
        self.info = message_label("grid")
        self.legend = message_label("tint")
        self.cursor = message_label("under cursor", CURSOR_HINT)
        self.selection = message_label("selected", CLICK_HINT)
        controls = [self.image, self.patch_size, self.patch_overlap, self.padding_mode]
        controls += [self.grid_lines, self.follow_cursor]
        self.extend([*controls, self.info, self.legend, self.cursor, self.selection])
        for widget in self:
            widget.tooltip = TOOLTIPS[widget.label]
        self.plan: GridPlan | None = None
        self.cursor_rank: int | None = None
        self.selected_ranks: list[int] = []
        self._tiles: list[list[tuple[int, int]]] = []
        self._coverage: SeparableVolume | None = None
        self.lifecycle = Lifecycle(self)
        watch_layers(self.lifecycle, napari_viewer, self.image, on_first=self.update)
        for control in controls:
            control.changed.connect(self.update)
        redraw_on_slice_change(self.lifecycle, napari_viewer, self._redraw)
        self.lifecycle.connect(napari_viewer.dims.events.order, self._on_order)
        camera = _camera(napari_viewer)
        self.lifecycle.connect(camera.events.zoom, self._refresh_widths)
        self.lifecycle.connect(camera.events.angles, self._refresh_widths)  # 3D: tubes
        self.lifecycle.add_mouse_callback(napari_viewer.mouse_drag_callbacks, self._on_click)
        self.lifecycle.add_mouse_callback(napari_viewer.mouse_move_callbacks, self._on_move)
        self.update()

    # ------------------------------------------------------------------ state
    def _plan(self) -> GridPlan:
        layer = self.image.value
        if layer is None:
            raise ValueError("add a 3D image layer")
        shape = shape_of(layer)  # the data is never read: huge and lazy volumes are fine
        patch = _triplet(self.patch_size.value, "patch size", 1)
        overlap = _triplet(self.patch_overlap.value, "patch overlap", 0)
        if any(o % 2 for o in overlap):
            raise ValueError(
                f"patch overlap must be even on every axis (half goes to each side of a"
                f" border), got {_voxels(overlap)}"
            )
        if any(o >= p for o, p in zip(overlap, patch)):
            raise ValueError(
                f"patch overlap ({_voxels(overlap)}) must be smaller than the patch size"
                f" ({_voxels(patch)})"
            )
        padded = self.padding_mode.value != "none"
        room = [s + (o if padded else 0) for s, o in zip(shape, overlap)]
        if any(p > r for p, r in zip(patch, room)):
            volume = "padded volume" if padded else "volume"
            raise ValueError(
                f"patch size {_voxels(patch)} is larger than the {volume} ({_voxels(room)}):"
                " use a smaller patch size" + ("" if padded else " or a padding")
            )
        return GridPlan(shape, patch, overlap, padded)

    def update(self, *_: Any) -> None:  # type: ignore[override]  # not magicgui's update(mapping)
        """Re-plan the grid from the controls and redraw everything."""
        try:
            self.plan = self._plan()
        except (ValueError, TypeError) as error:
            self.plan = None
            self.info.value = f"⚠ {error}"
            self.legend.value = ""
            self._clear_drawn()  # nothing drawn may contradict the settings shown
            return
        self._tiles = _tiling(self.plan)
        counts = " × ".join(map(str, self.plan.counts))
        self.info.value = f"{len(self.plan)} patches ({counts})"
        self._coverage = coverage = _coverage(self.plan)  # computed slice by slice when drawn
        with _keep_active(self.viewer):
            show_layer(
                self.viewer,
                OVERLAP_LAYER,
                "image",
                coverage,
                like=self.image.value,
                colormap="magenta",
                blending="additive",
                opacity=0.35,
                contrast_limits=(1, max(2, int(coverage.max()))),  # 1 patch: no tint
            )
        self.legend.value = _legend(coverage)
        self.cursor_rank = None
        self.selected_ranks = []
        self._redraw(create=True)
        self._show_cursor()
        self.selection.value = CLICK_HINT

    def _clear_drawn(self) -> None:
        for name in (GRID_LAYER, OVERLAP_LAYER, SELECTED_LAYER, CURSOR_LAYER, SHARED_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.cursor_rank, self.selected_ranks = None, []
        self.selection.value, self.cursor.value = CLICK_HINT, CURSOR_HINT

    # ------------------------------------------------------------------ drawing
    def _shown(self) -> bool:
        return (
            not self.lifecycle.closed
            and self.plan is not None
            and is_shown(self.viewer, self.image.value)
        )

    def _redraw(self, *_: Any, create: bool = False) -> None:
        """Lines of the grid, the selection and the cursor patch for the current slice."""
        if not self._shown():
            return
        assert self.plan is not None
        axis, position = slice_position(self.viewer, self.image.value)
        if self.grid_lines.value == TILING:
            borders = [
                np.array([lo for lo, hi in tiles if hi > lo] + [size], float) - 0.5
                for tiles, size in zip(self._tiles, self.plan.spatial_shape)
            ]
            grid = _lattice(borders, axis, position)
        else:
            grid = _ends(grid_lines(self.plan, axis, position))
        self._show_lines(GRID_LAYER, grid, create=create)
        self._show_lines(SELECTED_LAYER, self._box_lines(self.selected_ranks), create=False)
        cursor = [] if self.cursor_rank is None else [self.cursor_rank]
        self._show_lines(CURSOR_LAYER, self._box_lines(cursor), create=False)

    def _box_lines(self, ranks: list[int]) -> np.ndarray:
        """Outlines of these patches: rectangles in the current slice, wireframes in 3D."""
        if not ranks or self.plan is None or not self._shown():
            return np.zeros((0, 2, 3))
        axis, position = slice_position(self.viewer, self.image.value)
        locations = [self.plan.location(rank) for rank in ranks]
        ini = np.array([loc.index_ini for loc in locations])
        fin = np.array([loc.index_fin for loc in locations])
        if axis is not None:
            cut = (ini[:, axis] <= position) & (position < fin[:, axis])
            ini, fin = ini[cut], fin[cut]
        return _ends(boxes_to_vectors(ini, fin, axis, position))

    def _widths(self, lines: np.ndarray) -> Any:
        layer = self.image.value
        displayed = [a - (self.viewer.dims.ndim - layer.ndim) for a in self.viewer.dims.displayed]
        linear = data_to_world_matrix(layer)[:3, :3]
        camera = _camera(self.viewer)
        view = camera.view_direction if self.viewer.dims.ndisplay == 3 else None
        return _line_widths(lines, linear, displayed, float(camera.zoom), view)

    def _show_lines(self, name: str, lines: np.ndarray, create: bool = True) -> None:
        """Update the Shapes layer of lines ``name`` (or add it, placed like the image).

        Shapes, not Vectors: only Shapes take one width per line, and on anisotropic voxels
        the lines along different axes need different data widths to look alike.
        """
        viewer, like = self.viewer, self.image.value
        if not self._shown() or (not create and name not in viewer.layers):
            return
        lines = np.asarray(lines, float).reshape(-1, 2, 3)
        widths = self._widths(lines)
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
                _place(layer, placement)
            return
        if name in viewer.layers:
            viewer.layers.remove(name)
        with _keep_active(viewer):
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

    def _on_order(self, *_: Any) -> None:
        self._redraw()
        self._refresh_widths()  # 3D: the same lines, seen along another axis

    def _refresh_widths(self, *_: Any) -> None:
        """Keep every line one screen pixel wide when the user zooms (or turns a 3D view)."""
        if not self._shown():
            return
        for name in (GRID_LAYER, SELECTED_LAYER, CURSOR_LAYER):
            if name in self.viewer.layers and isinstance(self.viewer.layers[name], Shapes):
                layer = self.viewer.layers[name]
                if layer.nshapes:
                    layer.edge_width = self._widths(np.asarray(layer.data, float))
                    layer.refresh()

    # ------------------------------------------------------------------ cursor
    def _voxel_at(self, position: Any) -> tuple[int, ...]:
        layer = self.image.value
        return tuple(np.round(np.asarray(layer.world_to_data(position))[-3:]).astype(int))

    def _on_move(self, viewer: Any, event: Any) -> None:
        if not self._shown() or viewer.dims.ndisplay == 3 or not self.follow_cursor.value:
            return
        self.hover_voxel(self._voxel_at(event.position))

    def owner(self, voxel: tuple[int, ...]) -> int | None:
        """Rank of the patch whose cell (the voxels it owns) holds ``voxel``; None outside."""
        if self.plan is None or not all(0 <= v < s for v, s in zip(voxel, self.plan.spatial_shape)):
            return None
        index = [
            int(np.searchsorted([hi for _, hi in tiles], v, side="right"))
            for tiles, v in zip(self._tiles, voxel)
        ]
        _, count_j, count_k = self.plan.counts
        return index[0] * count_j * count_k + index[1] * count_k + index[2]

    def hover_voxel(self, voxel: tuple[int, ...]) -> int | None:
        """Outline the patch owning ``voxel`` and tint the zones it shares; returns its rank.

        What a mouse move over the image does (2D view); None (and nothing drawn) outside the
        volume or with invalid settings.
        """
        rank = self.owner(voxel) if self.follow_cursor.value else None
        if rank != self.cursor_rank:
            self.cursor_rank = rank
            self._show_cursor()
        return rank

    def _show_cursor(self) -> None:
        rank = self.cursor_rank
        if rank is None or self.plan is None or self._coverage is None or not self._shown():
            self.cursor.value = CURSOR_HINT
            self._show_lines(CURSOR_LAYER, np.zeros((0, 2, 3)), create=False)
            if SHARED_LAYER in self.viewer.layers:
                self.viewer.layers[SHARED_LAYER].data = np.zeros((1, 1, 1), np.uint8)
            return
        location = self.plan.location(rank)
        ini, fin = np.array(location.index_ini), np.array(location.index_fin)
        low, high = np.maximum(ini, 0), np.minimum(fin, self.plan.spatial_shape)
        counts = np.asarray(self._coverage[tuple(slice(a, b) for a, b in zip(low, high))])
        neighbours = int(np.prod([len(hits) for hits in _hits(self.plan, ini, fin)])) - 1
        span = " × ".join(f"{a}–{b - 1}" for a, b in zip(ini, fin))
        self.cursor.value = f"patch #{rank}: voxels {span}; overlaps {neighbours} neighbours"
        self._show_lines(CURSOR_LAYER, self._box_lines([rank]))
        with _keep_active(self.viewer):
            show_layer(
                self.viewer,
                SHARED_LAYER,
                "image",
                counts,
                like=self.image.value,
                offset=low,
                colormap="cyan",
                blending="additive",
                opacity=0.5,
                contrast_limits=(1, max(2, int(counts.max()))),  # its own voxels: no tint
            )

    # ------------------------------------------------------------------ clicks
    def _on_click(self, viewer: Any, event: Any) -> None:
        if self.plan is None or self.image.value is None:
            return
        self.select_voxel(self._voxel_at(event.position))

    def select_voxel(self, voxel: tuple[int, ...]) -> list[int]:
        """Show (and outline) the patches containing ``voxel``; returns their ranks."""
        if (
            not self._shown()
            or self.plan is None
            or not all(0 <= v < s for v, s in zip(voxel, self.plan.spatial_shape))
        ):
            self._select([])
            return []
        ranks = self.plan.ranks_at(voxel)
        self._select(ranks)
        return ranks

    def _select(self, ranks: list[int]) -> None:
        self.selected_ranks = list(ranks)
        if not ranks or self.plan is None:
            self.selection.value = CLICK_HINT
            self._show_lines(SELECTED_LAYER, np.zeros((0, 2, 3)), create=False)
            return
        self.selection.value = summarise_ranks(ranks)
        if len(ranks) == 1:
            location = self.plan.location(ranks[0])
            self.selection.value += f" ({location.index_ini}–{location.index_fin})"
        self._show_lines(SELECTED_LAYER, self._box_lines(ranks))
