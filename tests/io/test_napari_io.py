"""napari reader, writers and sample data: layer-data tuples, no viewer."""

import nibabel as nib
import numpy as np
import pytest

from napari_patchwork.io.napari_io import (
    get_reader,
    read_layers,
    sample_layers,
    write_image,
    write_labels,
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
