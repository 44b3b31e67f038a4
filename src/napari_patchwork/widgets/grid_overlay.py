"""Patch grid widget: the grid of ``GridSampler`` drawn over a volume, live.

With overlap, drawing every patch border gives a mesh in which no patch can be told apart. So
the plain grid is the *tiling*: one cell per patch, the voxels that patch owns when overlapping
predictions are cropped (``core.grid.crop_intervals``); its borders run through the middle of
the overlap zones. The patch under the cursor is outlined as a box, with the zones it shares
with its neighbours tinted, and every line is about one screen pixel wide whatever the voxel
size (napari draws line widths in data units, so they are recomputed from the layer's
transform and the camera zoom).

This module holds the widget (controls, cursor, clicks, what to draw when); the checks of the
settings are in ``_grid_settings``, the pure geometry (tiling, lines, widths, overlap counts)
in ``_grid_geometry``, the napari Shapes layers of lines in ``_grid_drawing``. Their names that
were public here stay importable from here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, LineEdit
from napari.layers import Image

from napari_patchwork.core.inference.grid import GridPlan
from napari_patchwork.core.samplers.coverage import SeparableVolume

from ..core.types import PADDING_MODES
from ._dock import DockContainer
from ._followed_patch import FollowedPatch, written_size
from ._grid_drawing import (
    CURSOR_LAYER,
    GRID_LAYER,
    LINE_COLOURS,
    OVERLAP_LAYER,
    SELECTED_LAYER,
    SHARED_LAYER,
    camera,
    keep_active,
    refresh_widths,
    show_lines,
)
from ._grid_geometry import (
    LINE_PIXELS,
    coverage_volume,
    lattice,
    line_ends,
    patches_meeting,
    tiling,
)
from ._grid_settings import EDGES, TILING, TOOLTIPS, grid_plan
from ._layers import boxes_to_vectors, grid_lines
from ._napari import (
    Lifecycle,
    is_shown,
    layer_choices,
    message_label,
    redraw_on_slice_change,
    shape_or_none,
    show_layer,
    slice_position,
    starting_on_the_slice_axis,
    summarise_ranks,
    voxel_on_screen,
    watch_layers,
)

__all__ = [  # the names importable from here before the split (issue 14), and the widget
    "CLICK_HINT",
    "CURSOR_HINT",
    "CURSOR_LAYER",
    "EDGES",
    "GRID_LAYER",
    "LINE_COLOURS",
    "LINE_PIXELS",
    "OVERLAP_LAYER",
    "SELECTED_LAYER",
    "SHARED_LAYER",
    "TILING",
    "TOOLTIPS",
    "PatchGridWidget",
]

#: The patch shown until the user types one, fitted to the image (an axis thinner than it
#: gets the axis's own even size).
DEFAULT_PATCH = (64, 64, 64)
CURSOR_HINT = "move the cursor over the image (2D view)"
CLICK_HINT = "click a voxel"


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


# ---------------------------------------------------------------------- widget
class PatchGridWidget(DockContainer):
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
        self.patch_size = LineEdit(label="patch size", value=written_size(DEFAULT_PATCH))
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
        self.followed_patch = FollowedPatch(self.patch_size, self.patch_overlap)
        self._followed_shape: tuple[int, int, int] | None = None
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
        view_camera = camera(napari_viewer)
        self.lifecycle.connect(view_camera.events.zoom, self._refresh_widths)
        self.lifecycle.connect(view_camera.events.angles, self._refresh_widths)  # 3D: tubes
        self.lifecycle.add_mouse_callback(napari_viewer.mouse_drag_callbacks, self._on_click)
        self.lifecycle.add_mouse_callback(napari_viewer.mouse_move_callbacks, self._on_move)
        self.update()

    # ------------------------------------------------------------------ state
    def _plan(self) -> GridPlan:
        return grid_plan(
            self.image.value,
            self.patch_size.value,
            self.patch_overlap.value,
            self.padding_mode.value,
        )

    def update(self, *_: Any) -> None:  # type: ignore[override]  # not magicgui's update(mapping)
        """Re-plan the grid from the controls and redraw everything."""
        self._follow_image()
        try:
            self.plan = self._plan()
        except (ValueError, TypeError) as error:
            self.plan = None
            self.info.value = f"⚠ {error}"
            self.legend.value = ""
            self._clear_drawn()  # nothing drawn may contradict the settings shown
            return
        self._tiles = tiling(self.plan)
        counts = " × ".join(map(str, self.plan.counts))
        self.info.value = f"{len(self.plan)} patches ({counts})"
        self._coverage = coverage = coverage_volume(self.plan)  # computed slice by slice when drawn
        with keep_active(self.viewer):
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

    def _follow_image(self) -> None:
        """An image of another shape: a patch size and overlap the user has not typed show
        the default fitted to it (64 on a 24-slice scan: 64, 64, 24 and 16, 16, 6)."""
        shape = shape_or_none(self.image.value)  # not 3D: the plan says so
        if shape is None or shape == self._followed_shape:
            return
        self._followed_shape = shape
        with self.patch_size.changed.blocked(), self.patch_overlap.changed.blocked():
            self.followed_patch.follow(DEFAULT_PATCH, shape)

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
        if axis is not None and not 0 <= position < self.plan.spatial_shape[axis]:
            # a slice outside the volume: nothing (lines there widened the slider's range,
            # which moved the slice further out: a loop napari ended with a RecursionError)
            grid = np.zeros((0, 2, 3))
        elif self.grid_lines.value == TILING:
            borders = [
                np.array([lo for lo, hi in tiles if hi > lo] + [size], float) - 0.5
                for tiles, size in zip(self._tiles, self.plan.spatial_shape)
            ]
            grid = lattice(borders, axis, position)
        else:
            grid = line_ends(grid_lines(self.plan, axis, position))
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
        return line_ends(boxes_to_vectors(ini, fin, axis, position))

    def _show_lines(self, name: str, lines: np.ndarray, create: bool = True) -> None:
        """Update the Shapes layer of lines ``name`` (or add it), while the grid is shown."""
        if self._shown():
            show_lines(self.viewer, self.image.value, name, lines, create=create)

    def _on_order(self, *_: Any) -> None:
        self._redraw()
        self._refresh_widths()  # 3D: the same lines, seen along another axis
        if self.cursor_rank is not None:
            self._show_cursor()  # the tint starts at 0 on the axis sliced now (oblique scans)

    def _refresh_widths(self, *_: Any) -> None:
        """Keep every line one screen pixel wide when the user zooms (or turns a 3D view)."""
        if self._shown():
            refresh_widths(self.viewer, self.image.value)

    # ------------------------------------------------------------------ cursor
    def _voxel_at(self, position: Any) -> tuple[int, ...]:
        point = voxel_on_screen(self.viewer, self.image.value, position)
        return tuple(int(v) for v in np.round(point))

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
        neighbours = int(np.prod([len(hits) for hits in patches_meeting(self.plan, ini, fin)])) - 1
        span = " × ".join(f"{a}–{b - 1}" for a, b in zip(ini, fin))
        self.cursor.value = f"patch #{rank}: voxels {span}; overlaps {neighbours} neighbours"
        self._show_lines(CURSOR_LAYER, self._box_lines([rank]))
        counts, offset = starting_on_the_slice_axis(self.viewer, self.image.value, counts, low)
        with keep_active(self.viewer):
            show_layer(
                self.viewer,
                SHARED_LAYER,
                "image",
                counts,
                like=self.image.value,
                offset=offset,
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
