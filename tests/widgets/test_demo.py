import napari


def test_demo_docks_the_three_widgets_with_the_sample(monkeypatch, qtbot):
    from napari_patchwork.cli import main

    seen = {}

    def fake_run(*_, **__):  # napari.run would block in the event loop
        viewer = napari.current_viewer()
        seen["docks"] = set(viewer.window.dock_widgets)
        seen["layers"] = [layer.name for layer in viewer.layers]
        viewer.close()

    monkeypatch.setattr(napari, "run", fake_run)
    assert main(["demo"]) == 0
    assert {"Patch grid", "Sampler explorer", "Tiled inference"} <= seen["docks"]
    assert {"sample image", "sample labels", "sample probability"} <= set(seen["layers"])
