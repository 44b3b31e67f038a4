"""``napari-patchwork demo``: the viewer with the sample data and the four widgets."""

from __future__ import annotations

import napari


def run_demo() -> int:
    """Open a viewer with the sample volume and the plugin's widgets (needs the [napari] extra)."""
    from ..napari_contributions import sample_layers
    from . import PatchGridWidget, SamplerExplorerWidget, TiledInferenceWidget, TrainingWidget

    viewer = napari.Viewer(title="napari-patchwork demo")
    for data, meta, kind in sample_layers():
        getattr(viewer, f"add_{kind}")(data, **meta)
    for name, widget in (
        ("Patch grid", PatchGridWidget),
        ("Sampler explorer", SamplerExplorerWidget),
        ("Tiled inference", TiledInferenceWidget),
        ("Train from annotations", TrainingWidget),
    ):
        viewer.window.add_dock_widget(widget(viewer), name=name, area="right", tabify=True)
    napari.run()
    return 0
