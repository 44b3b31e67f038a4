"""Interactive training vs a random-forest pixel classifier, on the same scripted scribbles.

A scripted annotator paints small disks on a few slices inside each class of a ground truth
(well under 1 % of the voxels). On each volume, in one run:

- our 3D network, trained for ``--seconds`` from scratch with the training core (patches from
  a LabelSampler balanced over the painted classes, Queue with augmentation);
- a random forest (scikit-learn) on multiscale Gaussian / gradient-magnitude / Laplacian
  features z-scored per volume, as ilastik and APOC do, trained on the same scribbles;

both evaluated (mean Dice of the foreground classes) on the volume, and on the same anatomy as
another scanner would show it (bias field, gamma, intensity scale, noise). Volumes: the
synthetic sample, and the EPI brain volume that ships with nibabel's tests
(``example4d.nii.gz``, first frame), whose ground truth is a 3-class k-means of the smoothed
intensities (background / darker tissue / brighter tissue).

    python benchmarks/bench_training.py [--seconds 240] [--volumes synthetic real] [--json out]
    python benchmarks/bench_training.py --seconds 240 --augmentation full flips-noise none
    python benchmarks/bench_training.py --volumes real --schedule cosine constant --seed 1
    xvfb-run -a python benchmarks/bench_training.py --volumes synthetic --seconds 5 --widget 60
    xvfb-run -a python benchmarks/bench_training.py --widget-only --widget 60

``--augmentation`` trains one network per setting on each volume, in the same run (the forest
once per volume): ``default`` (training's default,
:data:`~napari_patchwork.core.training.augmentation.FLIPS_AND_NOISE`), ``full`` (flips, bias
fields, gamma, intensity scale and shift, noise: ``AugmentationConfig()``), ``no-contrast`` (no
gamma, scale or shift: :data:`~napari_patchwork.core.training.augmentation.NO_CONTRAST`),
``flips-noise``, ``none``.
``--schedule`` does the same for learning-rate schedules (``cosine``, training's default,
and ``constant``); ``--seed`` sets the training seed (initialisation, patch draws and
augmentation; the scribbles stay the same).
``--iterations`` replaces the time budget by a step count, to compare settings on a busy
machine.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_patchwork.core.data.harmonisation import Harmonisation, IntensityField
from napari_patchwork.core.training import Trainer, TrainingConfig, scribbles_from_labels
from napari_patchwork.core.training.augmentation import (
    FLIPS_AND_NOISE,
    NO_CONTRAST,
    AugmentationConfig,
    simulate_scanner,
)
from napari_patchwork.core.training.config import SCHEDULES
from napari_patchwork.sample import make_sample

SIGMAS = (0.7, 1.6, 3.5, 5.0)
PAINTING_SECONDS = 5.0  # the widget bench's dock is open this long before Train
WINDOW = (1280, 800)  # the widget bench's main window, pixels (a laptop screen's napari)
AUGMENTATIONS: dict[str, AugmentationConfig | None] = {
    "default": TrainingConfig().augmentation,
    "full": AugmentationConfig(),
    "no-contrast": NO_CONTRAST,
    "flips-noise": FLIPS_AND_NOISE,
    "none": None,
}


# ---------------------------------------------------------------------- volumes
def synthetic(size: int) -> tuple[np.ndarray, np.ndarray, str]:
    volume = make_sample((size, size, size), seed=0)
    return volume.image, volume.labels.astype(np.int64), f"synthetic {size}³ (blobs, tubes)"


def _kmeans_1d(values: np.ndarray, k: int, iterations: int = 50) -> np.ndarray:
    centres = np.quantile(values, np.linspace(0.1, 0.9, k))
    for _ in range(iterations):
        assignment = np.abs(values[:, None] - centres[None]).argmin(1)
        centres = np.array([values[assignment == c].mean() for c in range(k)])
    return np.sort(centres)


def real_epi() -> tuple[np.ndarray, np.ndarray, str]:
    """nibabel's example EPI (first frame) and a 3-class k-means of its smoothed intensities."""
    import nibabel as nib
    from scipy import ndimage

    path = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    image = np.asarray(nib.load(str(path)).dataobj[..., 0], np.float32)
    smooth = ndimage.gaussian_filter(image, 1.0)
    centres = _kmeans_1d(smooth.ravel()[::7], 3)
    labels = np.abs(smooth[..., None] - centres).argmin(-1).astype(np.int64)
    return image, labels, f"nibabel example4d EPI {image.shape} (k-means truth)"


# ---------------------------------------------------------------------- metrics
def mean_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the foreground classes (truth values > 0)."""
    scores = []
    for value in np.unique(truth):
        if value == 0:
            continue
        predicted, true = prediction == value, truth == value
        scores.append(2 * (predicted & true).sum() / max(predicted.sum() + true.sum(), 1))
    return float(np.mean(scores))


# ---------------------------------------------------------------------- random forest
def features(image: np.ndarray) -> np.ndarray:
    """``(N, F)`` multiscale features, each z-scored over the volume."""
    from scipy import ndimage

    image = image.astype(np.float32)
    stack = [image]
    for sigma in SIGMAS:
        stack.append(ndimage.gaussian_filter(image, sigma))
        stack.append(ndimage.gaussian_gradient_magnitude(image, sigma))
        stack.append(ndimage.gaussian_laplace(image, sigma))
    array = np.stack([f.ravel() for f in stack], 1)
    return (array - array.mean(0)) / np.maximum(array.std(0), 1e-8)


def forest(image: np.ndarray, strokes: np.ndarray) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    table = features(image)
    annotated = strokes.ravel() > 0
    model = RandomForestClassifier(n_estimators=100, n_jobs=2, random_state=0)
    model.fit(table[annotated], strokes.ravel()[annotated])
    return model


def forest_predict(model: Any, image: np.ndarray) -> np.ndarray:
    table = features(image)
    parts = [model.predict(table[i : i + 500_000]) for i in range(0, len(table), 500_000)]
    return np.concatenate(parts).reshape(image.shape)


# ---------------------------------------------------------------------- one volume
def run_volume(image: np.ndarray, truth: np.ndarray, name: str, args: argparse.Namespace) -> list:
    """One row per augmentation setting: the network's figures, the forest's (same in each)."""
    strokes = scribbles_from_labels(truth, slices=args.slices, disks=args.disks, seed=0)
    shifted = simulate_scanner(torch.from_numpy(image)[None], seed=1)[0].numpy()
    rows = []
    for augmentation, schedule in itertools.product(args.augmentation, args.schedule):
        row: dict[str, Any] = {
            "volume": name,
            "augmentation": augmentation,
            "schedule": schedule,
            "annotated": float((strokes > 0).mean()),
        }
        config = TrainingConfig(
            patch_size=args.patch_size,
            seconds=None if args.iterations else args.seconds,
            iterations=args.iterations,
            device=args.device,
            seed=args.seed,
            augmentation=AUGMENTATIONS[augmentation],
            schedule=schedule,
            harmonise=not args.no_harmonise,
        )
        trainer = Trainer((image, strokes), config)
        steps = list(trainer.run())
        row.update(
            iterations=trainer.iteration,
            seconds=round(trainer.seconds, 1),
            patches_per_second=steps[-1].patches_per_second,
            wait_fraction=steps[-1].wait_fraction,
        )
        start = time.perf_counter()
        row["net_dice"] = mean_dice(trainer.predict(image).labels.astype(np.int64) - 1, truth)
        row["net_predict_seconds"] = time.perf_counter() - start
        shifted_labels = trainer.predict(shifted).labels.astype(np.int64) - 1
        row["net_dice_shifted"] = mean_dice(shifted_labels, truth)
        rows.append(row)
        print(f"  {augmentation}, {schedule}: {row}", file=sys.stderr, flush=True)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("scikit-learn is not installed: random-forest baseline skipped", file=sys.stderr)
        return rows
    start = time.perf_counter()
    model = forest(image, strokes)
    baseline = {"rf_dice": mean_dice(forest_predict(model, image) - 1, truth)}
    baseline["rf_seconds"] = time.perf_counter() - start
    baseline["rf_dice_shifted"] = mean_dice(forest_predict(model, shifted) - 1, truth)
    reference = Harmonisation(reference=IntensityField.fit(image[None]))
    harmonised = reference.apply(shifted[None])[0].numpy()
    baseline["rf_dice_harmonised"] = mean_dice(forest_predict(model, harmonised) - 1, truth)
    for row in rows:
        row.update(baseline)
    return rows


class FullCollections:
    """The full (generation 2) collections on the GUI thread: ``spans`` of (start, end)."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    def record(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2 or threading.current_thread() is not threading.main_thread():
            return
        if phase == "start":
            self.spans.append((time.perf_counter(), math.nan))
        elif self.spans:
            self.spans[-1] = (self.spans[-1][0], time.perf_counter())


def widget_heartbeat(
    seconds: float, size: int, window: tuple[int, int] = WINDOW
) -> list[dict[str, float | str]]:
    """The GUI thread's longest stall while the widget trains and previews the visible slice.

    Train for ``seconds``, then Continue for ``seconds`` (the correction loop: same weights,
    same process). A 5 ms QTimer on the GUI thread records the gaps between its beats (the
    worst freeze a user can feel), as ``bench_widgets.py`` does for tiled inference, from the
    click to the end of the run, apart in the second after it, and apart again the full
    garbage collection that waits for the user's pause (no input here: about a second after
    the end, see ``widgets/_workers.py``). Needs a display (``xvfb-run -a``).

    The widget is docked in a main window of ``window`` (width, height) pixels, as a user has
    it. Last, the floor: the Train run's updates (status, loss line, previews) replayed through
    the widget's own handler at the times they arrived, with no training running: the gaps
    napari's own redraws make (on a software-OpenGL display they grow with the window's area).
    """
    import napari  # noqa: TID251 (this measurement needs a real viewer)
    from heartbeat import Heartbeat, idle_heartbeat, pump_events, pump_events_for
    from qtpy.QtWidgets import QApplication  # noqa: TID251

    from napari_patchwork.widgets._workers import idle_collection
    from napari_patchwork.widgets.training import TrainingWidget

    image, truth, _ = synthetic(size)
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name="image")
    viewer.add_labels(scribbles_from_labels(truth, seed=0).astype(np.int32), name="strokes")
    viewer.dims.ndisplay = 2
    viewer.window.resize(*window)
    opened_at = time.perf_counter()
    widget = TrainingWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train from annotations")
    handle_update = widget._on_step  # the worker's `yielded` slot, recorded for the replay
    updates: list[tuple[float, Any]] = []
    widget._on_step = lambda update: (
        updates.append((time.perf_counter(), update)),
        handle_update(update),
    )
    widget.annotations.value = viewer.layers["strokes"]
    widget.seconds.value, widget.device.value = seconds, "cpu"
    results: list[dict[str, float | str]] = []
    # the dock open, the user painting: the optimiser's imports run in the background then
    full = FullCollections()
    gc.callbacks.append(full.record)
    opened = idle_heartbeat(PAINTING_SECONDS)
    gc.callbacks.remove(full.record)
    results.append(
        {
            "run": f"dock open, {PAINTING_SECONDS:.0f} s before Train",
            "heartbeat max gap ms": 1000 * max(opened),
            "heartbeat p99 gap ms": 1000 * float(np.percentile(opened, 99)),
            "full collections on the GUI thread, s after the dock opened: ms": ", ".join(
                f"{a - opened_at:+.1f}: {1000 * (b - a):.0f}" for a, b in full.spans
            ),
        }
    )
    for name, click_button in (("Train", widget.train), ("Continue", widget.resume)):
        heartbeat, ended = Heartbeat(), [math.inf]
        handled = len(widget.refresh_seconds)
        full = FullCollections()
        gc.callbacks.append(full.record)
        start = time.perf_counter()
        click_button()  # Train: the prediction layer is created here ...
        QApplication.processEvents()  # ... and drawn for the first time
        click = time.perf_counter() - start
        if name == "Train":
            updates.clear()
            train_started = start
        else:
            train_updates = list(updates)
        # connected after the widget's and the collector hold's own `finished` slots: a gap
        # that ends after this holds the end of the run (the hold's full collection)
        widget.worker.finished.connect(
            lambda ended=ended: ended.__setitem__(0, time.perf_counter())
        )
        heartbeat.start()
        pump_events(lambda: widget.running)
        # the second after the run, apart; then, no input arriving, until the collection
        # that waits for the user's pause has run (widgets/_workers.py)
        end = time.perf_counter() + 1.0
        pump_events(
            lambda end=end: (
                (time.perf_counter() < end or idle_collection().pending)
                and time.perf_counter() < end + 10
            )
        )
        if idle_collection().pending:
            raise RuntimeError("the idle-time collection did not run")
        pump_events_for(0.3)  # the beats after it, which measure it
        heartbeat.stop()
        gaps = heartbeat.gaps
        gc.callbacks.remove(full.record)
        after = [gap for gap, when in gaps if ended[0] <= when < ended[0] + 1.0] or [0.0]
        paused = [gap for gap, when in gaps if when >= ended[0] + 1.0] or [0.0]
        during = [gap for gap, when in gaps if when < ended[0]]
        handler = widget.refresh_seconds[handled:]
        results.append(
            {
                "run": name,
                "steps": len(handler),
                "click (layer created, drawn) ms": 1000 * click,
                "handler max ms": 1000 * max(handler),
                "heartbeat max gap ms": 1000 * max(during),
                "at s after the click": max((g, w) for g, w in gaps if w < ended[0])[1] - start,
                "heartbeat p99 gap ms": 1000 * float(np.percentile(during, 99)),
                "gaps over 35 ms": float(sum(gap > 0.035 for gap in during)),
                "max gap at the end and in the second after ms": 1000 * max(after),
                "collection at the pause (no input) ms": 1000 * max(paused),
                "full collections on the GUI thread, s after the end: ms": ", ".join(
                    f"{a - ended[0]:+.1f}: {1000 * (b - a):.0f}" for a, b in full.spans
                ),
            }
        )
    results.append(replay(train_updates, train_started, handle_update, window))
    viewer.close()
    return results


def replay(
    updates: list[tuple[float, Any]], start: float, handle_update: Any, window: tuple[int, int]
) -> dict[str, float | str]:
    """The floor: the recorded run's updates handled again at their times, nothing training."""
    from heartbeat import Heartbeat, pump_events

    from napari_patchwork.core.training import TrainingStep

    steps = [(when - start, update) for when, update in updates if isinstance(update, TrainingStep)]
    heartbeat = Heartbeat()
    began = time.perf_counter()
    heartbeat.start()
    for offset, update in steps:
        pump_events(lambda offset=offset: time.perf_counter() - began < offset)
        handle_update(update)
    pump_events(lambda: time.perf_counter() - began < (steps[-1][0] if steps else 0) + 0.5)
    heartbeat.stop()
    gaps = heartbeat.intervals()
    previews = sum(update.preview is not None for _, update in steps)
    return {
        "run": f"floor: Train's {len(steps)} updates ({previews} previews) replayed, no training,"
        f" window {window[0]}x{window[1]}",
        "heartbeat max gap ms": 1000 * max(gaps),
        "heartbeat p99 gap ms": 1000 * float(np.percentile(gaps, 99)),
        "gaps over 35 ms": float(sum(gap > 0.035 for gap in gaps)),
    }


def table(rows: list[dict]) -> str:
    def number(row: dict, key: str, fmt: str = "{:.3f}") -> str:
        return fmt.format(row[key]) if key in row else "n/a"

    lines = [
        "| volume | augmentation | schedule | annotated | net Dice | forest Dice |"
        " net Dice, other scanner | forest Dice, other scanner |"
        " forest, other scanner harmonised | iterations | seconds |"
        " patches/s | waiting for patches |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['volume']} | {row['augmentation']} | {row['schedule']} |"
            f" {100 * row['annotated']:.2f} % |"
            f" {number(row, 'net_dice')} |"
            f" {number(row, 'rf_dice')} | {number(row, 'net_dice_shifted')} |"
            f" {number(row, 'rf_dice_shifted')} | {number(row, 'rf_dice_harmonised')} |"
            f" {row['iterations']} | {row['seconds']:.0f} |"
            f" {row['patches_per_second']:.1f} | {100 * row['wait_fraction']:.1f} % |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=240.0, help="training time per volume")
    parser.add_argument("--volumes", nargs="+", choices=["synthetic", "real"], default=None)
    parser.add_argument(
        "--iterations", type=int, default=None, help="train this many steps instead of --seconds"
    )
    parser.add_argument(
        "--augmentation",
        nargs="+",
        choices=list(AUGMENTATIONS),
        default=["default"],
        help="augmentation settings to train with, one network each",
    )
    parser.add_argument(
        "--schedule",
        nargs="+",
        choices=list(SCHEDULES),
        default=[TrainingConfig().schedule],
        help="learning-rate schedules to train with, one network each (default: training's)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="TrainingConfig seed (initialisation, patches, augmentation; not the scribbles)",
    )
    parser.add_argument("--size", type=int, default=96, help="edge of the synthetic volume")
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--slices", type=int, default=5, help="annotated slices per class")
    parser.add_argument("--disks", type=int, default=3, help="disks per class and slice")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--no-harmonise",
        action="store_true",
        help="train without the intensity reference (TrainingConfig(harmonise=False))",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--widget",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also train this long in the napari widget and report GUI heartbeat gaps"
        " (needs a display: xvfb-run -a)",
    )
    parser.add_argument(
        "--window",
        type=lambda text: tuple(int(v) for v in text.lower().split("x")),
        default=WINDOW,
        metavar="WIDTHxHEIGHT",
        help="the widget bench's napari window (default %(default)s): on a software-OpenGL"
        " display every redraw costs in proportion to its area",
    )
    parser.add_argument(
        "--widget-only",
        action="store_true",
        help="skip the training table: the widget is then the process's first training",
    )
    args = parser.parse_args()
    volumes = {"synthetic": lambda: synthetic(args.size), "real": real_epi}
    rows = []
    for key in [] if args.widget_only else args.volumes or list(volumes):
        image, truth, name = volumes[key]()
        rows += run_volume(image, truth, name, args)
        print(f"done: {name}", file=sys.stderr, flush=True)
    if rows:
        print(table(rows))
    if args.widget > 0:
        for result in widget_heartbeat(args.widget, args.size, args.window):
            figures = ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in result.items()
                if k != "run"
            )
            print(f"widget training, 2D, {result['run']}: {figures}")
            rows.append({"widget": result})
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
