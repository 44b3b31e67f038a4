"""Tiled inference widget: the output fills in live as patches are aggregated."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from napari_patchwork.core.data.harmonisation import Harmonisation
from napari_patchwork.core.inference.config import InferenceConfig
from napari_patchwork.core.inference.functional import InferenceStep, TiledInference
from napari_patchwork.core.inference.grid import fit_patch
from napari_patchwork.core.inference.postprocess import to_labels, to_probabilities
from napari_patchwork.core.inference.streaming import StreamTarget, zarr_target

from ..core.devices import available_devices
from ..core.types import OVERLAP_MODES
from ..core.wording import reworded
from ..io.models import (
    DEMO,
    apply_class_values,
    load_model,
    model_class_values,
    model_patch_size,
    read_model_metadata,
)
from ..io.zarr_io import is_zarr_path
from ..models import DEMO_CLASSES
from ..napari_contributions import read_zarr_layers
from ._dock import DockContainer
from ._followed_patch import FollowedPatch, written_size
from ._napari import (
    Lifecycle,
    class_legend,
    displayed_block,
    layer_choices,
    lazy_data_of,
    message_label,
    parse_size,
    redraw_values,
    shape_of,
    shape_or_none,
    show_layer,
    slice_position,
    sliced_index,
    volume_of,
    watch_layers,
)
from ._region_layers import box_for_view, data_box, keep_in_place, region_of, size_of
from ._workers import start_worker

MODEL_SOURCES = ("demo", "file", "module:factory")
DEMO_PATCH = (64, 64, 64)  # the patch the demo runs with until typed, fitted to the image
OUTPUTS = ("labels", "probabilities", "both")
REFRESH_INTERVAL = 0.1  # least seconds between layer refreshes while running
WIDGET_WORDS = {  # the core's argument names, as this widget labels them
    "patch_size": "patch size",
    "patch_overlap": "overlap",
    "overlap_mode": "overlap mode",
    "batch_size": "batch size",
    "padding_mode": "padding",
}


def roi_box(shapes: Any, image: Any) -> tuple[slice, slice, slice]:
    """Bounding box of a Shapes layer in the image's voxels; flat axes span the whole volume.

    A shape drawn in a 2D view is flat on the world axis that was sliced: its corners are
    placed as napari draws the image there (the slice napari shows, and the displayed axes'
    part of the image's transform, inverted), so that on an oblique scan the region is the
    one seen under the shape. Shapes on several slices bound the region on the sliced axis
    too (from the first slice to the last); all on one slice, it spans the whole volume.
    """
    shape = shape_of(image)
    drawn = [np.array([shapes.data_to_world(v) for v in s], float)[:, -3:] for s in shapes.data]
    if not drawn:
        raise ValueError(f"shapes layer '{shapes.name}' is empty: draw a box first")
    vertices = np.concatenate([_voxels_under(corners, image) for corners in drawn])
    points = np.round(vertices, 3)  # float32 vertices on oblique scans
    # the voxels the box overlaps (voxel v spans v ± 0.5): a box from 4.6 to 15.4 is over
    # voxels 5-15, one from 4 to 15 (on voxel centres) over 4-15
    first = np.floor(points.min(0) - 0.5).astype(int) + 1
    stop = np.ceil(points.max(0) + 0.5).astype(int)
    box = []
    for axis, size in enumerate(shape):
        lo, hi = max(int(first[axis]), 0), min(int(stop[axis]), size)
        on_a_slice = float(np.ptp(points[:, axis])) < 1e-6  # drawn on a slice: the whole axis
        box.append(slice(0, size) if on_a_slice or lo >= hi else slice(lo, hi))
    return (box[0], box[1], box[2])


def _voxels_under(corners: np.ndarray, image: Any) -> np.ndarray:
    """The image's voxel coordinates under one shape's ``(N, 3)`` world corners.

    Flat on one world axis (drawn in a 2D view): that axis is the slice napari showed there,
    the two others the displayed axes' part of the transform inverted. Otherwise (a shape
    drawn in 3D, a scan whose axes are swapped against the world's) ``world_to_data``.
    """
    flat = [axis for axis in range(corners.shape[1]) if np.ptp(corners[:, axis]) < 1e-6]
    shown = [axis for axis in range(3) if axis not in flat]
    in_2d = len(flat) == 1 and corners.shape[1] == 3 and image.ndim == 3  # 2D shapes: 2 columns
    placed = displayed_block(image, shown) if in_2d else None
    if placed is None:
        return np.array([np.asarray(image.world_to_data(w))[-3:] for w in corners], float)
    block, offset = placed
    vertices = np.zeros_like(corners)
    vertices[:, shown] = np.linalg.solve(block, (corners[:, shown] - offset).T).T
    vertices[:, flat[0]] = sliced_index(image, flat[0], corners[0, flat[0]])
    return vertices


@dataclass(frozen=True)
class StepUpdate:
    """What the GUI thread needs from one step, computed in the worker thread."""

    step: InferenceStep
    region: tuple[slice, slice, slice] | None
    labels: np.ndarray | None
    probabilities: np.ndarray | None
    classes: int = 0  # label values 0..classes-1 (a single output channel: 0/1)
    class_values: tuple[int, ...] | None = None  # a trained model's painted values, by channel

    @classmethod
    def of(
        cls,
        step: InferenceStep,
        labels: bool,
        probabilities: bool,
        class_values: list[int] | None = None,
    ) -> StepUpdate:
        """Post-process ``step``'s logits into the arrays the output layers show."""
        output = step.output
        region = step.region
        if isinstance(output, dict) and not output:  # streamed to zarr: nothing in memory
            return cls(step, None, None, None)
        if not isinstance(output, torch.Tensor):  # dict models: show the first output
            output, region = next(iter(output.values())), next(iter(region.values()))
        indices = to_labels(output) if labels else None
        if indices is not None and class_values is not None:
            indices = apply_class_values(indices, class_values)
        return cls(
            step,
            region,
            indices.numpy() if indices is not None else None,
            to_probabilities(output).numpy() if probabilities else None,
            max(int(output.shape[0]), 2),
            None if class_values is None else tuple(class_values),
        )


SOURCE_TOOLTIP = (
    "demo: the bundled 3D U-Net (2 classes); file: a TorchScript/.pt2 file; module:factory: a"
    " Python function that builds the network; trained: a model saved by Train from annotations"
    " in this session."
)


def check_patch_inside(patch: tuple[int, ...], box: tuple[slice, ...], what: str = "image") -> None:
    """Refuse a patch larger than the image (or region) it runs on, saying what fits.

    The widget has no padding control (the engine pads by half the overlap at most), so
    the advice is a patch size.

    Examples
    --------
    >>> check_patch_inside((32, 32, 32), (slice(0, 64), slice(0, 64), slice(0, 48)))
    >>> check_patch_inside((16, 16, 16), (slice(0, 20), slice(0, 16), slice(0, 9)))
    Traceback (most recent call last):
    ...
    ValueError: patch size (16, 16, 16) is larger than the image (20, 16, 9): use at most 16, 16, 8
    >>> check_patch_inside((8, 8, 8), (slice(0, 40), slice(0, 1), slice(3, 9)), "region")
    Traceback (most recent call last):
    ...
    ValueError: patch size (8, 8, 8) is larger than the region (40, 1, 6): draw a larger region
    """
    shape = tuple(int(b.stop - b.start) for b in box)
    if any(p > s for p, s in zip(patch, shape)):
        fits = fit_patch(patch, shape)
        fitting = all(f <= s for f, s in zip(fits, shape))  # no axis under 4
        advice = f"use at most {written_size(fits)}" if fitting else f"draw a larger {what}"
        raise ValueError(f"patch size {tuple(patch)} is larger than the {what} {shape}: {advice}")


def known_class_values(source: str) -> list[int] | None:
    """The painted values a model file records ("Train from annotations"), else None."""
    if source == DEMO:
        return None
    try:
        return model_class_values(source)
    except (OSError, ValueError):  # a bad file: the worker reports it, with the widget's words
        return None


def known_channels(source: str) -> int | None:
    """The model's output channels if known without running it, else None.

    Known for the demo network (its classes) and for model files that record their class
    values ("Train from annotations" saves them); other models show theirs at the first result.
    """
    if source == DEMO:
        return len(DEMO_CLASSES)
    values = known_class_values(source)
    return None if values is None else len(values)


def warm_up_labels() -> None:
    """Create one (tiny, unshown) Labels layer: napari's first costs 0.2–0.5 s of imports
    (pandas, for its features table), paid here when the dock opens, not at the Run click."""
    Labels(np.zeros((1, 1, 1), np.uint8))


class InferenceFailed(Exception):
    """A run failed in the worker thread (wraps the original error)."""


class TiledInferenceWidget(DockContainer):
    """Runs tiled inference in a worker thread; the output layers fill in patch by patch.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer holding the input and receiving the outputs.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.image = ComboBox(
            label="image",
            choices=layer_choices(napari_viewer, Image),
            tooltip="The image layer to segment (3D, or 4D with channels first).",
        )
        self.source = ComboBox(
            label="model",
            choices=self._source_choices,
            value="demo",
            tooltip=SOURCE_TOOLTIP,
        )
        self.model_file = FileEdit(
            label="model file",
            filter="*.pt *.pth *.pt2 *.ts",
            visible=False,
            tooltip="A TorchScript (.pt, .ts) or exported (.pt2) model. Pickled models need "
            "'trust this file'.",
        )
        self.trust = CheckBox(
            text="trust this file (runs code)",
            value=False,
            visible=False,
            tooltip="Pickled models (torch.save of a whole module) run code when loaded: tick "
            "only for files you made or trust.",
        )
        self.factory = LineEdit(
            label="module:factory",
            value="",
            visible=False,
            tooltip="e.g. 'my_package.models:make_unet', importable from napari's Python.",
        )
        self.weights = FileEdit(
            label="weights (state dict)",
            filter="*.pt *.pth",
            visible=False,
            tooltip="Optional state dict loaded into the factory's network (weights, no code).",
        )
        self.patch_size = LineEdit(
            label="patch size (voxels)",
            value=written_size(DEMO_PATCH),
            tooltip="Patch size in voxels: one number (64) or one per axis in the layer's axis "
            "order (64, 64, 32). Until you type one it follows the image and the model (the "
            "demo's 64, a trained model's own), an axis thinner than it getting its own size.",
        )
        self.patch_overlap = LineEdit(
            label="overlap (voxels)",
            value="16",
            tooltip="Voxels shared by neighbouring patches: even, smaller than the patch; one "
            "number or one per axis.",
        )
        self.mode = ComboBox(
            label="overlap mode",
            choices=OVERLAP_MODES,
            value="gaussian",
            tooltip="How overlapping outputs are blended: gaussian/hann weight patch centres, "
            "average weighs all voxels alike, crop keeps each patch's centre only.",
        )
        self.batch_size = SpinBox(
            label="batch size",
            value=4,
            min=1,
            max=512,
            tooltip="Patches per model call (more is faster until memory runs out).",
        )
        self.device = ComboBox(
            label="device",
            choices=available_devices(),
            value=available_devices()[0],
            tooltip="Where the model runs.",
        )
        self.amp = CheckBox(
            text="mixed precision (amp)",
            value=False,
            tooltip="Run the model in float16 (GPU) or bfloat16 (CPU); blend in float32.",
        )
        self.tta = CheckBox(
            text="test-time flips (tta)",
            value=False,
            tooltip="Average the outputs of the 8 flips of every patch (8× slower, smoother).",
        )
        self.compile = CheckBox(
            text="compile (torch.compile)",
            value=False,
            tooltip="Compile the model once before the run: faster for some networks (e.g. "
            "MONAI's UNet), a wait of seconds to minutes first.",
        )
        self.outputs = ComboBox(
            label="output",
            choices=OUTPUTS,
            value="both",
            tooltip="labels: '<image> prediction' (argmax); probabilities: one layer per "
            "foreground class.",
        )
        self.roi = ComboBox(
            label="region (shapes)",
            choices=layer_choices(napari_viewer, Shapes, True),
            tooltip="Optional: run only inside the bounding box of this Shapes layer's shapes.",
        )
        self.zarr_output = LineEdit(
            label="zarr output (optional)",
            value="",
            tooltip="A new .zarr path: stream the probabilities to disk (for volumes larger than "
            "memory); shown lazily when done.",
        )
        self.run_button = PushButton(text="Run", tooltip="Start tiled inference.")
        self.cancel_button = PushButton(
            text="Cancel",
            enabled=False,
            tooltip="Stop after the current batch; what was computed stays.",
        )
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = message_label("status")
        self.legend = message_label("classes")
        self.legend.visible = False
        self.controls = [
            self.image,
            self.source,
            self.model_file,
            self.trust,
            self.factory,
            self.weights,
            self.patch_size,
            self.patch_overlap,
            self.mode,
            self.batch_size,
            self.device,
            self.amp,
            self.tta,
            self.compile,
            self.outputs,
            self.roi,
            self.zarr_output,
        ]
        self.extend(
            [
                *self.controls,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
                self.legend,
            ]
        )
        self.lifecycle = Lifecycle(self, on_close=self._abandon)
        # the patch and overlap a chosen model records, fitted to the image, until typed
        self.followed_patch = FollowedPatch(self.patch_size, self.patch_overlap)
        watch_layers(
            self.lifecycle, napari_viewer, self.image, self.roi, on_first=self._follow_image
        )
        from .training import SAVE_CALLBACKS  # a model saved by training becomes a choice

        self.lifecycle.add_mouse_callback(SAVE_CALLBACKS, lambda *_: self.source.reset_choices())
        self.source.changed.connect(self._show_source_fields)
        self.model_file.changed.connect(self._follow_model_patch)
        self.image.changed.connect(self._follow_image)
        self._follow_image()  # a scan already open: the demo's patch fitted to it
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.worker: Any = None
        self.refresh_seconds: list[float] = []  # UI-thread time per yielded step (measured)
        self.last_step: InferenceStep | None = None
        self._zarr_path: str | None = None
        self._label_layer: Any = None
        self._probability_layers: list[Any] = []
        self._box: tuple[slice, ...] = ()
        self._image: Any = None  # the image of the last run
        self._class_values: list[int] | None = None  # a trained model's values, by channel
        self._failed = self._outputs_complete = False
        self._added_names: set[str] = set()
        warm_up_labels()

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """Whether a run is in progress."""
        return self.worker is not None

    def _show_source_fields(self, *_: Any) -> None:
        self.model_file.visible = self.trust.visible = self.source.value == "file"
        self.factory.visible = self.weights.visible = self.source.value == "module:factory"
        trained = str(self.source.value).startswith("trained: ")
        # a narrow dock cuts "trained: <name>": the tooltip says which file it is
        self.source.tooltip = self._model_source() if trained else SOURCE_TOOLTIP
        self._follow_model_patch()

    def _follow_model_patch(self, *_: Any, keep_typed: bool = False) -> None:
        """Choosing a model that records its training patch ("Train from annotations"), or
        the demo (64), sets the patch size to it, fitted to the image (:func:`fit_patch`: an
        axis thinner than the patch gets its own even size, as training padded it), and the
        overlap to a quarter of it (the user may then change them): 64 does not fit a scan
        with an axis under 64. With ``keep_typed`` (another image), a field the user typed
        stays. A file or factory model without a recorded patch leaves the fields alone."""
        shape = shape_or_none(self.image.value)  # not 3D: refused at Run
        try:
            source = self._model_source()
            recorded = model_patch_size(source)
        except (ValueError, KeyError, OSError):  # no file chosen yet, or not a model
            return
        if recorded is None and source == DEMO:  # the demo takes any size: its 64, fitted
            recorded = DEMO_PATCH
        if recorded is None:  # a user's model: its size constraints are unknown
            return
        self.followed_patch.follow(recorded, shape, keep_typed=keep_typed)

    def _follow_image(self, *_: Any) -> None:
        """Another image: a patch or overlap that followed the model is fitted to it; what
        the user typed stays."""
        self._follow_model_patch(keep_typed=True)

    def _source_choices(self, *_: Any) -> list[str]:
        """demo, file, module:factory, then the models saved by "Train from annotations"."""
        from .training import SAVED_MODELS

        return [*MODEL_SOURCES, *(f"trained: {name}" for name in SAVED_MODELS)]

    def _model_source(self) -> str:
        if str(self.source.value).startswith("trained: "):
            from .training import SAVED_MODELS

            return str(SAVED_MODELS[str(self.source.value).removeprefix("trained: ")])
        if self.source.value == "file":
            path = Path(str(self.model_file.value))
            if not str(self.model_file.value).strip() or path.is_dir():
                raise ValueError("model file: choose a TorchScript (.pt) or .pt2 file")
            return str(path)
        if self.source.value == "module:factory":
            if ":" not in str(self.factory.value):
                raise ValueError(
                    f"module:factory must look like 'package.module:make_model', "
                    f"got {str(self.factory.value)!r}"
                )
            return str(self.factory.value)
        return "demo"

    def _wanted_outputs(self, stream: StreamTarget | None) -> tuple[bool, bool]:
        """(labels, probabilities) layers to fill; none when streaming to zarr."""
        if stream is not None:
            return False, False
        return self.outputs.value in ("labels", "both"), self.outputs.value in (
            "probabilities",
            "both",
        )

    def _model_options(self) -> dict[str, Any]:
        """``weights``/``trust_pickle`` for ``load_model``, from the visible fields."""
        options: dict[str, Any] = {"trust_pickle": bool(self.trust.value)}
        weights = str(self.weights.value).strip()
        if self.source.value == "module:factory" and weights and not Path(weights).is_dir():
            options["weights"] = weights
        return options

    def _harmonisation(self) -> Harmonisation | None:
        """The intensity reference of a model trained by "Train from annotations", if any."""
        try:
            return Harmonisation.from_metadata(read_model_metadata(self._model_source()))
        except (OSError, ValueError):  # a bad file: the worker reports it, with the widget's words
            return None

    def config(self) -> InferenceConfig:
        """The run's settings, from the controls."""
        try:
            return InferenceConfig(
                patch_size=parse_size(self.patch_size.value, "patch size"),
                patch_overlap=parse_size(self.patch_overlap.value, "overlap"),
                overlap_mode=self.mode.value,
                batch_size=int(self.batch_size.value),
                device=self.device.value,
                amp=bool(self.amp.value),
                tta=bool(self.tta.value),
                compile=bool(self.compile.value),
                fixed_batch=str(self.model_file.value).endswith(".pt2")
                and self.source.value == "file",
                harmonisation=self._harmonisation(),
            )
        except (ValueError, TypeError) as error:
            raise reworded(error, WIDGET_WORDS) from None

    # ------------------------------------------------------------------ run
    def run(self, *_: Any) -> Any:
        """Start a run in a worker thread; returns the worker (None when the settings are bad)."""
        if self.running:
            return self.worker
        try:
            image = self.image.value
            if image is None:
                raise ValueError("choose an image layer")
            config = self.config()
            source = self._model_source()
            stream = self._stream_target()
            if stream is None:
                volume = volume_of(image)
                box = (
                    roi_box(self.roi.value, image)
                    if self.roi.value is not None
                    else tuple(slice(0, s) for s in volume.shape)
                )
            else:
                box = tuple(slice(0, s) for s in shape_of(image))
            check_patch_inside(config.patch, box, "region" if self.roi.value else "image")
        except (ValueError, TypeError) as error:
            self._error(error)
            return None
        self._box, self._image, self._started = box, image, time.perf_counter()
        self._last_refresh, self._dirty, self._refresh_interval = 0.0, False, REFRESH_INTERVAL
        self.refresh_seconds = []
        self.last_step, self._failed = None, False
        self._label_layer, self._probability_layers = None, []
        self._outputs_complete, self._added_names = False, set()
        want_labels, want_probabilities = self._wanted_outputs(stream)
        self._class_values = known_class_values(source)  # names the probability layers
        self._add_outputs(want_labels, known_channels(source) if want_probabilities else None)
        self.status.value = "loading the model…"
        if stream is None:
            region: Any = torch.from_numpy(np.ascontiguousarray(volume[box]))[None]
            if config.harmonisation is not None:  # fitted on the whole image, in the worker
                region = (volume, box)
        else:  # read lazily by the engine, written to zarr as rows finish: nothing held here
            data = lazy_data_of(image)
            region = torch.from_numpy(data)[None] if isinstance(data, np.ndarray) else data
        handlers = {"yielded": self._on_step, "errored": self._error, "finished": self._on_finished}
        worker = create_worker(  # handlers via _connect: napari re-raises errors without one
            self._steps,
            source,
            {**self._model_options(), "outputs": (want_labels, want_probabilities)},
            config,
            region,
            stream,
            _start_thread=False,
            _connect=handlers,
        )
        self.worker = worker
        self._set_running(True)
        start_worker(worker)
        return worker

    def _stream_target(self) -> StreamTarget | None:
        """The zarr output to stream to, when one is given (checked before running)."""
        path = str(self.zarr_output.value).strip()
        self._zarr_path = path or None
        if not path:
            return None
        if not is_zarr_path(path):
            raise ValueError(f"zarr output must end in .zarr, got '{path}'")
        if Path(path).exists():
            raise ValueError(f"zarr output exists: '{path}' (choose a new path)")
        if self.roi.value is not None:
            raise ValueError(
                "region (shapes) and zarr output cannot be combined: the zarr output covers the"
                " whole image (a region's prediction would need its offset inside the store);"
                " clear one of the two, or run the region without a zarr output"
            )
        return zarr_target(path)

    def _steps(  # noqa: PLR0913
        self,
        source: str,
        options: dict[str, Any],
        config: InferenceConfig,
        region: Any,
        stream: StreamTarget | None,
    ) -> Any:
        want_labels, want_probabilities = options.pop("outputs")
        try:
            if isinstance(region, tuple):  # (whole image, box): harmonise the box as in the whole
                assert config.harmonisation is not None
                whole, box = region
                region = config.harmonisation.apply(whole[None], box)
                config = replace(config, harmonisation=None)
            model = load_model(source, device=config.device, **options)
            values = model_class_values(source)  # None unless trained by "Train from annotations"
            engine = TiledInference(model, config, stream)
            for step in engine.run(region):  # post-processing here, off the GUI thread
                yield StepUpdate.of(step, want_labels, want_probabilities, values)
        except RuntimeError as error:
            # superqt drops RuntimeErrors raised in workers (no errored/finished signal), which
            # would leave the widget running forever: hand them over as another type.
            raise InferenceFailed(f"{type(error).__name__}: {error}") from error

    def cancel(self, *_: Any) -> None:
        """Stop after the current batch; the partial output stays in the layers."""
        if self.worker is not None:
            self.status.value = "cancelling…"
            self.worker.quit()

    def _abandon(self) -> None:
        """The dock or the viewer is closing: stop the worker; its late results are dropped."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.quit()

    # ------------------------------------------------------------------ results (GUI thread)
    def _add_outputs(self, labels: bool, channels: int | None) -> None:
        """Add (or reuse) the output layers at the click, so that none is created mid-run.

        Adding a layer costs napari 0.1–0.3 s on the GUI thread (0.6–1.8 s for the first
        ones, imports and colour bars included): at the click the user waits for it; during
        the run it would freeze a viewer they are already using. Labels are called "<image>
        prediction"; probabilities one layer per foreground class ("<image> probability class
        k"; channel 0 is background unless the model has a single output channel), added here
        when the model's channel count is known without running it (``channels``), else at the
        first result. All are placed like the input, shifted to the region's start. The layers
        added here are removed again when the run ends before its first result (a failed or
        cancelled start adds none).
        """
        if labels:
            name = f"{self._image.name} prediction"
            data, box = self._reusable(name, np.int32)
            self._label_layer = show_layer(
                self.viewer, name, "labels", data, opacity=0.6, **self._placed(box)
            )
            self._keep_in_place(self._label_layer, box)
        if channels is not None:
            self._add_probability_layers(channels)

    def _add_probability_layers(self, channels: int) -> None:
        values = self._class_values
        for channel in range(1, channels) if channels > 1 else [0]:
            # a trained model's channel holds a painted value (channel 1 of values 1, 2 is
            # value 2): named by it; other models' channels by their index
            shown = f"of {values[channel]}" if values and channel < len(values) else None
            name = f"{self._image.name} probability {shown or f'class {max(channel, 1)}'}"
            data, box = self._reusable(name, np.float32)
            layer = show_layer(
                self.viewer,
                name,
                "image",
                data,
                colormap="magma",
                blending="additive",
                contrast_limits=(0, 1),
                visible=channel <= 1,
                **self._placed(box),
            )
            self._keep_in_place(layer, box)
            layer.metadata["channel"] = channel
            layer.colorbar.visible = True  # drawn while the layer is shown
            self._probability_layers.append(layer)

    def _placed(self, box: tuple[slice, ...]) -> dict[str, Any]:
        return {"like": self._image, "offset": [b.start for b in box], "overlay": False}

    def _keep_in_place(self, layer: Any, box: tuple[slice, ...]) -> None:
        """The output stays drawn in place as the view turns (a region's on an oblique scan
        moves, see :mod:`._region_layers`), after the run and the dock too."""
        keep_in_place(self.viewer, layer, self._box, box)

    def _complete_outputs(self, update: StepUpdate) -> None:
        """At the first result: the class legend, and the probability layers if not added yet."""
        if update.labels is not None and self._label_layer is not None:
            shown = update.class_values or range(1, update.classes)
            self.legend.value = class_legend(self._label_layer, shown)
            self.legend.visible = True
        if update.probabilities is not None and not self._probability_layers:
            if update.class_values:
                self._class_values = list(update.class_values)
            self._add_probability_layers(update.probabilities.shape[0])

    def _remove_added_outputs(self) -> None:
        """The run ended before its first result: take back the layers its click added."""
        for layer in self._output_layers():
            if layer.name in self._added_names:
                self.viewer.layers.remove(layer)
        self._label_layer, self._probability_layers = None, []

    def _reusable(self, name: str, dtype: Any) -> tuple[np.ndarray, tuple[slice, ...]]:
        """The data of the existing layer ``name`` and where it lies, if it shows this run's
        region (a re-run refines it, keeping what was painted around it); else zeros placed
        for the current view (from voxel 0 on the sliced axis of an oblique scan in 2D)."""
        box = box_for_view(self.viewer, self._image, self._box)
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            data, placed = layer.data, data_box(layer) or box
            same = region_of(layer) in (None, self._box) and data.shape == size_of(placed)
            if same and isinstance(data, np.ndarray) and data.dtype == dtype:
                return data, placed
        self._added_names.add(name)
        return np.zeros(size_of(box), dtype), box

    def _on_step(self, update: StepUpdate) -> None:
        if self.lifecycle.closed:
            return
        start = time.perf_counter()
        step = self.last_step = update.step
        self.progress.max, self.progress.value = step.total, step.done
        remaining = step.elapsed / step.done * (step.total - step.done)
        timing = f"{step.elapsed:.1f} s · ETA {remaining:.1f} s"
        if update.region is None:  # streamed: rows before this batch's grid row are on disk
            written = (
                step.locations[0].index_ini[0] if step.done < step.total else self._box[0].stop
            )
            self.status.value = (
                f"{step.done}/{step.total} patches · rows 0–{written} written · {timing}"
            )
            self.refresh_seconds.append(time.perf_counter() - start)
            return
        if not self._outputs_complete:
            self._outputs_complete = True
            self._complete_outputs(update)
        target = tuple(slice(r.start, r.stop) for r in update.region)  # in the region's voxels
        shown = self._output_layers()  # a layer the user removed is not written
        if update.labels is not None and self._label_layer in shown:
            self._label_layer.data[self._stored(self._label_layer, target)] = update.labels
        if update.probabilities is not None:
            for layer in self._probability_layers:
                if layer in shown:
                    channel = update.probabilities[layer.metadata["channel"]]
                    layer.data[self._stored(layer, target)] = channel
        self._dirty |= self._in_view(
            tuple(slice(b.start + t.start, b.start + t.stop) for b, t in zip(self._box, target))
        )
        self.status.value = f"{step.done}/{step.total} patches · {timing}"
        if self._dirty and start - self._last_refresh > self._refresh_interval:
            self._refresh()
        self.refresh_seconds.append(time.perf_counter() - start)

    def _stored(self, layer: Any, target: tuple[slice, ...]) -> tuple[slice, ...]:
        """``target`` (in the region's voxels) in the layer's data, which may have moved since
        the run started (a turned view, see :mod:`._region_layers`)."""
        box = data_box(layer) or self._box
        shift = [b.start - c.start for b, c in zip(self._box, box)]
        return tuple(slice(t.start + d, t.stop + d) for t, d in zip(target, shift))

    def _in_view(self, target: tuple[slice, ...]) -> bool:
        """Whether voxels in ``target`` are on screen (any, in 3D view; the slice's, in 2D)."""
        axis, position = slice_position(self.viewer, self._image)
        return axis is None or target[axis].start <= position < target[axis].stop

    def _refresh(self) -> None:
        start = time.perf_counter()
        for layer in self._output_layers():
            if layer.visible:
                redraw_values(layer)
        self._dirty = False
        self._last_refresh = time.perf_counter()
        # Costly refreshes (3D views re-slice whole volumes) come less often: ≤ 10% of the time.
        self._refresh_interval = max(REFRESH_INTERVAL, 10 * (self._last_refresh - start))

    def _output_layers(self) -> list[Any]:
        layers = [self._label_layer, *self._probability_layers]
        return [layer for layer in layers if layer is not None and layer in self.viewer.layers]

    def _on_finished(self) -> None:
        if self.lifecycle.closed:
            return
        for layer in self._output_layers():  # hidden ones too: thumbnails
            layer.refresh()
        step = self.last_step
        if self._failed:
            pass  # the status shows this run's error
        elif step is None:
            self.status.value = "cancelled before the first patch (no output)"
        if step is None:
            self._remove_added_outputs()
        elif step.done < step.total:
            self.status.value = (
                f"cancelled at {step.done}/{step.total} patches (partial output kept)"
            )
        elif step is not None:
            self.status.value = (
                f"done: {step.total} patches in {time.perf_counter() - self._started:.1f} s"
            )
            if self._zarr_path is not None:
                self._show_zarr_output(self._zarr_path)
            show_info(f"Tiled inference finished: {step.total} patches")
        self.worker = None
        self._set_running(False)

    def _show_zarr_output(self, path: str) -> None:
        """Show the written zarr output lazily, placed like the input (channels first)."""
        [(data, meta, _)] = read_zarr_layers(path)
        middle = np.asarray(data[:, data.shape[1] // 2])  # one plane: contrast without a full read
        show_layer(
            self.viewer,
            f"{self._image.name} prediction (zarr)",
            "image",
            data,
            like=self._image,
            overlay=False,
            colormap="magma",
            contrast_limits=(float(middle.min()), float(max(middle.max(), middle.min() + 1e-6))),
        )
        self.status.value += f" · written to {path}"

    def _error(self, error: BaseException) -> None:
        if self.lifecycle.closed:
            return
        self._failed = True
        error = reworded(error, WIDGET_WORDS)
        kind = "" if isinstance(error, InferenceFailed) else f"{type(error).__name__}: "
        message = f"Tiled inference failed: {kind}{error}"
        self.status.value = f"⚠ {error}"
        show_error(message)

    def _set_running(self, running: bool) -> None:
        for control in [*self.controls, self.run_button]:
            control.enabled = not running
        self.cancel_button.enabled = running
