"""What the Sampler explorer draws (GUI thread): maps, centres and boxes as napari layers, and
the label-composition plot (matplotlib, in the viewer's theme).

Functions of the viewer and a :class:`~._sampling.SamplingResult`; the widget decides when.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_patchwork.core.data.location import PatchLocation

from ._layers import boxes_to_vectors, locations_to_boxes
from ._napari import show_layer, slice_position
from ._sampling import Composition, SamplingResult

PATCHES, CENTRES = "sampled patches", "patch centres"
PROBABILITY, EXPECTED, EMPIRICAL = "centre probability", "expected coverage", "empirical coverage"
OUTPUTS = (PATCHES, CENTRES, PROBABILITY, EXPECTED, EMPIRICAL)
MAX_BOXES = 2_000  # boxes drawn at most (all centres are drawn)
BOX_COLOUR, CENTRE_COLOUR = "cyan", "orange"


def show_maps(viewer: Any, result: SamplingResult, like: Any) -> None:
    """The centre probability, expected and empirical coverage and the centres, placed like
    the image layer ``like`` (the maps hidden until asked for, each with its colour bar)."""
    probability, expected, empirical = result.maps
    maps = {"like": like, "blending": "additive", "visible": False}
    layer = show_layer(
        viewer,
        PROBABILITY,
        "image",
        probability,
        colormap="inferno",
        contrast_limits=(0.0, float(max(probability.max(), 1e-12))),
        **maps,
    )
    layer.colorbar.visible = True  # shown with the layer
    limits = (0.0, float(max(expected.max(), empirical.max(), 1e-6)))
    for name, coverage in ((EXPECTED, expected), (EMPIRICAL, empirical)):
        layer = show_layer(
            viewer,
            name,
            "image",
            coverage,
            colormap="viridis",
            contrast_limits=limits,
            **maps,
        )
        layer.colorbar.visible = True
    show_layer(
        viewer,
        CENTRES,
        "points",
        result.centres,
        like=like,
        size=2,
        face_color=CENTRE_COLOUR,
        border_width=0,
    )


def draw_boxes(
    viewer: Any, locations: Sequence[PatchLocation], like: Any, create: bool = True
) -> None:
    """Boxes cutting the current slice, of the first ``MAX_BOXES`` patches (i.i.d. draws:
    a random, reproducible subset), as one vectors layer placed like ``like``."""
    axis, position = slice_position(viewer, like)
    ini, fin = locations_to_boxes(locations[:MAX_BOXES], axis, position)
    show_layer(
        viewer,
        PATCHES,
        "vectors",
        boxes_to_vectors(ini, fin, axis, position),
        like=like,
        create=create,
        edge_color=BOX_COLOUR,
        edge_width=0.5,
        vector_style="line",
        length=1.0,
    )


def composition_canvas() -> tuple[Any, Any] | None:
    """A matplotlib figure and its Qt canvas sized for a dock; None without matplotlib."""
    try:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from qtpy.QtWidgets import QSizePolicy
    except ImportError:  # pragma: no cover - matplotlib is in the [napari] extra
        return None
    figure = Figure(figsize=(3.2, 2.6), tight_layout=True)
    canvas = FigureCanvasQTAgg(figure)
    canvas.setMinimumHeight(220)
    canvas.setMinimumWidth(1)  # the plot follows the dock's width, never widens it
    policy = canvas.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    canvas.setSizePolicy(policy)
    return figure, canvas


def theme_colours(viewer: Any) -> tuple[str, str]:
    """(background, text) colours of the viewer's theme."""
    from napari.utils.theme import get_theme

    try:
        theme = get_theme(str(viewer.theme))
    except (ValueError, KeyError):
        theme = get_theme("dark")
    return str(theme.background), str(theme.text)


def label_colour(layer: Any, value: int) -> Any:
    """The colour of label ``value`` in the labels layer (grey without one)."""
    colour = None if layer is None else layer.get_color(value)
    return "#8c8c8c" if colour is None else tuple(np.asarray(colour, float))


def plot_composition(
    figure: Any,
    canvas: Any,
    composition: Composition | None,
    colours: tuple[str, str],
    labels_layer: Any = None,
) -> None:
    """Bars of the requested (hatched) and observed centre fractions per label, or a hint.

    ``colours`` is (background, text), as :func:`theme_colours`; the bars take the label
    colours of ``labels_layer``.
    """
    from matplotlib.patches import Patch

    background, text = colours
    figure.clear()
    figure.set_facecolor(background)
    axes = figure.add_subplot(111, facecolor=background)
    if composition is None:
        message = "choose a labels layer and Sample\nto see the label composition"
        axes.text(0.5, 0.5, message, ha="center", va="center", color=text)
        axes.set_axis_off()
        canvas.draw_idle()
        return
    bar_colours = [label_colour(labels_layer, v) for v in composition.values]
    positions = np.arange(len(composition.values))
    axes.bar(
        positions - 0.2, composition.wanted, 0.4, color="none", edgecolor=bar_colours, hatch="///"
    )
    axes.bar(positions + 0.2, composition.observed, 0.4, color=bar_colours)
    axes.set_xticks(positions, [str(v) for v in composition.values])
    axes.set_xlabel("label", color=text)
    axes.set_ylabel("fraction", color=text)
    axes.tick_params(colors=text)
    for spine in axes.spines.values():
        spine.set_color(text)
    handles = [
        Patch(facecolor="none", edgecolor=text, hatch="///", label=composition.reference),
        Patch(facecolor=text, label="patch centres"),
        *(Patch(color=c, label=f"label {v}") for v, c in zip(composition.values, bar_colours)),
    ]
    axes.legend(  # above the bars, never over them
        handles=handles,
        fontsize=7,
        ncol=2,
        frameon=False,
        labelcolor=text,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.02, 1.0, 0.4),
        mode="expand",
        handlelength=1.2,
    )
    canvas.draw_idle()
