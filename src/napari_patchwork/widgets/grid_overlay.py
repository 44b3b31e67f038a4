"""Patch grid widget: the grid of ``GridSampler`` drawn over a volume, live."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, LineEdit
from napari.layers import Image

from ..core._validation import check_overlap, check_padding_mode, check_patch_fits, to_triplet
from ..core.coverage import grid_overlap
from ..core.grid import GridPlan
from ..core.types import PADDING_MODES
from ._layers import boxes_to_vectors, grid_lines
from ._napari import (
    Lifecycle,
    is_shown,
    layer_choices,
    message_label,
    parse_size,
    redraw_on_slice_change,
    shape_of,
    show_layer,
    slice_position,
    summarise_ranks,
    watch_layers,
)

GRID_LAYER, OVERLAP_LAYER, SELECTED_LAYER = "patch grid", "patch overlap", "selected patch"


class PatchGridWidget(Container):
    """Draws the patch grid of ``GridSampler`` (boxes in the current slice, wireframes in 3D),
    the overlap zones, and the patch count; click a voxel to see the patches holding it.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer to draw in.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=layer_choices(napari_viewer, Image))
        self.patch_size = LineEdit(label="patch size", value="64")
        self.patch_overlap = LineEdit(label="overlap", value="16")
        self.padding_mode = ComboBox(
            label="padding", choices=["none", *PADDING_MODES], value="none"
        )
        self.info = message_label("grid")
        self.selection = message_label("selected", "click a voxel")
        self.extend(
            [
                self.image,
                self.patch_size,
                self.patch_overlap,
                self.padding_mode,
                self.info,
                self.selection,
            ]
        )
        self.plan: GridPlan | None = None
        self.lifecycle = Lifecycle(self)
        watch_layers(self.lifecycle, napari_viewer, self.image, on_first=self.update)
        for control in (self.image, self.patch_size, self.patch_overlap, self.padding_mode):
            control.changed.connect(self.update)
        redraw_on_slice_change(self.lifecycle, napari_viewer, self._draw_boxes)
        self.lifecycle.add_mouse_callback(napari_viewer.mouse_drag_callbacks, self._on_click)
        self.update()

    # ------------------------------------------------------------------ state
    def _plan(self) -> GridPlan:
        layer = self.image.value
        if layer is None:
            raise ValueError("add a 3D image layer")
        shape = shape_of(layer)  # the data is never read: huge and lazy volumes are fine
        patch = to_triplet(parse_size(self.patch_size.value, "patch size"), "patch_size")
        overlap = to_triplet(
            parse_size(self.patch_overlap.value, "overlap"), "patch_overlap", minimum=0
        )
        check_overlap(patch, overlap)
        padded = self.padding_mode.value != "none"
        check_padding_mode(None if not padded else self.padding_mode.value)
        check_patch_fits(patch, [s + (o if padded else 0) for s, o in zip(shape, overlap)])
        return GridPlan(shape, patch, overlap, padded)

    def update(self, *_: Any) -> None:
        """Re-plan the grid from the controls and redraw everything."""
        try:
            self.plan = self._plan()
        except (ValueError, TypeError) as error:
            self.plan = None
            self.info.value = f"⚠ {error}"
            self._clear_drawn()  # nothing drawn may contradict the settings shown
            return
        counts = " × ".join(map(str, self.plan.counts))
        self.info.value = f"{len(self.plan)} patches ({counts})"
        overlap = grid_overlap(self.plan)  # computed slice by slice as napari draws it
        show_layer(
            self.viewer,
            OVERLAP_LAYER,
            "image",
            overlap,
            like=self.image.value,
            colormap="magenta",
            blending="additive",
            opacity=0.35,
            contrast_limits=(0, max(1, int(overlap.max()))),
        )
        self._draw_boxes()
        self._select(None)

    def _clear_drawn(self) -> None:
        for name in (GRID_LAYER, OVERLAP_LAYER, SELECTED_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.selection.value = "click a voxel"

    def _draw_boxes(self, *_: Any, create: bool = True) -> None:
        if (
            self.lifecycle.closed
            or self.plan is None
            or not is_shown(self.viewer, self.image.value)
        ):
            return
        axis, position = slice_position(self.viewer, self.image.value)
        show_layer(
            self.viewer,
            GRID_LAYER,
            "vectors",
            grid_lines(self.plan, axis, position),
            like=self.image.value,
            create=create,
            edge_color="yellow",
            edge_width=0.6,
            vector_style="line",
            length=1.0,
        )

    # ------------------------------------------------------------------ clicks
    def _on_click(self, viewer: Any, event: Any) -> None:
        layer = self.image.value
        if self.plan is None or layer is None:
            return
        voxel = np.round(np.asarray(layer.world_to_data(event.position))[-3:]).astype(int)
        self.select_voxel(tuple(voxel))

    def select_voxel(self, voxel: tuple[int, ...]) -> list[int]:
        """Show (and highlight) the patches containing ``voxel``; returns their ranks."""
        if self.plan is None or not all(0 <= v < s for v, s in zip(voxel, self.plan.spatial_shape)):
            self._select(None)
            return []
        ranks = self.plan.ranks_at(voxel)
        self._select(ranks)
        return ranks

    def _select(self, ranks: list[int] | None) -> None:
        if not ranks or self.plan is None:
            self.selection.value = "click a voxel"
            if SELECTED_LAYER in self.viewer.layers:
                self.viewer.layers[SELECTED_LAYER].data = np.zeros((0, 2, 3))
            return
        locations = [self.plan.location(rank) for rank in ranks]
        self.selection.value = summarise_ranks(ranks)
        if len(ranks) == 1:
            self.selection.value += f" ({locations[0].index_ini}–{locations[0].index_fin})"
        ini = np.array([loc.index_ini for loc in locations])
        fin = np.array([loc.index_fin for loc in locations])
        show_layer(
            self.viewer,
            SELECTED_LAYER,
            "vectors",
            boxes_to_vectors(ini, fin),
            like=self.image.value,
            edge_color="red",
            edge_width=1.0,
            vector_style="line",
            length=1.0,
        )
