"""Render screenshots of each widget in use into docs/images/ (run under a display or Xvfb).

xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_screenshots.py
"""

from __future__ import annotations

import time
from pathlib import Path

import imageio.v3 as iio
import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_patchwork.core.training import scribbles_from_labels
from napari_patchwork.napari_contributions import sample_layers
from napari_patchwork.widgets import (
    PatchGridWidget,
    SamplerExplorerWidget,
    TiledInferenceWidget,
    TrainingWidget,
)

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def settle(seconds: float = 0.5) -> None:
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def viewer_with_sample() -> napari.Viewer:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    for data, meta, kind in sample_layers():
        getattr(viewer, f"add_{kind}")(data, **meta)
    viewer.dims.set_point(0, 40)
    return viewer


def save(viewer: napari.Viewer, name: str) -> None:
    settle()
    iio.imwrite(OUT / name, viewer.screenshot(canvas_only=False, flash=False))
    print("wrote", OUT / name)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = viewer_with_sample()
    grid = PatchGridWidget(viewer)
    viewer.window.add_dock_widget(grid, name="Patch grid", area="right")
    grid.patch_size.value, grid.patch_overlap.value = "48", "16"
    grid.select_voxel((80, 60, 70))
    save(viewer, "patch-grid.png")
    viewer.dims.ndisplay = 3
    save(viewer, "patch-grid-3d.png")
    viewer.close()

    viewer = viewer_with_sample()
    explorer = SamplerExplorerWidget(viewer)
    viewer.window.add_dock_widget(explorer, name="Sampler explorer", area="right")
    explorer.sampler.value = "label"
    explorer.labels_layer.value = viewer.layers["sample labels"]
    explorer.label_probabilities.value = "0: 0.4, 1: 0.3, 2: 0.3"
    explorer.patch_size.value, explorer.num_patches.value = "24", 300
    explorer.sample()
    viewer.layers["expected coverage"].visible = True
    viewer.layers["sample labels"].visible = False
    save(viewer, "sampler-explorer.png")
    viewer.close()

    viewer = viewer_with_sample()
    viewer.layers["sample labels"].visible = False
    widget = TiledInferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Tiled inference", area="right")
    widget.patch_size.value, widget.patch_overlap.value, widget.outputs.value = "48", "8", "labels"
    widget.run()
    while widget.running and (
        widget.last_step is None or widget.last_step.done < widget.last_step.total // 2
    ):
        settle(0.05)
    save(viewer, "tiled-inference-running.png")
    while widget.running:
        settle(0.1)
    save(viewer, "tiled-inference-done.png")
    viewer.close()
    training_screenshots()


def training_screenshots() -> None:
    """Train from annotations: scripted strokes, a run in progress, the result."""
    viewer = viewer_with_sample()
    viewer.layers["sample probability"].visible = False
    widget = TrainingWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train from annotations", area="right")
    truth = np.asarray(viewer.layers["sample labels"].data)
    viewer.layers["sample labels"].visible = False
    layer = widget.new_annotations()
    layer.data = scribbles_from_labels(truth, slices=5, disks=4, radius=3, seed=0)
    layer.refresh()
    save(viewer, "training-strokes.png")
    widget.seconds.value = 30.0
    widget.train()
    start = time.time()
    while widget.running and time.time() - start < 15:
        settle(0.1)
    save(viewer, "training-running.png")
    while widget.running:
        settle(0.2)
    save(viewer, "training-done.png")
    viewer.close()


if __name__ == "__main__":
    main()
