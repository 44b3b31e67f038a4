"""Sampler explorer: draw a sampler's patches, the centre distribution it really uses, and the
expected (exact) against empirical coverage, with the label composition of the sample.

Sampling runs in a worker thread (:meth:`SamplerExplorerWidget.run`, the Sample button) with
progress and cancel; :meth:`SamplerExplorerWidget.sample` does the same work synchronously.

This module holds the widget (controls, runs, worker signals); the run itself is in
``_sampling`` (no Qt), what it draws in ``_sampler_drawing``, the tooltips and the checks of
the settings in ``_sampler_settings``. Their names are importable from here too.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, LineEdit, ProgressBar, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.qt.threading import create_worker

from napari_patchwork.core.data.location import PatchLocation

from ._dock import DockContainer
from ._followed_patch import FollowedPatch, written_size
from ._napari import (
    Lifecycle,
    is_shown,
    layer_choices,
    message_label,
    redraw_on_slice_change,
    shape_or_none,
    watch_layers,
)
from ._sampler_drawing import (
    BOX_COLOUR,
    CENTRE_COLOUR,
    CENTRES,
    EMPIRICAL,
    EXPECTED,
    MAX_BOXES,
    OUTPUTS,
    PATCHES,
    PROBABILITY,
    composition_canvas,
    draw_boxes,
    plot_composition,
    show_maps,
    theme_colours,
)
from ._sampler_settings import (
    SAMPLERS,
    SEED_MAX,
    TIPS,
    WIDGET_WORDS,
    in_widget_words,
    sampling_request,
    voxels,
)
from ._sampling import (
    CHUNK,
    DENSE_VOXELS,
    Composition,
    SamplingFailed,
    SamplingProgress,
    SamplingRequest,
    SamplingResult,
    coverage_count,
    exhaust,
    sampling_steps,
)
from ._workers import start_worker

__all__ = [  # the names importable from here before the split (issue 14), and the widget
    "BOX_COLOUR",
    "CENTRES",
    "CENTRE_COLOUR",
    "CHUNK",
    "DENSE_VOXELS",
    "EMPIRICAL",
    "EXPECTED",
    "MAX_BOXES",
    "OUTPUTS",
    "PATCHES",
    "PROBABILITY",
    "SAMPLERS",
    "SEED_MAX",
    "TIPS",
    "WIDGET_WORDS",
    "Composition",
    "SamplerExplorerWidget",
    "SamplingFailed",
    "SamplingProgress",
    "SamplingRequest",
    "SamplingResult",
    "coverage_count",
    "in_widget_words",
    "sampling_steps",
]

#: The patch size shown until the user types one, fitted to the image.
DEFAULT_PATCH = (32, 32, 32)


class SamplerExplorerWidget(DockContainer):
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
        self.patch_size = LineEdit(
            label="patch size", value=written_size(DEFAULT_PATCH), tooltip=TIPS["patch size"]
        )
        self.followed_patch = FollowedPatch(self.patch_size)
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
        watch_layers(
            self.lifecycle,
            napari_viewer,
            self.image,
            self.probability,
            self.labels_layer,
            on_first=self._on_first_image,  # the dock opened first, then the scan
        )
        self.image.changed.connect(self._follow_image)  # before the settings re-check
        self._follow_image()
        for control in self.controls:
            control.changed.connect(self._settings_changed)
        self.run_button.changed.connect(self.run)
        self.reroll_button.changed.connect(self.reroll)
        self.cancel_button.changed.connect(self.cancel)
        redraw_on_slice_change(self.lifecycle, napari_viewer, self._draw_boxes)
        self.lifecycle.connect(napari_viewer.events.theme, self._replot)
        self._settings_changed()  # the status says at once what Sample would do

    def _add_plot(self) -> None:
        made = composition_canvas()
        if made is None:  # pragma: no cover - matplotlib is in the [napari] extra
            return
        self.figure, self.canvas = made
        self.append_qt(self.canvas)
        self._plot(None)

    # ------------------------------------------------------------------ settings
    def _on_first_image(self) -> None:
        self._follow_image()
        self._settings_changed()  # the status no longer asks for an image

    def _follow_image(self, *_: Any) -> None:
        """A patch size the user has not typed shows the default fitted to the image."""
        shape = shape_or_none(self.image.value)  # not 3D: the settings say so
        if shape is not None:
            self.followed_patch.follow(DEFAULT_PATCH, shape)

    @property
    def running(self) -> bool:
        """Whether a run is in progress."""
        return self.worker is not None

    def settings(self) -> SamplingRequest:
        """The run's settings from the controls; ValueError in the widget's words when bad."""
        return sampling_request(
            self.image.value,
            str(self.sampler.value),
            probability=self.probability.value,
            labels=self.labels_layer.value,
            label_probabilities=self.label_probabilities.value,
            patch_size=self.patch_size.value,
            count=int(self.num_patches.value),
            seed=int(self.seed.value),
        )

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
                result = exhaust(sampling_steps(request))
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
        start_worker(self.worker)
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
        show_maps(self.viewer, result, like)
        self._draw_boxes()
        self._plot(result.composition)
        self.info.value = self._summary(result)

    def _summary(self, result: SamplingResult) -> str:
        request, count = result.request, len(result.locations)
        text = f"{count:,} patches of {voxels(request.patch_size)} from the {request.kind} sampler"
        if count > MAX_BOXES:
            text += f"; drawing {MAX_BOXES:,} of {count:,} boxes; all centres shown"
        notes = [self._words(note) for note in self._notes]
        return "; ".join([text, *notes])

    def _draw_boxes(self, *_: Any, create: bool = True) -> None:
        """Boxes cutting the current slice, of the first ``MAX_BOXES`` patches."""
        if self.lifecycle.closed or not self.locations or not is_shown(self.viewer, self._like):
            return
        draw_boxes(self.viewer, self.locations, self._like, create=create)

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

    def _plot(self, composition: Composition | None) -> None:
        if self.figure is None:
            return
        colours = theme_colours(self.viewer)
        plot_composition(self.figure, self.canvas, composition, colours, self.labels_layer.value)
