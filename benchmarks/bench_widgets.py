"""Interactivity of the napari widgets, measured in a real (Xvfb) viewer.

- Patch-grid overlay for ~1,000 and ~10,000 patches (2D slice and 3D wireframe): the time of
  our update after a parameter change (UI thread), the update plus the full render it causes,
  and a render with nothing changed (what this machine's software OpenGL costs anyway),
  against a Shapes layer of the slice's boxes (the approach we avoid).
- Live inference: the click that starts a run (output layers are created then), the time each
  yielded step's handler takes, and the longest gap of a 5 ms heartbeat timer on the GUI
  thread during the run (the worst freeze a user can feel).

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_widgets.py
"""

from __future__ import annotations

import statistics
import time

import napari
import numpy as np
from heartbeat import Heartbeat, pump_events
from qtpy.QtWidgets import QApplication

from napari_patchwork.data import make_sample
from napari_patchwork.widgets import PatchGridWidget, TiledInferenceWidget
from napari_patchwork.widgets._layers import grid_boxes


def render(viewer: napari.Viewer) -> None:
    QApplication.processEvents()
    viewer.screenshot(canvas_only=True, flash=False)  # forces a full draw


def grid_overlay(shape: int, patch: int, ndisplay: int, shapes_baseline: bool) -> dict[str, float]:
    """Times for one parameter change: our update (UI thread), then the render it causes."""
    viewer = napari.Viewer(show=True)
    viewer.add_image(np.zeros((shape,) * 3, np.float32), name="image")
    viewer.dims.ndisplay = ndisplay
    widget = PatchGridWidget(viewer)
    render(viewer)
    widget.patch_overlap.value = "0"  # first: patch 17 with overlap 16 would be a 1-voxel step
    widget.patch_size.value = str(patch + 1)  # warm-up change
    render(viewer)
    start = time.perf_counter()
    render(viewer)
    unchanged_render = time.perf_counter() - start
    start = time.perf_counter()
    widget.patch_size.value = str(patch)
    update = time.perf_counter() - start
    render(viewer)
    total = time.perf_counter() - start
    result = {
        "patches": len(widget.plan),
        "vectors": len(viewer.layers["patch grid"].data),
        "update": update,
        "update + render": total,
        "render, nothing changed": unchanged_render,
        "shapes": float("nan"),
    }
    if shapes_baseline:
        result["shapes"] = shapes_layer_time(viewer, widget, shape)
    viewer.close()
    return result


def shapes_layer_time(viewer: napari.Viewer, widget: PatchGridWidget, shape: int) -> float:
    """A Shapes layer of the slice's rectangles (the approach we avoid), added and rendered."""
    position = shape // 2
    ini, fin = grid_boxes(widget.plan, 0, position)
    rectangles = [
        np.array(
            [
                [position, y, x]
                for y, x in ((a[1], a[2]), (a[1], b[2] - 1), (b[1] - 1, b[2] - 1), (b[1] - 1, a[2]))
            ]
        )
        for a, b in zip(ini, fin)
    ]
    start = time.perf_counter()
    viewer.add_shapes(
        rectangles, shape_type="rectangle", edge_color="yellow", face_color="transparent"
    )
    render(viewer)
    return time.perf_counter() - start


def live_inference(shape: int, ndisplay: int) -> dict[str, float]:
    viewer = napari.Viewer(show=True)
    volume = make_sample((shape,) * 3, seed=0)
    viewer.add_image(volume.image, name="image")
    viewer.dims.ndisplay = ndisplay
    widget = TiledInferenceWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value, widget.batch_size.value = "48", "8", 2
    render(viewer)
    start = time.perf_counter()
    widget.run()  # the click: output layers are created here, before the run starts
    QApplication.processEvents()  # ... and drawn for the first time
    click = time.perf_counter() - start
    heartbeat = Heartbeat()
    heartbeat.start()
    pump_events(lambda: widget.running)
    heartbeat.stop()
    gaps = heartbeat.intervals()
    viewer.close()
    handler = widget.refresh_seconds
    return {
        "steps": len(handler),
        "click (layers created, drawn) ms": 1000 * click,
        "handler median ms": 1000 * statistics.median(handler),
        "handler max ms": 1000 * max(handler),
        "heartbeat max gap ms": 1000 * max(gaps),
        "heartbeat p99 gap ms": 1000 * float(np.percentile(gaps, 99)),
    }


def main() -> None:
    print(
        "| grid | view | patches | vectors | our update s | update + render s |"
        " render alone s | Shapes layer s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for shape, patch in ((160, 16), (176, 8)):
        for ndisplay in (2, 3):
            r = grid_overlay(shape, patch, ndisplay, shapes_baseline=ndisplay == 2)
            print(
                f"| {shape}³ / {patch} | {ndisplay}D | {r['patches']} | {r['vectors']} |"
                f" {r['update']:.3f} | {r['update + render']:.3f} |"
                f" {r['render, nothing changed']:.3f} | {r['shapes']:.3f} |",
                flush=True,
            )
    print()
    for shape, ndisplay in ((96, 2), (160, 2), (160, 3)):
        result = live_inference(shape, ndisplay)
        cells = " | ".join(
            f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
        )
        print(f"live inference {shape}³ {ndisplay}D: {cells}", flush=True)


if __name__ == "__main__":
    main()
