"""Interactivity of the napari widgets, measured in a real (Xvfb) viewer.

- Time to draw the patch-grid overlay for ~1,000 and ~10,000 patches (2D slice and 3D
  wireframe), including one full render, against a Shapes layer of the same boxes (the
  approach we avoid).
- UI-thread time during live inference: the time each yielded step's handler takes, and the
  longest gap of a 5 ms heartbeat timer on the GUI thread (the worst freeze a user can feel).

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_widgets.py
"""

from __future__ import annotations

import statistics
import time

import napari
import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_patchwork.data import make_sample
from napari_patchwork.widgets import PatchGridWidget, TiledInferenceWidget
from napari_patchwork.widgets._layers import grid_boxes


def render(viewer: napari.Viewer) -> None:
    QApplication.processEvents()
    viewer.screenshot(canvas_only=True, flash=False)  # forces a full draw


def grid_overlay(
    shape: int, patch: int, ndisplay: int, shapes_baseline: bool
) -> tuple[int, float, float]:
    viewer = napari.Viewer(show=True)
    viewer.add_image(np.zeros((shape,) * 3, np.float32), name="image")
    viewer.dims.ndisplay = ndisplay
    widget = PatchGridWidget(viewer)
    render(viewer)
    times = []
    for size in (patch + 1, patch):  # second one is timed warm
        start = time.perf_counter()
        widget.patch_overlap.value = "0"  # first: patch 17 with overlap 16 would be a 1-voxel step
        widget.patch_size.value = str(size)
        render(viewer)
        times.append(time.perf_counter() - start)
    count = len(widget.plan)
    baseline = float("nan")
    if shapes_baseline:
        axis, position = (0, shape // 2) if ndisplay == 2 else (None, 0)
        ini, fin = grid_boxes(widget.plan, axis, position)
        rectangles = [
            np.array(
                [
                    [position, y, x]
                    for y, x in (
                        (a[1], a[2]),
                        (a[1], b[2] - 1),
                        (b[1] - 1, b[2] - 1),
                        (b[1] - 1, a[2]),
                    )
                ]
            )
            for a, b in zip(ini, fin)
        ]
        start = time.perf_counter()
        viewer.add_shapes(
            rectangles, shape_type="rectangle", edge_color="yellow", face_color="transparent"
        )
        render(viewer)
        baseline = time.perf_counter() - start
    viewer.close()
    return count, times[-1], baseline


def live_inference(shape: int) -> dict[str, float]:
    viewer = napari.Viewer(show=True)
    volume = make_sample((shape,) * 3, seed=0)
    viewer.add_image(volume.image, name="image")
    widget = TiledInferenceWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value, widget.batch_size.value = "48", "8", 2
    gaps, last = [], [time.perf_counter()]

    def beat() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(beat)
    timer.start(5)
    widget.run()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.001)
    timer.stop()
    viewer.close()
    handler = widget.refresh_seconds
    return {
        "steps": len(handler),
        "handler median ms": 1000 * statistics.median(handler),
        "handler max ms": 1000 * max(handler),
        "heartbeat max gap ms": 1000 * max(gaps),
        "heartbeat p99 gap ms": 1000 * float(np.percentile(gaps, 99)),
    }


def main() -> None:
    print("| grid | view | patches | overlay draw s | Shapes layer s |")
    print("|---|---|---|---|---|")
    for shape, patch in ((160, 16), (176, 8)):
        for ndisplay in (2, 3):
            count, ours, shapes = grid_overlay(
                shape, patch, ndisplay, shapes_baseline=ndisplay == 2
            )
            print(
                f"| {shape}³ / {patch} | {ndisplay}D | {count} | {ours:.3f} | {shapes:.3f} |",
                flush=True,
            )
    print()
    for shape in (96, 160):
        result = live_inference(shape)
        cells = " | ".join(
            f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
        )
        print(f"live inference {shape}³: {cells}", flush=True)


if __name__ == "__main__":
    main()
