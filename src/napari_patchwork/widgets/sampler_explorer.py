"""Sampler explorer: draw a sampler's patches, the centre distribution it really uses, and the
expected (exact) against empirical coverage, with the label composition of the sample.

Sampling runs in a worker thread (:meth:`SamplerExplorerWidget.run`, the Sample button) with
progress and cancel; :meth:`SamplerExplorerWidget.sample` does the same work synchronously.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
from magicgui.widgets import ComboBox, Container, LineEdit, ProgressBar, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.qt.threading import create_worker

from napari_patchwork.core.data.image import LabelMap, ScalarImage
from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.data.subject import Subject
from napari_patchwork.core.samplers.coverage import (
    LocationCoverage,
    expected_coverage,
    uniform_maps,
)

from ..core.samplers import LabelSampler, RandomSampler, UniformSampler, WeightedSampler
from ..core.wording import reworded_text
from ._layers import boxes_to_vectors, centres, locations_to_boxes
from ._napari import (
    Lifecycle,
    is_shown,
    layer_choices,
    lazy_data_of,
    message_label,
    parse_label_probabilities,
    parse_size,
    redraw_on_slice_change,
    shape_of,
    show_layer,
    slice_position,
    volume_of,
    watch_layers,
)

SAMPLERS = ("uniform", "weighted", "label")
PATCHES, CENTRES = "sampled patches", "patch centres"
PROBABILITY, EXPECTED, EMPIRICAL = "centre probability", "expected coverage", "empirical coverage"
OUTPUTS = (PATCHES, CENTRES, PROBABILITY, EXPECTED, EMPIRICAL)
DENSE_VOXELS = 2**24  # above this, uniform maps are drawn lazily (computed per slice)
MAX_BOXES = 2_000  # boxes drawn at most (all centres are drawn)
CHUNK = 1_000  # patches drawn between progress reports (and chances to cancel)
SEED_MAX = 2**31 - 1
BOX_COLOUR, CENTRE_COLOUR = "cyan", "orange"
# core argument names → the widget's labels, for messages raised by the core
WIDGET_WORDS = {
    "patch_size": "patch size",
    "probability_map": "probability map",
    "label_probabilities": "label probabilities",
    "label_name": "labels",
    "num_patches": "patches",
}
TIPS = {
    "image": "3D image layer to sample patches from.",
    "sampler": "uniform: any centre where the patch fits; weighted: centres drawn from the "
    "probability map; label: centres on labelled voxels, per-class probabilities.",
    "probability": "Image layer of non-negative sampling weights, same size as the image "
    "(weighted sampler only).",
    "labels": "Labels layer: centres for the label sampler; the plot shows the label "
    "composition of the sample for any sampler.",
    "label probabilities": "Label sampler only: 'label: probability' pairs, e.g. "
    "'0: 0.5, 1: 0.3, 2: 0.2' (renormalised over labels present). Empty: foreground only.",
    "patch size": "Patch size in voxels: one integer for a cube ('32') or three, one per "
    "axis ('32, 32, 16'). Must fit in the image.",
    "patches": "Number of patches to draw. All centres are drawn; past "
    f"{MAX_BOXES:,} patches only the first {MAX_BOXES:,} boxes are.",
    "seed": "Random seed: the same seed gives the same patches.",
}


def _voxels(size: Sequence[int]) -> str:
    return "×".join(str(int(s)) for s in size) + " voxels"


def in_widget_words(text: str, probability: str = "", labels: str = "") -> str:
    """A core message in the widget's words: its labels, its layer names, sizes in voxels.

    Examples
    --------
    >>> in_widget_words("probability_map 'probability' is zero", probability="weights")
    "probability map 'weights' is zero"
    >>> in_widget_words("a patch of size (8, 8, 4) fits")
    'a patch of size 8×8×4 voxels fits'
    """
    text = text.replace(" of this subject", "")
    text = text.replace("probability_map 'probability'", f"probability map '{probability}'")
    for core in ("label_name 'labels'", "label map 'labels'"):
        text = text.replace(core, f"labels '{labels}'")
    text = reworded_text(text, WIDGET_WORDS)
    return re.sub(r"size \((\d+), (\d+), (\d+)\)", r"size \1×\2×\3 voxels", text)


class SamplingFailed(Exception):
    """Sampling failed in the worker thread (wraps errors superqt would drop)."""


@dataclass(frozen=True, eq=False)
class SamplingRequest:
    """One run's settings and data, read from the controls on the GUI thread."""

    kind: str
    patch_size: tuple[int, int, int]
    count: int
    seed: int
    image: Any
    probability: np.ndarray | None = None
    labels: Any = None
    label_probabilities: dict[int, float] | None = None

    def subject(self) -> Subject:
        """The subject sampled: image, probability map and labels when given."""
        data = self.image
        image = torch.from_numpy(data)[None] if isinstance(data, np.ndarray) else data
        images: dict[str, Any] = {"image": ScalarImage(image)}
        if self.probability is not None:
            images["probability"] = ScalarImage(torch.from_numpy(self.probability)[None])
        if self.labels is not None:
            labels = np.asarray(self.labels).astype(np.int64)
            images["labels"] = LabelMap(torch.from_numpy(labels)[None])
        return Subject(images)

    def sampler(self) -> RandomSampler:
        """The core sampler for these settings (validated against the subject when drawing)."""
        if self.kind == "weighted":
            return WeightedSampler(None, self.patch_size, "probability", seed=self.seed)
        if self.kind == "label":
            return LabelSampler(
                None, self.patch_size, "labels", self.label_probabilities, seed=self.seed
            )
        return UniformSampler(None, self.patch_size, seed=self.seed)


@dataclass(frozen=True)
class SamplingProgress:
    """What the worker reports between chunks."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True, eq=False)
class Composition:
    """Label values, the reference fractions (requested or volume) and the centres' fractions."""

    values: list[int]
    wanted: np.ndarray
    observed: np.ndarray
    reference: str


@dataclass(frozen=True, eq=False)
class SamplingResult:
    """Everything one run draws, computed off the GUI thread."""

    request: SamplingRequest
    locations: list[PatchLocation]
    centres: np.ndarray
    maps: tuple[Any, Any, Any]  # centre probability, expected, empirical coverage
    composition: Composition | None


def coverage_count(locations: Sequence[PatchLocation], shape: Sequence[int]) -> np.ndarray:
    """How many patches cover each voxel (as ``empirical_coverage``; vectorised, float32)."""
    ini, fin = locations_to_boxes(locations)
    corners = [np.clip(c, 0, np.asarray(shape)) for c in (ini, fin)]
    difference = np.zeros([s + 1 for s in shape], np.int32)
    for corner in np.ndindex(2, 2, 2):  # inclusion-exclusion over the 8 box corners
        index = tuple(corners[c][:, axis] for axis, c in enumerate(corner))
        np.add.at(difference, index, (-1) ** sum(corner))
    for axis in range(3):
        difference = difference.cumsum(axis, dtype=np.int32)
    return difference[: shape[0], : shape[1], : shape[2]].astype(np.float32)


def _maps(sampler: RandomSampler, subject: Subject, locations: list[PatchLocation]) -> Any:
    """Centre probability, expected and empirical coverage: lazy for a huge uniform case."""
    shape, count = subject.spatial_shape, len(locations)
    if isinstance(sampler, UniformSampler) and np.prod(shape) > DENSE_VOXELS:
        probability, coverage = uniform_maps(shape, sampler.patch_size, count)
        return probability, coverage, LocationCoverage(locations, shape)
    dense = sampler.get_probability_map(subject)
    expected = expected_coverage(dense, sampler.patch_size, count)
    return (
        dense.numpy().astype(np.float32),
        expected.numpy().astype(np.float32),
        coverage_count(locations, shape),
    )


def _composition(request: SamplingRequest, points: np.ndarray) -> Composition | None:
    """Label fractions at the patch centres, against the requested (or volume) fractions."""
    if request.labels is None or not len(points):
        return None
    labels = np.asarray(request.labels)
    requested = request.label_probabilities if request.kind == "label" else None
    if requested:  # classes absent from the labels are not sampled: renormalised without
        present = set(np.unique(labels).tolist())
        values = sorted(v for v in requested if v in present) or sorted(requested)
        total = sum(requested[v] for v in values) or 1.0
        wanted, reference = np.array([requested[v] / total for v in values]), "requested"
    else:
        values = sorted(np.unique(labels[:: max(1, labels.shape[0] // 32)]).tolist())[:10]
        wanted, reference = np.array([(labels == v).mean() for v in values]), "volume fraction"
    index = points.astype(int)
    at_centre = labels[index[:, 0], index[:, 1], index[:, 2]]
    observed = np.array([(at_centre == v).mean() for v in values])
    return Composition(values, wanted, observed, reference)


def sampling_steps(request: SamplingRequest) -> Generator[SamplingProgress, None, SamplingResult]:
    """Draw the patches in chunks (yielding progress), then the maps and the composition."""
    try:
        subject, sampler = request.subject(), request.sampler()
        yield SamplingProgress("preparing the sampler", 0, request.count)
        draws = sampler.locations(subject, request.count)
        locations: list[PatchLocation] = []
        while len(locations) < request.count:
            locations.extend(islice(draws, min(CHUNK, request.count - len(locations))))
            yield SamplingProgress("drawing patches", len(locations), request.count)
        yield SamplingProgress("computing coverage", request.count, request.count)
        maps = _maps(sampler, subject, locations)
        points = centres(locations)
        return SamplingResult(request, locations, points, maps, _composition(request, points))
    except RuntimeError as error:  # superqt drops RuntimeErrors (no errored/finished signal)
        raise SamplingFailed(f"{type(error).__name__}: {error}") from error


def _exhaust(steps: Generator[Any, None, SamplingResult]) -> SamplingResult:
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


class SamplerExplorerWidget(Container):
    """Visual debugging of sampling strategies.

    Sample (or :meth:`run`) draws in a worker thread with progress and Cancel; Re-roll picks
    a new seed and samples again. Settings that become invalid clear the drawn results.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer to draw in.

    Examples
    --------
    >>> widget = SamplerExplorerWidget(viewer)  # doctest: +SKIP
    >>> widget.patch_size.value, widget.num_patches.value = "10", 200  # doctest: +SKIP
    >>> len(widget.sample())  # doctest: +SKIP
    200
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.image = ComboBox(
            label="image", choices=layer_choices(napari_viewer, Image), tooltip=TIPS["image"]
        )
        self.sampler = ComboBox(
            label="sampler", choices=SAMPLERS, value="uniform", tooltip=TIPS["sampler"]
        )
        self.probability = ComboBox(
            label="probability map",
            choices=layer_choices(napari_viewer, Image, True),
            tooltip=TIPS["probability"],
        )
        self.labels_layer = ComboBox(
            label="labels",
            choices=layer_choices(napari_viewer, Labels, True),
            tooltip=TIPS["labels"],
        )
        self.label_probabilities = LineEdit(
            label="label probabilities", value="", tooltip=TIPS["label probabilities"]
        )
        self.patch_size = LineEdit(label="patch size", value="32", tooltip=TIPS["patch size"])
        self.num_patches = SpinBox(
            label="patches", value=100, min=1, max=100_000, tooltip=TIPS["patches"]
        )
        self.seed = SpinBox(label="seed", value=0, min=0, max=SEED_MAX, tooltip=TIPS["seed"])
        self.controls = [
            self.image,
            self.sampler,
            self.probability,
            self.labels_layer,
            self.label_probabilities,
            self.patch_size,
            self.num_patches,
            self.seed,
        ]
        self.run_button = PushButton(text="Sample", tooltip="Draw the patches (in the background).")
        self.reroll_button = PushButton(text="Re-roll", tooltip="Pick a new seed and sample again.")
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip="Stop sampling.")
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.info = message_label("status")
        buttons = Container(
            widgets=[self.run_button, self.reroll_button, self.cancel_button],
            layout="horizontal",
            labels=False,
        )
        buttons.margins = (0, 0, 0, 0)
        self.extend([*self.controls, buttons, self.progress, self.info])
        self.locations: list[PatchLocation] = []
        self.result: SamplingResult | None = None
        self.worker: Any = None
        self.figure: Any = None
        self._like: Any = None  # the image layer the shown sample was drawn on
        self._run_like: Any = None
        self._notes: list[str] = []  # this run's warnings (e.g. labels absent), for the status
        self._add_plot()
        self.lifecycle = Lifecycle(self, on_close=self._abandon)
        watch_layers(self.lifecycle, napari_viewer, self.image, self.probability, self.labels_layer)
        for control in self.controls:
            control.changed.connect(self._settings_changed)
        self.run_button.changed.connect(self.run)
        self.reroll_button.changed.connect(self.reroll)
        self.cancel_button.changed.connect(self.cancel)
        redraw_on_slice_change(self.lifecycle, napari_viewer, self._draw_boxes)
        self.lifecycle.connect(napari_viewer.events.theme, self._replot)

    def _add_plot(self) -> None:
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
            from qtpy.QtWidgets import QSizePolicy
        except ImportError:  # pragma: no cover - matplotlib is in the [napari] extra
            return
        self.figure = Figure(figsize=(3.2, 2.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.canvas.setMinimumWidth(1)  # the plot follows the dock's width, never widens it
        policy = self.canvas.sizePolicy()
        policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
        self.canvas.setSizePolicy(policy)
        self.native.layout().addWidget(self.canvas)
        self._plot(None)

    # ------------------------------------------------------------------ settings
    @property
    def running(self) -> bool:
        """Whether a run is in progress."""
        return self.worker is not None

    def settings(self) -> SamplingRequest:
        """The run's settings from the controls; ValueError in the widget's words when bad."""
        image = self.image.value
        if image is None:
            raise ValueError("image: add or choose a 3D image layer")
        shape = shape_of(image)
        patch = self._patch_voxels(shape, image.name)
        kind = str(self.sampler.value)
        probability = labels = label_probabilities = None
        if kind == "weighted":
            if self.probability.value is None:
                raise ValueError("the weighted sampler needs a probability map: choose one")
            probability = volume_of(self._matching(self.probability, "probability map", shape))
        if self.labels_layer.value is not None:
            labels = self._matching(self.labels_layer, "labels", shape).data
        if kind == "label":
            if labels is None:
                raise ValueError("the label sampler needs a labels layer: choose one in labels")
            label_probabilities = parse_label_probabilities(self.label_probabilities.value)
            negative = {k: v for k, v in (label_probabilities or {}).items() if v < 0}
            if negative:
                raise ValueError(f"label probabilities must not be negative, got {negative}")
        count, seed = int(self.num_patches.value), int(self.seed.value)
        return SamplingRequest(
            kind, patch, count, seed, lazy_data_of(image), probability, labels, label_probabilities
        )

    def _patch_voxels(self, shape: tuple[int, int, int], name: str) -> tuple[int, int, int]:
        size = parse_size(self.patch_size.value, "patch size")
        patch = (size,) * 3 if isinstance(size, int) else size
        if min(patch) < 1:
            raise ValueError(f"patch size must be positive, got {self.patch_size.value!r}")
        if any(p > s for p, s in zip(patch, shape)):
            raise ValueError(
                f"patch size {_voxels(patch)} is larger than image '{name}' ({_voxels(shape)})"
            )
        return (patch[0], patch[1], patch[2])

    def _matching(self, combo: ComboBox, label: str, shape: tuple[int, int, int]) -> Any:
        layer = combo.value
        try:
            own = shape_of(layer)
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from None
        if own != shape:
            raise ValueError(
                f"{label} '{layer.name}' is {_voxels(own)}, the image {_voxels(shape)}:"
                " choose layers of the same size"
            )
        return layer

    def _settings_changed(self, *_: Any) -> None:
        if self.lifecycle.closed or self.running:
            return
        try:
            self.settings()
        except (ValueError, TypeError) as error:
            self._invalid(error)
            return
        self.info.value = (
            "settings changed: Sample to redraw (the layers show the last sample)"
            if self.result is not None
            else "ready: click Sample"
        )

    def _invalid(self, error: BaseException) -> None:
        """Show ``error`` and remove what no longer matches the settings."""
        self.info.value = f"⚠ {self._words(str(error))}"
        self.clear()

    def _words(self, text: str) -> str:
        names = [
            getattr(combo.value, "name", "") for combo in (self.probability, self.labels_layer)
        ]
        return in_widget_words(text, *names)

    def clear(self) -> None:
        """Remove the drawn layers and the plot (nothing stale stays on screen)."""
        self.locations, self.result = [], None
        for name in OUTPUTS:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self._plot(None)

    # ------------------------------------------------------------------ runs
    def sample(self, *_: Any) -> list[PatchLocation]:
        """Draw the patches now (on this thread) and show every result; returns the locations."""
        self._abandon()
        self._set_running(False)
        try:
            request = self.settings()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = _exhaust(sampling_steps(request))
        except (ValueError, TypeError, SamplingFailed) as error:
            self._invalid(error)
            return []
        self._notes = list(dict.fromkeys(str(w.message) for w in caught))
        self._show(result, self.image.value)
        return self.locations

    def run(self, *_: Any) -> Any:
        """Start sampling in a worker thread; returns the worker (None when settings are bad)."""
        if self.running:
            return self.worker
        try:
            request = self.settings()
        except (ValueError, TypeError) as error:
            self._invalid(error)
            return None
        self._notes, self._run_like = [], self.image.value
        handlers = {
            "yielded": self._on_progress,
            "returned": self._on_result,
            "errored": self._on_error,
            "warned": self._on_warning,
            "finished": self._on_finished,
        }
        self.worker = create_worker(sampling_steps, request, _start_thread=False, _connect=handlers)
        self.progress.max, self.progress.value = request.count, 0
        self.info.value = f"sampling {request.count:,} patches…"
        self._set_running(True)
        self.worker.start()
        return self.worker

    def reroll(self, *_: Any) -> Any:
        """Set a new random seed and sample again (in a worker); returns the worker."""
        if self.running:
            return self.worker
        current, rng = int(self.seed.value), np.random.default_rng()
        seed = current
        while seed == current:
            seed = int(rng.integers(0, SEED_MAX))
        self.seed.value = seed
        return self.run()

    def cancel(self, *_: Any) -> None:
        """Stop after the current chunk of patches; nothing new is drawn."""
        if self.worker is not None:
            self.info.value = "cancelling…"
            self.worker.quit()

    def _abandon(self) -> None:
        """Stop the worker (dock or viewer closing, or a synchronous run); late results dropped."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.quit()

    # ------------------------------------------------------------------ worker signals
    def _current(self) -> bool:
        return not self.lifecycle.closed and self.worker is not None

    def _on_progress(self, progress: SamplingProgress) -> None:
        if not self._current():
            return
        self.progress.max, self.progress.value = progress.total, progress.done
        self.info.value = f"{progress.stage}: {progress.done:,} of {progress.total:,}"

    def _on_warning(self, warning: tuple[Any, ...]) -> None:
        if self._current() and str(warning[0]) not in self._notes:
            self._notes.append(str(warning[0]))

    def _on_result(self, result: SamplingResult) -> None:
        if self._current():
            self._show(result, self._run_like)

    def _on_error(self, error: BaseException) -> None:
        if self._current():
            self._invalid(error)

    def _on_finished(self) -> None:
        if not self._current():
            return
        if self.worker.abort_requested:
            kept = "; the layers show the last sample" if self.result is not None else ""
            self.info.value = f"cancelled at {self.progress.value:,} patches{kept}"
        self.worker = None
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        for control in [*self.controls, self.run_button, self.reroll_button]:
            control.enabled = not running
        self.cancel_button.enabled = running

    # ------------------------------------------------------------------ drawing (GUI thread)
    def _show(self, result: SamplingResult, like: Any) -> None:
        if not is_shown(self.viewer, like):
            self.info.value = "⚠ the image layer was removed while sampling"
            return
        self.result, self.locations, self._like = result, result.locations, like
        probability, expected, empirical = result.maps
        maps = {"like": like, "blending": "additive", "visible": False}
        layer = show_layer(
            self.viewer,
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
                self.viewer,
                name,
                "image",
                coverage,
                colormap="viridis",
                contrast_limits=limits,
                **maps,
            )
            layer.colorbar.visible = True
        show_layer(
            self.viewer,
            CENTRES,
            "points",
            result.centres,
            like=like,
            size=2,
            face_color=CENTRE_COLOUR,
            border_width=0,
        )
        self._draw_boxes()
        self._plot(result.composition)
        self.info.value = self._summary(result)

    def _summary(self, result: SamplingResult) -> str:
        request, count = result.request, len(result.locations)
        text = f"{count:,} patches of {_voxels(request.patch_size)} from the {request.kind} sampler"
        if count > MAX_BOXES:
            text += f"; drawing {MAX_BOXES:,} of {count:,} boxes; all centres shown"
        notes = [self._words(note) for note in self._notes]
        return "; ".join([text, *notes])

    def _draw_boxes(self, *_: Any, create: bool = True) -> None:
        """Boxes cutting the current slice, of the first ``MAX_BOXES`` patches (i.i.d. draws:
        a random, reproducible subset)."""
        if self.lifecycle.closed or not self.locations or not is_shown(self.viewer, self._like):
            return
        axis, position = slice_position(self.viewer, self._like)
        ini, fin = locations_to_boxes(self.locations[:MAX_BOXES], axis, position)
        show_layer(
            self.viewer,
            PATCHES,
            "vectors",
            boxes_to_vectors(ini, fin, axis, position),
            like=self._like,
            create=create,
            edge_color=BOX_COLOUR,
            edge_width=0.5,
            vector_style="line",
            length=1.0,
        )

    # ------------------------------------------------------------------ plot
    def composition(self) -> tuple[list[int], np.ndarray, np.ndarray] | None:
        """(label values, requested centre fractions, observed centre fractions)."""
        if self.result is None or self.result.composition is None:
            return None
        shown = self.result.composition
        return shown.values, shown.wanted, shown.observed

    def _replot(self, *_: Any) -> None:
        """Redraw the plot (the viewer's theme changed)."""
        if not self.lifecycle.closed:
            self._plot(None if self.result is None else self.result.composition)

    def _theme(self) -> tuple[str, str]:
        """(background, text) colours of the viewer's theme."""
        from napari.utils.theme import get_theme

        try:
            theme = get_theme(str(self.viewer.theme))
        except (ValueError, KeyError):
            theme = get_theme("dark")
        return str(theme.background), str(theme.text)

    def _class_colour(self, value: int) -> Any:
        layer = self.labels_layer.value
        colour = None if layer is None else layer.get_color(value)
        return "#8c8c8c" if colour is None else tuple(np.asarray(colour, float))

    def _plot(self, composition: Composition | None) -> None:
        if self.figure is None:
            return
        from matplotlib.patches import Patch

        background, text = self._theme()
        self.figure.clear()
        self.figure.set_facecolor(background)
        axes = self.figure.add_subplot(111, facecolor=background)
        if composition is None:
            message = "choose a labels layer and Sample\nto see the label composition"
            axes.text(0.5, 0.5, message, ha="center", va="center", color=text)
            axes.set_axis_off()
            self.canvas.draw_idle()
            return
        colours = [self._class_colour(v) for v in composition.values]
        positions = np.arange(len(composition.values))
        axes.bar(
            positions - 0.2, composition.wanted, 0.4, color="none", edgecolor=colours, hatch="///"
        )
        axes.bar(positions + 0.2, composition.observed, 0.4, color=colours)
        axes.set_xticks(positions, [str(v) for v in composition.values])
        axes.set_xlabel("label", color=text)
        axes.set_ylabel("fraction", color=text)
        axes.tick_params(colors=text)
        for spine in axes.spines.values():
            spine.set_color(text)
        handles = [
            Patch(facecolor="none", edgecolor=text, hatch="///", label=composition.reference),
            Patch(facecolor=text, label="patch centres"),
            *(Patch(color=c, label=f"label {v}") for v, c in zip(composition.values, colours)),
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
        self.canvas.draw_idle()
