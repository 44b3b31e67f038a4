"""Train from annotations: paint strokes per class, train, watch the prediction, correct, repeat.

A thin layer over :class:`~napari_patchwork.core.training.trainer.Trainer`: the widget reads the
image and the annotation layer (0 = not annotated, v > 0 = class v), trains in a worker thread,
shows the loss and a live prediction of the visible slice (the whole volume in 3D view, and when a
run ends), and saves a model that ``napari-patchwork infer --labels`` and the Tiled inference
widget use, writing the painted values back.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from napari_patchwork.core.training import (
    NETWORKS,
    Prediction,
    TrainingConfig,
    TrainingStep,
    loss_text,
)
from napari_patchwork.core.training.process import (
    LocalTrainer,
    TrainerProcess,
    prewarm,
    shutdown_spare,
    start_trainer,
)

from ..core.wording import reworded
from ._dock import DockContainer
from ._napari import (
    Lifecycle,
    layer_choices,
    message_label,
    redraw_values,
    show_layer,
    slice_position,
    volume_of,
    watch_layers,
)
from ._workers import start_worker

INITS = ("scratch", "demo", "file")
WIDGET_WORDS = {
    "patch_size": "patch size",
    "seconds": "time budget (s)",
    "init": "start from",
    "network": "network",
    "device": "device",
    "annotations": "annotations layer",
}
SPARK = "▁▂▃▄▅▆▇█"
#: Seconds between two redraws of the status and the loss line during a run (each redraw of a
#: dock's text recomposes the window: on a software-OpenGL display a frame of the whole window).
STATUS_SECONDS = 0.5
#: Models saved by this widget in this session, newest last (name -> path), for other widgets.
SAVED_MODELS: dict[str, Path] = {}
#: Called with (name, path) after each save (the Tiled inference widget refreshes its choices).
SAVE_CALLBACKS: list[Callable[[str, Path], Any]] = []


def sparkline(values: list[float], width: int = 40) -> str:
    """A text loss curve: ``width`` bins of the mean loss, low to high as ▁ … █.

    Examples
    --------
    >>> sparkline([4.0, 3.0, 2.0, 1.0], width=4)
    '█▆▃▁'
    """
    if not values:
        return ""
    bins = np.array_split(np.asarray(values, float), min(width, len(values)))
    means = np.array([b.mean() for b in bins])
    low, high = float(means.min()), float(means.max())
    scaled = np.zeros(len(means)) if high - low < 1e-12 else (means - low) / (high - low)
    return "".join(SPARK[int(round(s * (len(SPARK) - 1)))] for s in scaled)


class TrainingFailed(Exception):
    """Training failed in the worker thread (wraps the original error)."""


@dataclasses.dataclass(frozen=True)
class _Predicting:
    """The worker's message before the whole-volume prediction (seconds on a CPU)."""

    iteration: int


@dataclasses.dataclass(frozen=True)
class _Finished:
    """The worker's last message: the whole-volume prediction after the run."""

    prediction: Prediction | None


def saved_name(path: Path) -> str:
    """The name a saved model is offered under: its file's stem, numbered when another file
    of this session has that stem (two folders' ``model.pt2``), the same for the same file.

    Examples
    --------
    >>> SAVED_MODELS["cells"] = Path("/a/cells.pt2")
    >>> saved_name(Path("/a/cells.pt2")), saved_name(Path("/b/cells.pt2"))
    ('cells', 'cells (2)')
    >>> del SAVED_MODELS["cells"]
    """
    name, number = path.stem, 1
    while name in SAVED_MODELS and SAVED_MODELS[name] != path:
        number += 1
        name = f"{path.stem} ({number})"
    return name


class TrainingWidget(DockContainer):
    """Train a 3D network from painted annotations, in a worker thread.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer holding the image and the annotation (Labels) layer.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        prewarm()  # the training process starts (torch loads in it) while the user paints
        self.viewer = napari_viewer
        self.image = ComboBox(
            label="image",
            choices=layer_choices(napari_viewer, Image),
            tooltip="The 3D image to segment.",
        )
        self.annotations = ComboBox(
            label="annotations layer",
            choices=layer_choices(napari_viewer, Labels),
            tooltip="A Labels layer: paint a few strokes of each class (1, 2, …); 0 = not "
            "annotated.",
        )
        self.new_button = PushButton(
            text="New annotation layer", tooltip="An empty Labels layer placed like the image."
        )
        self.init = ComboBox(
            label="start from",
            choices=INITS,
            value="scratch",
            tooltip="scratch: a new network; demo: the bundled network; file: a model saved "
            "here before (same classes).",
        )
        self.init_file = FileEdit(label="model file", filter="*.pt2", visible=False)
        self.network = ComboBox(
            label="network",
            choices=NETWORKS,
            value="filters",
            tooltip="What 'scratch' builds. filters: fixed multiscale filters (Gaussian, "
            "gradient, Laplacian) and a learned per-voxel classifier, learns from a few "
            "strokes in seconds; unet: a small U-Net learning its own filters (needs more "
            "strokes and time).",
        )
        # minimums of 0: a spin box clamps each keystroke (typing 16 under a minimum of 4 gave
        # 46); too small a value is refused at Train, with its reason
        self.seconds = FloatSpinBox(
            label="time budget (s)", value=60.0, min=0.0, max=36000.0, step=10.0
        )
        self.patch_size = SpinBox(label="patch size", value=32, min=0, max=256, step=2)
        devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
        self.device = ComboBox(label="device", choices=devices, value=devices[0])
        self.train_button = PushButton(text="Train", tooltip="Train a new model from scratch.")
        self.stop_button = PushButton(text="Stop", enabled=False, tooltip="Keeps the weights.")
        self.continue_button = PushButton(
            text="Continue",
            enabled=False,
            tooltip="Resume from the current weights with the strokes painted now.",
        )
        self.save_file = FileEdit(
            label="save as", mode=FileDialogMode.OPTIONAL_FILE, filter="*.pt2"
        )
        self.save_button = PushButton(text="Save model", enabled=False)
        self.status = message_label("status")
        self.curve = message_label("loss")
        self.controls: list[Any] = [self.image, self.annotations, self.new_button, self.init]
        self.controls += [self.init_file, self.network, self.seconds, self.patch_size, self.device]
        self.extend(
            [
                *self.controls,
                self.train_button,
                self.stop_button,
                self.continue_button,
                self.curve,
                self.status,
                self.save_file,
                self.save_button,
            ]
        )
        self.lifecycle = Lifecycle(self, on_close=self._abandon)
        watch_layers(self.lifecycle, napari_viewer, self.image, self.annotations)
        self.lifecycle.connect(napari_viewer.dims.events.current_step, self._track_view)
        self.lifecycle.connect(napari_viewer.dims.events.ndisplay, self._track_view)
        self.lifecycle.connect(napari_viewer.dims.events.order, self._track_view)  # turned view
        self.init.changed.connect(self._show_init_file)
        self.new_button.changed.connect(self.new_annotations)
        self.train_button.changed.connect(self.train)
        self.stop_button.changed.connect(self.stop)
        self.continue_button.changed.connect(self.resume)
        self.save_button.changed.connect(self.save)
        self.trainer: TrainerProcess | LocalTrainer | None = None
        self.worker: Any = None
        self.last_step: TrainingStep | None = None
        self.refresh_seconds: list[float] = []  # GUI-thread time per yielded step
        self._region: tuple[slice, slice, slice] | None = None
        self._layer: Any = None
        self._stop_requested = False
        self._closed = False  # the dock or viewer closed: a trainer built late is ended at once
        self._agreement: float | None = None
        self._added_layer = False
        self._status_shown = -math.inf  # when the status line was last redrawn (perf_counter)

    # ------------------------------------------------------------------ controls
    @property
    def running(self) -> bool:
        """Whether training is in progress."""
        return self.worker is not None

    def _show_init_file(self, *_: Any) -> None:
        self.init_file.visible = self.init.value == "file"
        self.network.visible = self.init.value == "scratch"

    def new_annotations(self, *_: Any) -> Any:
        """Add an empty Labels layer placed like the image, ready for the brush."""
        image = self.image.value
        if image is None:
            self._error(ValueError("choose an image layer first"))
            return None
        shape = volume_of(image).shape
        name = f"{image.name} annotations"
        layer = show_layer(
            self.viewer, name, "labels", np.zeros(shape, np.int32), like=image, overlay=False
        )
        self.annotations.reset_choices()
        self.annotations.value = layer
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        layer.selected_label = 1
        self.status.value = f"paint class 1, 2, … in '{name}', then press Train"
        return layer

    def config(self) -> TrainingConfig:
        """The run's settings, from the controls."""
        init = self.init.value
        if init == "file":
            init = str(self.init_file.value).strip()
            if not init or Path(init).is_dir():
                raise ValueError("model file: choose a model saved by training (.pt2)")
        try:
            return TrainingConfig(
                patch_size=int(self.patch_size.value),
                seconds=float(self.seconds.value),
                init=init,
                network=str(self.network.value),
                device=str(self.device.value),
            )
        except (ValueError, TypeError) as error:
            raise reworded(error, WIDGET_WORDS) from None

    def _pair(self) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self.image.value, self.annotations.value
        if image is None:
            raise ValueError("choose an image layer")
        if labels is None:
            raise ValueError("annotations: choose or create one (New annotation layer)")
        return np.array(volume_of(image), copy=True), np.array(labels.data, copy=True)

    # ------------------------------------------------------------------ runs
    def train(self, *_: Any) -> Any:
        """Start training a new model (returns the worker, None when the settings are bad)."""
        return self._start(fresh=True)

    def resume(self, *_: Any) -> Any:
        """Continue from the current weights with the annotations as they are now."""
        return self._start(fresh=False)

    def _start(self, fresh: bool) -> Any:
        if self.running:
            return self.worker
        try:
            config = self.config()
            pair = self._pair()
            if not fresh and self.trainer is None:
                raise ValueError("nothing to continue: press Train first")
        except (ValueError, TypeError) as error:
            self._error(error)
            return None
        self._image_layer = self.image.value
        self._stop_requested = False
        self._agreement, self.last_step = None, None
        self._status_shown = -math.inf
        self._track_view()
        self._added_layer = self._prediction_layer()  # layer creation costs most at the click
        self.status.value = "preparing…" if fresh else "continuing…"
        handlers = {"yielded": self._on_step, "errored": self._error, "finished": self._done}
        self.worker = create_worker(
            self._steps, config, pair, fresh, _start_thread=False, _connect=handlers
        )
        self._set_running(True)
        start_worker(self.worker)
        return self.worker

    def _steps(self, config: TrainingConfig, pair: Any, fresh: bool) -> Any:
        try:
            if fresh or self.trainer is None:
                previous, self.trainer = self.trainer, None
                if previous is not None:
                    previous.close(wait=False)
                # the process prewarmed when the dock opened (an idle one holds ~280 MB: no
                # spare is kept after it; a second Train waits 2-4 s for a new one)
                self.trainer = start_trainer(pair, config)
            else:
                self.trainer.set_annotations(pair)
            trainer = self.trainer
            if self._closed:  # closed while the trainer was being built: nobody reads it
                trainer.close(wait=False)
                return
            if not self._stop_requested:  # Stop pressed while the trainer was being built
                for step in trainer.run(seconds=config.seconds, preview=lambda: self._region):
                    if self._stop_requested:
                        trainer.stop()  # again: a Stop pressed just before the run began
                    yield step
            if not trainer.iteration:
                yield _Finished(None)
                return
            yield _Predicting(trainer.iteration)
            yield _Finished(trainer.predict())
        except (RuntimeError, ValueError, TypeError, OSError) as error:
            self._forget_dead_trainer()
            # superqt drops RuntimeErrors raised in workers: hand every failure over as one type
            raise TrainingFailed(str(reworded(error, WIDGET_WORDS))) from error

    def stop(self, *_: Any) -> None:
        """Stop after the current step; the weights are kept (Continue resumes)."""
        if not self.running:
            return
        self.status.value = "stopping…"
        self._stop_requested = True
        trainer = self.trainer  # read once: the worker may replace or drop it
        if trainer is not None:
            trainer.stop()

    def _abandon(self) -> None:
        """The dock or the viewer is closing: end training; late results are dropped."""
        worker, self.worker = self.worker, None
        self._closed = True
        if self.trainer is not None:
            self.trainer.close(wait=False)  # the process ends after its current step
        shutdown_spare()  # the prewarmed process, if no Train took it (~280 MB)
        if worker is not None:
            worker.quit()

    def _track_view(self, *_: Any) -> None:
        """Remember the region to preview: the visible slice in 2D, everything in 3D."""
        image = self.image.value
        if image is None or image.ndim != 3:
            self._region = None
            return
        shape = image.data.shape
        axis, position = slice_position(self.viewer, image)
        region = [slice(0, s) for s in shape]
        if axis is not None:
            position = min(max(position, 0), shape[axis] - 1)
            region[axis] = slice(position, position + 1)
        self._region = (region[0], region[1], region[2])

    # ------------------------------------------------------------------ results (GUI thread)
    def _on_step(self, update: TrainingStep | _Predicting | _Finished) -> None:
        if self.lifecycle.closed:
            return
        start = time.perf_counter()
        if isinstance(update, _Predicting):
            self.status.value = f"{update.iteration} iterations · predicting the whole volume…"
            return
        if isinstance(update, _Finished):
            if update.prediction is not None:
                self._show(update.prediction, final=True)
                self._agreement = update.prediction.painted_agreement
            return
        self.last_step = update
        if update.preview is not None:
            self._show(update.preview)
            self._agreement = update.preview.painted_agreement
        elif start - self._status_shown < STATUS_SECONDS:
            self.refresh_seconds.append(time.perf_counter() - start)
            return  # the status and loss line: a few times a second, not at every step
        trainer = self.trainer  # the worker may drop a dead one meanwhile
        if trainer is None:
            return
        self._status_shown = start
        losses = trainer.losses
        recent = float(np.mean(losses[-10:]))
        status = (
            f"iteration {update.iteration} · loss {loss_text(recent)} · {update.elapsed:.0f} s ·"
            f" {update.patches_per_second:.1f} patches/s"
        )
        if self._agreement is not None:
            status += f" · painted voxels in view reproduced: {self._agreement:.0%}"
        self.curve.value = f"{sparkline(losses)}  {loss_text(recent)}"
        if not self._stop_requested:  # "stopping…" stays until the run has ended
            self.status.value = status
        self.refresh_seconds.append(time.perf_counter() - start)

    def _prediction_layer(self) -> bool:
        """The live prediction layer, added (placed like the image) at the click if missing.

        Returns whether it was added now, so a run that fails before its first step can
        take it away again.
        """
        image = self._image_layer
        shape = tuple(image.data.shape)
        layer = self._layer
        if layer is not None and layer in self.viewer.layers and layer.data.shape == shape:
            return False
        name = f"{image.name} training prediction"
        data = np.zeros(shape, np.int32)
        self._layer = show_layer(
            self.viewer, name, "labels", data, like=image, overlay=False, opacity=0.5
        )
        return True

    def _show(self, prediction: Prediction, final: bool = False) -> None:
        if self._layer is None or self._layer not in self.viewer.layers:
            self._prediction_layer()
        self._layer.data[prediction.region] = prediction.labels
        if final:
            self._layer.refresh()  # thumbnail too
        else:
            redraw_values(self._layer)

    def _done(self) -> None:
        if self.lifecycle.closed:
            return
        self.worker = None
        self._set_running(False)
        if self._layer is not None and self._layer in self.viewer.layers:
            self._layer.refresh()  # the thumbnail, also after a run that failed mid-way
        if self.trainer is not None and self.trainer.iteration and not self._failed_now():
            agreement = self._agreement
            score = "" if agreement is None else f" · painted voxels reproduced: {agreement:.0%}"
            self.status.value = (
                f"stopped after {self.trainer.iteration} iterations{score} · paint corrections"
                " and press Continue, or Save model"
            )

    def _failed_now(self) -> bool:
        return str(self.status.value).startswith("⚠")

    def save(self, *_: Any) -> Path | None:
        """Save the model to the 'save as' file; it carries the painted class values."""
        path = str(self.save_file.value).strip()
        try:
            if self.trainer is None or not self.trainer.iteration:
                raise ValueError("train a model first")
            if not path or Path(path).is_dir():
                raise ValueError("save as: choose a file name (.pt2)")
            target = Path(path) if path.endswith(".pt2") else Path(path + ".pt2")
            written = self.trainer.save(target)
        except (ValueError, TypeError, OSError, RuntimeError) as error:
            if self._forget_dead_trainer():
                self._set_running(False)  # nothing left to continue or save
            self._error(error, "Saving the model failed")
            return None
        name = saved_name(written)
        SAVED_MODELS[name] = written
        for callback in list(SAVE_CALLBACKS):
            callback(name, written)
        self.status.value = f"saved {written} (classes {self.trainer.class_values})"
        show_info(f"Model saved: {written}")
        return written

    def _forget_dead_trainer(self) -> bool:
        """Drop a trainer whose process has ended (killed): Continue and Save need a new one."""
        trainer = self.trainer
        if isinstance(trainer, TrainerProcess) and not trainer.running:
            self.trainer = None
            trainer.close(wait=False)  # its pipes
            return True
        return False

    def _error(self, error: BaseException, heading: str = "Training failed") -> None:
        if self.lifecycle.closed:
            return
        added, self._added_layer = self._added_layer, False
        if added and self.running and self.last_step is None and self._layer in self.viewer.layers:
            self.viewer.layers.remove(self._layer)  # a failed start leaves no empty layer
            self._layer = None
        error = reworded(error, WIDGET_WORDS)
        self.status.value = f"⚠ {error}"
        show_error(f"{heading}: {error}")

    def _set_running(self, running: bool) -> None:
        for control in [*self.controls, self.train_button, self.continue_button]:
            control.enabled = not running
        self.continue_button.enabled = not running and self.trainer is not None
        self.save_button.enabled = not running and self.trainer is not None
        self.stop_button.enabled = running
