import gc
import time

import numpy as np
import pytest
import torch
from qtpy.QtCore import QThreadPool

import napari_patchwork as pw
from napari_patchwork.io import load_model
from napari_patchwork.widgets import TiledInferenceWidget


class SlowNet(torch.nn.Module):
    def forward(self, x):
        time.sleep(0.15)
        return torch.cat([x, -x], 1)


def slow_net():
    return SlowNet()


def broken_net():
    def forward(x):
        raise RuntimeError("weights do not match this input")

    return forward


def wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def test_output_fills_in_and_equals_infer(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    image = viewer.layers["image"]
    before = np.array(image.data, copy=True)
    widget = TiledInferenceWidget(viewer)
    widget.patch_size.value = "16"
    widget.patch_overlap.value = "4"
    widget.batch_size.value = 2
    widget.device.value = "cpu"
    assert widget.run() is not None
    wait(qtbot, widget)
    expected = pw.infer(
        load_model("demo"), before[None], patch_size=16, patch_overlap=4, batch_size=2
    )
    labels = viewer.layers["image prediction"].data
    assert np.array_equal(labels, expected.argmax(0).numpy())
    probabilities = torch.softmax(expected, 0).numpy()
    for channel in range(1, len(probabilities)):  # one layer per foreground class
        layer = viewer.layers[f"image probability class {channel}"]
        assert np.allclose(layer.data, probabilities[channel], atol=1e-5)
    assert np.array_equal(image.data, before)  # the input layer is never modified
    assert widget.status.value.startswith("done")
    assert len(widget.refresh_seconds) == widget.last_step.total // 2 + widget.last_step.total % 2


def test_cancel_keeps_partial_output_and_leaves_no_thread(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    widget = TiledInferenceWidget(viewer)
    widget.source.value = "module:factory"
    widget.factory.value = "tests.widgets.test_inference_widget:slow_net"
    widget.patch_size.value = "8"
    widget.patch_overlap.value = "0"
    widget.batch_size.value = 1
    widget.run()
    qtbot.waitUntil(
        lambda: widget.last_step is not None and widget.last_step.done >= 2, timeout=30_000
    )
    # while it runs, napari's objects are out of full collections (no 200 ms GUI freezes)
    assert gc.get_freeze_count() > 0 and gc.isenabled()
    widget.cancel()
    wait(qtbot, widget, timeout=30_000)
    qtbot.waitUntil(lambda: gc.get_freeze_count() == 0, timeout=5_000)  # handed back
    assert gc.isenabled()
    step = widget.last_step
    assert step.done < step.total
    assert "cancelled" in widget.status.value
    labels = viewer.layers["image prediction"].data
    image = np.asarray(viewer.layers["image"].data)
    first = pw.GridPlan(image.shape, (8, 8, 8)).location(0).to_slices()
    assert np.array_equal(
        labels[first], (image[first] < 0).astype(labels.dtype)
    )  # finished patch exact
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=10_000)


def test_roi_limits_inference_to_the_box(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    shapes = viewer.add_shapes(
        [np.array([[10, 4, 4], [10, 4, 20], [10, 20, 20], [10, 20, 4]]) * [0.5, 0.5, 0.8]],
        shape_type="polygon",
        name="roi",
    )
    widget = TiledInferenceWidget(viewer)
    widget.roi.value = shapes
    widget.patch_size.value = "8"
    widget.patch_overlap.value = "0"
    widget.outputs.value = "labels"
    widget.run()
    wait(qtbot, widget)
    layer = viewer.layers["image prediction"]
    offset = np.array([axis.start for axis in widget._box])
    assert layer.data.shape[1:] == (17, 17)  # the prediction covers the region only, placed there
    assert np.allclose(layer.data_to_world((0, 0, 0)), viewer.layers["image"].data_to_world(offset))
    written = np.argwhere(layer.data > 0) + offset
    assert len(written) > 0
    assert written[:, 1].min() >= 4 and written[:, 1].max() <= 20
    assert written[:, 2].min() >= 4 and written[:, 2].max() <= 20
    assert not any("probability class" in layer.name for layer in viewer.layers)


@pytest.mark.parametrize(
    ("source", "value", "message"),
    [
        (
            "module:factory",
            "tests.widgets.test_inference_widget:broken_net",
            "weights do not match",
        ),
        ("file", "/nonexistent/model.pt", "does not exist"),
    ],
)
def test_model_errors_are_notifications_and_layers_stay(
    viewer_with_sample, qtbot, source, value, message
):
    from napari.utils.notifications import notification_manager

    viewer = viewer_with_sample
    before = np.array(viewer.layers["image"].data, copy=True)
    widget = TiledInferenceWidget(viewer)
    widget.source.value = source
    if source == "file":
        widget.model_file.value = value
    else:
        widget.factory.value = value
    widget.patch_size.value = "8"
    widget.patch_overlap.value = "2"
    records = len(notification_manager.records)
    names = [layer.name for layer in viewer.layers]
    widget.run()  # the collector pauses while the run sets up (tests/widgets/test_workers.py)
    wait(qtbot, widget)
    qtbot.waitUntil(lambda: gc.get_freeze_count() == 0 and gc.isenabled(), timeout=5_000)
    assert [layer.name for layer in viewer.layers] == names  # a failed start adds no layer
    assert message in widget.status.value
    new = [str(n.message) for n in notification_manager.records[records:]]
    assert any(message in text for text in new)
    assert np.array_equal(viewer.layers["image"].data, before)
    assert widget.run_button.enabled


def test_bad_settings_are_reported_before_running(viewer_with_sample):
    widget = TiledInferenceWidget(viewer_with_sample)
    widget.patch_overlap.value = "3"
    assert widget.run() is None
    assert "even" in widget.status.value and not widget.running


def test_zarr_output_streams_and_equals_infer(make_napari_viewer, qtbot, tmp_path):
    zarr = pytest.importorskip("zarr")
    data = np.random.default_rng(0).random((40, 24, 20)).astype(np.float32)
    source = zarr.create_array(
        tmp_path / "in.zarr", shape=data.shape, chunks=(8, 24, 20), dtype="float32"
    )
    source[:] = data
    viewer = make_napari_viewer()
    viewer.add_image(
        [source, source[::2, ::2, ::2]], multiscale=True, name="big", contrast_limits=(0, 1)
    )
    widget = TiledInferenceWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "16", "4"
    widget.batch_size.value, widget.device.value = 2, "cpu"
    widget.zarr_output.value = str(tmp_path / "out.zarr")
    assert widget.run() is not None
    assert "big prediction" not in viewer.layers  # nothing is held in memory for a zarr run
    wait(qtbot, widget)
    expected = pw.infer(
        load_model("demo"),
        torch.from_numpy(data)[None],
        patch_size=16,
        patch_overlap=4,
        batch_size=2,
    )
    written = zarr.open_array(tmp_path / "out.zarr")
    assert np.array_equal(written[:], expected.numpy())
    layer = viewer.layers["big prediction (zarr)"]
    assert layer.data.shape == (3, 40, 24, 20) and "written to" in widget.status.value
    widget.zarr_output.value = str(tmp_path / "out.zarr")  # exists now: refused up front
    assert widget.run() is None and "exists" in widget.status.value


def test_every_control_has_a_tooltip_and_sizes_say_voxels(viewer_with_sample):
    widget = TiledInferenceWidget(viewer_with_sample)
    for control in [*widget.controls, widget.run_button, widget.cancel_button]:
        assert control.tooltip, f"{control.label or control.text!r} has no tooltip"
    assert "voxels" in widget.patch_size.label and "voxels" in widget.patch_overlap.label


@pytest.mark.parametrize(
    ("field", "text", "words"),
    [
        ("patch_overlap", "5", "overlap must be even"),
        ("patch_overlap", "32", "overlap (32, 32, 32) must be smaller than patch size"),
        ("patch_size", "0", "patch size"),
    ],
)
def test_errors_use_the_widget_words(viewer_with_sample, field, text, words):
    widget = TiledInferenceWidget(viewer_with_sample)
    widget.patch_size.value, widget.patch_overlap.value = "16", "4"
    getattr(widget, field).value = text
    assert widget.run() is None
    assert words in widget.status.value, widget.status.value
    assert "patch_" not in widget.status.value


def test_class_legend_and_colour_bars_follow_the_outputs(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    widget = TiledInferenceWidget(viewer)
    assert widget.legend.native.isHidden()  # nothing to explain before a run
    widget.patch_size.value, widget.patch_overlap.value = "16", "4"
    widget.run()
    wait(qtbot, widget)
    labels = viewer.layers["image prediction"]
    assert not widget.legend.native.isHidden() and "■" in widget.legend.value
    rgba = labels.colormap.map(np.array([1]))[0]
    colour = "#" + "".join(f"{round(float(c) * 255):02x}" for c in rgba[:3])
    assert colour in widget.legend.value  # the legend shows the layer's own class colour
    probability = viewer.layers["image probability class 1"]
    assert probability.colorbar.visible


def test_region_with_zarr_output_is_refused_with_the_reason(viewer_with_sample, tmp_path):
    viewer = viewer_with_sample
    shapes = viewer.add_shapes([[[0, 0], [0, 10], [10, 10], [10, 0]]], ndim=2, name="roi")
    widget = TiledInferenceWidget(viewer)
    widget.roi.value = shapes
    widget.zarr_output.value = str(tmp_path / "out.zarr")
    before = len(viewer.layers)
    assert widget.run() is None
    assert "region (shapes) and zarr output" in widget.status.value
    assert "offset" in widget.status.value
    assert len(viewer.layers) == before and not (tmp_path / "out.zarr").exists()


def test_output_layers_are_added_at_the_click_not_mid_run(viewer_with_sample, qtbot):
    """Adding a layer freezes napari for 0.1-0.3 s: the demo's layers exist before the worker
    yields anything, so no layer is created while the user is using the viewer."""
    viewer = viewer_with_sample
    widget = TiledInferenceWidget(viewer)
    widget.patch_size.value, widget.patch_overlap.value = "16", "4"
    added = []
    viewer.layers.events.inserted.connect(lambda event: added.append(widget.last_step))
    assert widget.run() is not None
    names = {layer.name for layer in viewer.layers}
    assert {"image prediction", "image probability class 1", "image probability class 2"} <= names
    wait(qtbot, widget)
    assert added == [None, None, None]  # all three before the first step arrived
    assert widget.status.value.startswith("done")


def test_cancel_before_the_first_result_takes_the_layers_back(viewer_with_sample, qtbot):
    viewer = viewer_with_sample
    widget = TiledInferenceWidget(viewer)
    widget.source.value = "module:factory"
    widget.factory.value = "tests.widgets.test_inference_widget:slow_net"
    widget.patch_size.value, widget.patch_overlap.value, widget.batch_size.value = "32", "0", 1
    names = [layer.name for layer in viewer.layers]
    widget.run()
    assert "image prediction" in viewer.layers  # labels are known at the click
    widget.cancel()
    wait(qtbot, widget)
    if widget.last_step is None:  # cancelled before the first batch: nothing added stays
        assert [layer.name for layer in viewer.layers] == names
        assert "no output" in widget.status.value
    else:  # the first batch won the race: its partial output stays
        assert "image prediction" in viewer.layers


def test_unknown_channel_count_adds_probability_layers_at_the_first_result(
    viewer_with_sample, qtbot
):
    viewer = viewer_with_sample
    widget = TiledInferenceWidget(viewer)
    widget.source.value = "module:factory"
    widget.factory.value = "tests.widgets.test_inference_widget:slow_net"  # 2 channels
    widget.patch_size.value, widget.patch_overlap.value = "32", "0"
    widget.run()
    assert "image probability class 1" not in viewer.layers  # unknown until a result
    wait(qtbot, widget)
    assert widget.status.value.startswith("done")
    layer = viewer.layers["image probability class 1"]
    image = viewer.layers["image"].data
    assert np.allclose(
        layer.data,
        torch.softmax(torch.from_numpy(np.stack([image, -image])), 0)[1].numpy(),
        atol=1e-5,
    )


@pytest.fixture
def harmonised_model(small_sample, tmp_path):
    """A model trained here on the sample (its file records the sample's intensity field)."""
    from napari_patchwork.core.training import Trainer, TrainingConfig, scribbles_from_labels

    strokes = scribbles_from_labels(small_sample.labels, slices=3, disks=2, seed=0)
    config = TrainingConfig(patch_size=8, batch_size=2, width=4, iterations=2, seed=0)
    trainer = Trainer((small_sample.image, strokes), config)
    list(trainer.run())
    return trainer.save(tmp_path / "trained.pt2"), trainer.class_values


@pytest.mark.parametrize("with_region", [False, True])
def test_a_trained_model_harmonises_another_scanner(
    viewer_with_sample, qtbot, harmonised_model, with_region
):
    """The other scanner's image is mapped onto the training image before tiling, also when
    only a region is run (the field is fitted on the whole image)."""
    from napari_patchwork.core.data.harmonisation import Harmonisation
    from napari_patchwork.core.training import simulate_scanner
    from napari_patchwork.io.models import read_model_metadata

    path, class_values = harmonised_model
    viewer = viewer_with_sample
    sample = np.asarray(viewer.layers["image"].data)
    other = simulate_scanner(torch.from_numpy(sample)[None], seed=1)[0].numpy()
    layer = viewer.add_image(other, name="other", scale=(0.5, 0.5, 0.8))
    widget = TiledInferenceWidget(viewer)
    widget.image.value = layer
    widget.source.value = "file"
    widget.model_file.value = str(path)
    widget.patch_size.value = "8"
    widget.patch_overlap.value = "0"
    widget.outputs.value = "labels"
    box = (slice(0, 40), slice(0, 36), slice(0, 32))
    if with_region:
        corners = np.array([[10, 4, 4], [10, 4, 20], [10, 20, 20], [10, 20, 4]])
        widget.roi.value = viewer.add_shapes(
            [corners * [0.5, 0.5, 0.8]], shape_type="polygon", name="roi"
        )
    widget.run()
    wait(qtbot, widget)
    if with_region:
        box = widget._box
    harmonisation = Harmonisation.from_metadata(read_model_metadata(path))
    region = harmonisation.apply(other[None], box)
    logits = pw.infer(load_model(path), region, patch_size=8, patch_overlap=0)
    expected = np.asarray(class_values)[logits.argmax(0).numpy()]
    assert np.array_equal(viewer.layers["other prediction"].data, expected)
    raw = pw.infer(load_model(path), torch.from_numpy(other[box])[None], patch_size=8)
    assert not torch.allclose(raw, logits, atol=1e-3)  # harmonising changed what the model saw
    assert np.array_equal(np.asarray(layer.data), other)  # the input layer is untouched


def test_a_trained_models_probabilities_are_named_by_painted_value(
    viewer_with_sample, qtbot, harmonised_model
):
    """Channel c of a trained model is the probability of its c-th painted value (1, 2, 3
    here): the layer says which value, not the channel index (class 1 held value 2)."""
    path, class_values = harmonised_model
    viewer = viewer_with_sample
    widget = TiledInferenceWidget(viewer)
    widget.source.value = "file"
    widget.model_file.value = str(path)
    widget.patch_size.value, widget.patch_overlap.value = "8", "0"
    widget.outputs.value = "both"
    widget.run()
    wait(qtbot, widget)
    names = {layer.name for layer in viewer.layers if layer.name.startswith("image probability")}
    assert names == {f"image probability of {value}" for value in class_values[1:]}
    layer = viewer.layers[f"image probability of {class_values[1]}"]
    expected = pw.infer(load_model(path), viewer.layers["image"].data[None], patch_size=8)
    softmax = torch.softmax(expected, 0)[1].numpy()
    np.testing.assert_allclose(layer.data, softmax, atol=1e-4)


def test_choosing_a_trained_model_sets_its_patch_and_a_too_large_patch_says_what_fits(
    viewer_with_sample, qtbot, harmonised_model
):
    path, _ = harmonised_model  # trained with patch 8
    widget = TiledInferenceWidget(viewer_with_sample)
    assert widget.patch_size.value == "40, 36, 32"  # the demo's 64, fitted to the sample
    widget.source.value = "file"
    widget.model_file.value = str(path)
    assert (widget.patch_size.value, widget.patch_overlap.value) == ("8", "2")
    widget.patch_size.value = "48"  # the sample is 40 x 36 x 32
    assert widget.run() is None
    assert "patch size (48, 48, 48) is larger than the image (40, 36, 32)" in widget.status.value
    assert "use at most 40, 36, 32" in widget.status.value
    assert "padding" not in widget.status.value


def test_a_trained_models_patch_is_fitted_to_a_thin_image_and_a_typed_one_stays(
    viewer_with_sample, qtbot, harmonised_model
):
    """Training pads, so a model trained with patch 8 segments a 6-slice image with
    (8, 8, 6) chosen for the user; a patch the user typed is kept when the image changes."""
    path, _ = harmonised_model  # trained with patch 8
    viewer = viewer_with_sample
    sample = viewer.layers["image"]
    thin = viewer.add_image(sample.data[:20, :20, 10:16].copy(), name="thin")
    widget = TiledInferenceWidget(viewer)
    widget.image.value = thin
    widget.source.value = "file"
    widget.model_file.value = str(path)
    assert (widget.patch_size.value, widget.patch_overlap.value) == ("8, 8, 6", "2, 2, 0")
    widget.outputs.value = "labels"
    widget.run()
    wait(qtbot, widget)
    assert widget.status.value.startswith("done")
    assert viewer.layers["thin prediction"].data.shape == (20, 20, 6)
    widget.image.value = sample  # followed the model: fitted again
    assert widget.patch_size.value == "8"
    widget.image.value = thin
    widget.patch_size.value = "4"  # typed: stays
    widget.image.value = sample
    assert widget.patch_size.value == "4"


def test_a_scan_opened_after_the_model_is_chosen_gets_the_fitted_patch(
    make_napari_viewer, harmonised_model
):
    """The widget opened first, a trained model (patch 8) chosen, then a 6-slice scan
    opened: the patch is fitted to it; an overlap the user typed stays."""
    path, _ = harmonised_model
    viewer = make_napari_viewer()
    widget = TiledInferenceWidget(viewer)
    widget.source.value = "file"
    widget.model_file.value = str(path)
    assert widget.patch_size.value == "8"
    viewer.add_image(np.random.default_rng(0).random((20, 20, 6), np.float32), name="thin")
    assert (widget.patch_size.value, widget.patch_overlap.value) == ("8, 8, 6", "2, 2, 0")
    widget.patch_overlap.value = "2, 2, 2"
    viewer.add_image(np.zeros((20, 20, 20), np.float32), name="other")
    widget.image.value = viewer.layers["other"]  # the patch follows, the typed overlap stays
    assert (widget.patch_size.value, widget.patch_overlap.value) == ("8", "2, 2, 2")


def test_a_trained_models_choice_names_its_file(viewer_with_sample, harmonised_model):
    from napari_patchwork.widgets.training import SAVED_MODELS

    path, _ = harmonised_model
    SAVED_MODELS["trained"] = path
    try:
        widget = TiledInferenceWidget(viewer_with_sample)
        widget.source.reset_choices()
        widget.source.value = "trained: trained"
        assert widget.source.tooltip == str(path)  # the dock may cut the name short
        assert widget.patch_size.value == "8"
        widget.source.value = "demo"
        assert "bundled" in widget.source.tooltip
    finally:
        del SAVED_MODELS["trained"]
