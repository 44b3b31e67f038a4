"""napari reader, writers and sample data: layer-data tuples, then through a real viewer."""

import nibabel as nib
import numpy as np
import pytest

from napari_patchwork.napari_contributions import (
    NiftiWriteError,
    get_reader,
    read_layers,
    sample_layers,
    write_image,
    write_image_command,
    write_labels,
    write_labels_command,
)


def save(path, array, affine):
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def test_reader_places_image_with_spacing_and_origin(tmp_path):
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = (10, -5, 3)
    path = save(tmp_path / "t1.nii.gz", np.random.rand(6, 5, 4).astype(np.float32), affine)
    assert get_reader(path) is read_layers and get_reader("x.tif") is None
    [(data, meta, kind)] = read_layers(path)
    assert kind == "image" and data.shape == (6, 5, 4)
    assert np.allclose(meta["scale"], (0.5, 0.7, 2.0)) and np.allclose(
        meta["translate"], (10, -5, 3)
    )
    assert np.allclose(meta["metadata"]["affine"], affine)


def test_reader_chooses_labels_and_channels(tmp_path):
    labels = save(
        tmp_path / "case_seg.nii.gz", np.random.randint(0, 3, (6, 5, 4)).astype(np.int16), np.eye(4)
    )
    assert read_layers(labels)[0][2] == "labels"
    integers = save(
        tmp_path / "ct.nii.gz",
        np.random.randint(-1000, 2000, (6, 5, 4)).astype(np.int16),
        np.eye(4),
    )
    assert read_layers(integers)[0][2] == "image"  # many values: intensities, not labels
    vector = save(tmp_path / "rgb.nii.gz", np.random.rand(6, 5, 4, 3).astype(np.float32), np.eye(4))
    data, meta, kind = read_layers(vector)[0]
    assert data.shape == (3, 6, 5, 4) and meta["channel_axis"] == 0
    rotated = np.eye(4)
    rotated[:2, :2] = [[0, -1], [1, 0]]
    assert (
        "affine"
        in read_layers(save(tmp_path / "r.nii.gz", np.zeros((2, 2, 2), np.float32), rotated))[0][1]
    )


def test_writers_keep_the_affine_and_refuse_the_source(tmp_path):
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    path = save(tmp_path / "t1.nii.gz", np.random.rand(6, 5, 4).astype(np.float32), affine)
    data, meta, _ = read_layers(path)[0]
    [written] = write_image(str(tmp_path / "copy.nii.gz"), data, meta)
    assert np.allclose(nib.load(written).affine, affine)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        write_image(path, data, meta)
    [labels] = write_labels(
        str(tmp_path / "seg"), np.ones((6, 5, 4), np.int32), {"scale": (1, 2, 3)}
    )
    assert labels.endswith(".nii.gz") and np.allclose(
        np.diag(nib.load(labels).affine)[:3], (1, 2, 3)
    )
    with pytest.raises(ValueError, match="3D"):
        write_image(str(tmp_path / "flat.nii.gz"), np.zeros((4, 4)), {})


def test_sample_layers():
    layers = sample_layers()
    assert [kind for _, _, kind in layers] == ["image", "image", "labels"]
    assert layers[0][0].shape == (160, 160, 160)
    assert set(np.unique(layers[2][0])) == {0, 1, 2}


def test_writer_commands_name_the_layer_path_and_reason(tmp_path):
    target = str(tmp_path / "out.nii.gz")
    with pytest.raises(NiftiWriteError, match=r"layer 'flat' as '.*out\.nii\.gz'.*only 3D") as info:
        write_image_command(target, np.zeros((4, 5)), {"name": "flat"})
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(TypeError, match="complex64"):
        write_image(target, np.ones((2, 2, 2), np.complex64), {})
    with pytest.raises(NiftiWriteError, match="complex64"):
        write_image_command(target, np.ones((2, 2, 2), np.complex64), {"name": "c"})
    with pytest.raises(NiftiWriteError, match="RGB"):
        write_image_command(target, np.zeros((4, 5, 3), np.uint8), {"name": "rgb", "rgb": True})
    with pytest.raises(NiftiWriteError, match="non-integer value"):
        write_labels_command(target, np.full((2, 2, 2), 0.5), {"name": "seg"})
    levels = [np.ones((4, 4, 4), np.float32), np.ones((2, 2, 2), np.float32)]
    [written] = write_image_command(target, levels, {"name": "pyramid", "multiscale": True})
    assert nib.load(written).shape == (4, 4, 4)


# --- through a real napari viewer (skipped without a display, see tests/conftest.py) -------

AFFINE = np.array(
    [[0.5, 0, 0, 10.0], [0, 0.7, 0, -5.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]], dtype=np.float64
)


def scan(tmp_path, name="t1.nii.gz"):
    """A real scan written with nibabel: 0.5 x 0.7 x 2 mm voxels, origin (10, -5, 3)."""
    data = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    return save(tmp_path / name, data, AFFINE), data


def qt_viewer_of(viewer):
    """The viewer's Qt widget (``napari.qt.QtViewer``), found through Qt, not napari internals."""
    from napari.qt import QtViewer
    from qtpy.QtWidgets import QApplication

    [widget] = [
        w for w in QApplication.allWidgets() if isinstance(w, QtViewer) and w.viewer is viewer
    ]
    return widget


def drop_files(qtbot, viewer, paths):
    """Drop files on the canvas as a user does (the same reader choice as File > Open).

    napari opens its "Choose reader" dialog when several plugins claim the files; this answers
    it with the reader napari preselected and returns that reader's name (None: no dialog).
    """
    from qtpy.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl
    from qtpy.QtGui import QDropEvent
    from qtpy.QtWidgets import QApplication, QDialog, QDialogButtonBox, QRadioButton

    seen: list[str | None] = []
    dropped = []  # set once the drop is handled: stop polling, never answer a later dialog

    def answer():
        if dropped:
            return
        dialogs = [
            w
            for w in QApplication.topLevelWidgets()
            if isinstance(w, QDialog) and w.isVisible() and w.objectName() == "Choose reader"
        ]
        if not dialogs:
            if len(seen) < 200:
                seen.append(None)
                QTimer.singleShot(25, answer)
            return
        dialog = dialogs[0]
        checked = [b.text() for b in dialog.findChildren(QRadioButton) if b.isChecked()]
        seen.append(checked[0] if checked else "")
        buttons = dialog.findChild(QDialogButtonBox)
        if seen[-1] == "Patchwork":
            buttons.button(QDialogButtonBox.StandardButton.Ok).click()
        else:  # never run napari's failing reader: close the dialog and let the test fail
            buttons.button(QDialogButtonBox.StandardButton.Cancel).click()

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    event = QDropEvent(
        QPointF(5, 5),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QTimer.singleShot(0, answer)
    try:  # the dialog, if any, runs modally inside dropEvent, Qt's drop handler
        qt_viewer_of(viewer).dropEvent(event)  # (sendEvent would need a real drag)
    finally:
        dropped.append(True)
    qtbot.wait(50)
    answers = [a for a in seen if a is not None]
    return answers[0] if answers else None


def assert_placed_by_our_reader(layer, data):
    assert layer.source.reader_plugin == "napari-patchwork"
    np.testing.assert_array_equal(np.asarray(layer.data), data)
    np.testing.assert_allclose(layer.scale, (0.5, 0.7, 2.0))
    np.testing.assert_allclose(layer.translate, (10, -5, 3))
    np.testing.assert_allclose(layer.metadata["affine"], AFFINE)


@pytest.mark.parametrize("name", ["t1.nii.gz", "t1.nii", "T1.NII.GZ"])
def test_opening_a_nifti_file_preselects_our_reader(make_napari_viewer, qtbot, tmp_path, name):
    path, data = scan(tmp_path, name)
    viewer = make_napari_viewer()
    # napari's own reader also claims *.nii / *.nii.gz but cannot read them, so napari asks;
    # its dialog checks the first display name in sorted order: ours ("Patchwork")
    assert drop_files(qtbot, viewer, [path]) == "Patchwork"
    [layer] = viewer.layers
    assert layer.name == name[:2]
    assert_placed_by_our_reader(layer, data)


def test_with_the_reader_preference_nifti_opens_without_asking(make_napari_viewer, qtbot, tmp_path):
    from napari.settings import get_settings

    path, data = scan(tmp_path)
    viewer = make_napari_viewer()  # the fixture resets napari's settings after the test
    get_settings().plugins.extension2reader = {"*.nii.gz": "napari-patchwork"}
    [layer] = viewer.open(path, plugin=None)  # what File > Open and drag-and-drop call
    assert_placed_by_our_reader(layer, data)
    assert drop_files(qtbot, viewer, [path]) is None  # no dialog
    assert len(viewer.layers) == 2
    assert_placed_by_our_reader(viewer.layers[-1], data)
    # the scripting form that needs no preference
    [scripted] = viewer.open(path, plugin="napari-patchwork")
    assert_placed_by_our_reader(scripted, data)


def test_napari_save_writes_through_our_writer_and_keeps_the_affine(make_napari_viewer, tmp_path):
    path, data = scan(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-patchwork")
    labels = viewer.add_labels((data > 0.5).astype(np.int32), name="mask", scale=(0.5, 0.7, 2.0))
    out = tmp_path / "copy.nii.gz"
    viewer.layers.selection = {viewer.layers["t1"]}
    assert viewer.layers.save(str(out), selected=True) == [str(out)]
    assert np.allclose(nib.load(out).affine, AFFINE)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), data)
    viewer.layers.selection = {labels}
    [saved] = viewer.layers.save(str(tmp_path / "mask"), selected=True)  # suffix added
    assert saved.endswith("mask.nii.gz") and nib.load(saved).get_data_dtype() == np.uint8
    assert np.allclose(np.diag(nib.load(saved).affine)[:3], (0.5, 0.7, 2.0))


def test_napari_save_refusals_reach_the_user_with_the_reason(make_napari_viewer, tmp_path):
    path, data = scan(tmp_path)
    before = (tmp_path / "t1.nii.gz").read_bytes()
    viewer = make_napari_viewer()
    [layer] = viewer.open(path, plugin="napari-patchwork")
    with pytest.raises(NiftiWriteError, match=r"layer 't1'.*overwrite the file the layer was read"):
        viewer.layers.save(path, plugin="napari-patchwork")
    assert (tmp_path / "t1.nii.gz").read_bytes() == before
    viewer.layers.remove(layer)
    viewer.add_image(np.zeros((4, 5), np.float32), name="flat")
    with pytest.raises(NiftiWriteError, match=r"layer 'flat'.*only 3D layers.*\(4, 5\)"):
        viewer.layers.save(str(tmp_path / "flat.nii.gz"), plugin="napari-patchwork")
    viewer.layers.clear()
    viewer.add_image(np.zeros((4, 5, 3), np.uint8), name="photo", rgb=True)
    with pytest.raises(NiftiWriteError, match=r"layer 'photo'.*RGB"):
        viewer.layers.save(str(tmp_path / "photo.nii.gz"))  # no plugin: ours is the NIfTI writer
    assert not (tmp_path / "flat.nii.gz").exists() and not (tmp_path / "photo.nii.gz").exists()
