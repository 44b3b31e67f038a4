"""Real NIfTI files (nibabel's test data and files made with nibabel), kept faithfully."""

import glob
import os

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from napari_patchwork.core.data.image import LabelMap, ScalarImage
from napari_patchwork.io.nifti import read_nifti, read_nifti_header, write_nifti
from napari_patchwork.napari_contributions import read_layers, write_image, write_labels

# napari warns when a layer with a rotated or sheared affine is sliced; not our concern here
pytestmark = pytest.mark.filterwarnings("ignore:Non-orthogonal slicing:UserWarning")

napari = pytest.importorskip("napari")

SHIPPED = sorted(
    f for f in glob.glob(os.path.join(data_path, "*.nii*")) if not f.endswith(".dconn.nii")
)


def save(path, array, affine, **kwargs):
    image = nib.Nifti1Image(array, affine, **kwargs)
    nib.save(image, str(path))
    return str(path)


def oblique():
    angle = np.deg2rad(20)
    affine = np.eye(4)
    affine[:3, :3] = [
        [np.cos(angle), -np.sin(angle), 0],
        [np.sin(angle), np.cos(angle), 0],
        [0, 0, 1],
    ]
    affine[:3, :3] = affine[:3, :3] @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = (-40, 12.5, 7)
    return affine


AFFINES = {
    "LAS": np.array([[-0.9, 0, 0, 50], [0, 1.1, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]]),
    "LPS": np.array([[-0.5, 0, 0, 10], [0, -0.5, 0, 80], [0, 0, 1.5, -7], [0, 0, 0, 1]]),
    "oblique": oblique(),
    "sheared": np.array([[1.0, 0.3, 0, 1], [0, 2.0, 0.1, 2], [0, 0, 0.7, 3], [0, 0, 0, 1]]),
    "anisotropic": np.diag([0.3, 0.3, 5.0, 1.0]),
}


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_files_read_like_nibabel(path):
    data, affine = read_nifti(path)
    expected = np.asanyarray(nib.load(path).dataobj)
    if expected.ndim == 3:
        expected = expected[..., None]
    assert data.dtype.isnative
    np.testing.assert_array_equal(data, np.moveaxis(expected, -1, 0))
    assert np.allclose(affine, nib.load(path).affine)
    tensor = ScalarImage(path).data  # through torch
    np.testing.assert_array_equal(tensor.numpy(), data)


def test_some_shipped_files_are_big_endian():
    assert any(nib.load(p).header.endianness == ">" for p in SHIPPED)


def test_big_endian_file_made_with_nibabel(tmp_path):
    values = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.int16)
    path = save(tmp_path / "be.nii", values, AFFINES["LAS"], header=header)
    assert nib.load(path).header.endianness == ">"
    data, _ = read_nifti(path)
    assert data.dtype == np.int16 and data.dtype.isnative
    np.testing.assert_array_equal(data[0], values)
    np.testing.assert_array_equal(LabelMap(path).data[0].numpy(), values)
    # a big-endian array handed over directly
    image = ScalarImage(values.astype(">f4")[None])
    np.testing.assert_array_equal(image.data[0].numpy(), values)


def test_scaled_int16_reads_as_nibabel_floats(tmp_path):
    values = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    image = nib.Nifti1Image(values, np.eye(4), dtype=np.int16)
    image.header.set_slope_inter(0.5, -3)
    nib.save(image, str(tmp_path / "scaled.nii.gz"))
    path = str(tmp_path / "scaled.nii.gz")
    data, _ = read_nifti(path)
    np.testing.assert_array_equal(data[0], np.asanyarray(nib.load(path).dataobj))
    assert read_nifti_header(path).dtype == data.dtype
    [(layer, meta, kind)] = read_layers(path)
    [out] = write_image(str(tmp_path / "copy.nii.gz"), layer, meta)
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), data[0])


@pytest.mark.parametrize("fields", ["RGB", "RGBA"])
def test_rgb_reads_as_uint8_channels(tmp_path, fields):
    rgb = np.zeros((3, 4, 5), dtype=[(f, "u1") for f in fields])
    for index, field in enumerate(fields):
        rgb[field] = 10 * (index + 1)
    path = save(tmp_path / "rgb.nii", rgb, np.eye(4))
    data, _ = read_nifti(path)
    assert data.dtype == np.uint8 and data.shape == (len(fields), 3, 4, 5)
    assert [int(c.max()) for c in data] == [10 * (i + 1) for i in range(len(fields))]
    assert read_nifti_header(path).num_channels == len(fields)
    assert ScalarImage(path).data.shape == (len(fields), 3, 4, 5)


def test_complex_is_refused_naming_file_and_dtype(tmp_path):
    path = save(tmp_path / "complex.nii.gz", np.ones((2, 3, 4), np.complex64), np.eye(4))
    with pytest.raises(ValueError, match=r"complex\.nii\.gz.*complex64"):
        read_nifti(path)
    with pytest.raises(ValueError, match="complex64"):
        ScalarImage(path)


def test_large_label_ids_are_kept_or_refused(tmp_path):
    ids = np.array([0, 3_000_000_000, 3_000_000_007, 4_000_000_000], np.uint32)
    values = np.resize(ids, (4, 4, 4)).astype(np.uint32)
    path = save(tmp_path / "ids_seg.nii.gz", values, np.eye(4), dtype=np.uint32)
    data, _ = read_nifti(path)
    np.testing.assert_array_equal(data[0], values)
    assert LabelMap(path).data.dtype.is_signed  # int64 holds uint32 exactly
    np.testing.assert_array_equal(LabelMap(path).data[0].numpy(), values.astype(np.int64))
    [(layer, meta, kind)] = read_layers(path)
    assert kind == "labels" and layer.dtype == np.uint32 and layer.max() == 4_000_000_000
    [out] = write_labels(str(tmp_path / "ids_out.nii.gz"), layer, meta)
    assert nib.load(out).get_data_dtype() == np.uint32
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), values)
    # uint64 above the int64 range cannot become a tensor: refused, never wrapped
    huge = np.full((1, 2, 2, 2), 2**63 + 5, np.uint64)
    with pytest.raises(ValueError, match=str(2**63 + 5)):
        LabelMap(huge)
    fits = LabelMap(np.full((1, 2, 2, 2), 2**40, np.uint64))
    assert int(fits.data.max()) == 2**40


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([0, 1, 255], np.uint8),
        ([0, -40000, 7], np.int32),
        ([0, 2**31 + 9], np.uint32),
        ([-1, 2**31 + 9], np.int64),
        ([0, 40000], np.uint16),
    ],
)
def test_labels_written_in_smallest_exact_type(tmp_path, values, dtype):
    array = np.resize(np.array(values, np.int64), (3, 3, 3))
    [out] = write_labels(str(tmp_path / "seg.nii.gz"), array, {})
    assert nib.load(out).get_data_dtype() == dtype
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), array)


def test_write_nifti_never_wraps_int64(tmp_path):
    array = np.array([0, 2**40, -(2**35)], np.int64).reshape(1, 3, 1, 1) * np.ones(
        (1, 1, 2, 2), int
    )
    out = write_nifti(tmp_path / "big.nii.gz", array)
    assert nib.load(str(out)).get_data_dtype() == np.int64
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out)).dataobj), array[0])
    small = write_nifti(tmp_path / "small.nii.gz", np.ones((1, 2, 2, 2), np.int64))
    assert nib.load(str(small)).get_data_dtype() == np.int32


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("codes", [(1, 1), (2, 0), (0, 4)])
def test_affine_and_codes_round_trip(tmp_path, name, codes):
    affine = AFFINES[name]
    if name == "sheared" and codes[1] == 0:
        pytest.skip("a qform cannot hold a shear")
    image = nib.Nifti1Image(np.random.rand(5, 6, 7).astype(np.float32), affine)
    image.header.set_qform(affine, codes[0])
    image.header.set_sform(affine, codes[1])
    image.header.set_xyzt_units("mm", "sec")
    path = str(tmp_path / f"{name}.nii.gz")
    nib.save(image, path)
    [(data, meta, kind)] = read_layers(path)
    layer = napari.layers.Image(data, **{k: v for k, v in meta.items() if k != "name"})
    [out] = write_image(str(tmp_path / "out.nii.gz"), layer.data, layer.as_layer_data_tuple()[1])
    written = nib.load(out)
    assert np.allclose(written.affine, nib.load(path).affine, atol=1e-4)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == codes
    assert written.header.get_xyzt_units() == ("mm", "sec")


def test_file_without_codes_round_trips(tmp_path):
    image = nib.Nifti1Image(np.random.rand(4, 5, 6).astype(np.float32), None)
    image.header.set_zooms((2.0, 3.0, 4.0))
    path = str(tmp_path / "nocodes.nii")
    nib.save(image, path)
    assert int(nib.load(path).header["qform_code"]) == int(nib.load(path).header["sform_code"]) == 0
    [(data, meta, _)] = read_layers(path)
    [out] = write_image(str(tmp_path / "out.nii"), data, meta)
    written = nib.load(out)
    assert np.allclose(written.affine, nib.load(path).affine)
    assert int(written.header["qform_code"]) == int(written.header["sform_code"]) == 0
    # moved in napari: codes 0 cannot place it, so the sform is set
    meta = {**meta, "translate": (5.0, 0.0, 0.0)}
    [moved] = write_image(str(tmp_path / "moved.nii"), data, meta)
    expected = nib.load(path).affine.copy()
    expected[:3, 3] += expected[:3, :3] @ (5.0, 0.0, 0.0)  # napari: affine @ (translate + x)
    assert np.allclose(nib.load(moved).affine, expected)
    assert int(nib.load(moved).header["sform_code"]) == 2


def test_moved_layer_writes_napari_data_to_world(tmp_path):
    path = save(tmp_path / "t1.nii.gz", np.random.rand(5, 6, 7).astype(np.float32), AFFINES["LAS"])
    [(data, meta, _)] = read_layers(path)
    outer = AFFINES["oblique"]
    layer = napari.layers.Image(
        data,
        scale=(0.5, 2.0, 1.5),
        translate=(3, -4, 5),
        rotate=oblique()[:3, :3] / np.linalg.norm(oblique()[:3, :3], axis=0),
        shear=(0.1, -0.2, 0.3),
        affine=outer,
        metadata=meta["metadata"],
    )
    [out] = write_image(str(tmp_path / "moved.nii.gz"), layer.data, layer.as_layer_data_tuple()[1])
    for point in ([0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [4, 5, 6]):
        world = nib.load(out).affine @ [*point, 1]
        assert np.allclose(world[:3], layer.data_to_world(point), atol=1e-4)


def test_labels_round_trip_through_a_napari_layer(tmp_path):
    values = np.random.randint(0, 5, (5, 6, 7)).astype(np.uint8)
    path = save(tmp_path / "case_seg.nii.gz", values, AFFINES["LPS"], dtype=np.uint8)
    [(data, meta, kind)] = read_layers(path)
    assert kind == "labels" and data.dtype == np.uint8
    layer = napari.layers.Labels(data, **{k: v for k, v in meta.items() if k != "name"})
    [out] = write_labels(str(tmp_path / "out.nii.gz"), layer.data, layer.as_layer_data_tuple()[1])
    written = nib.load(out)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), values)
    assert np.allclose(written.affine, AFFINES["LPS"], atol=1e-4)


def test_4d_file(tmp_path):
    values = np.random.rand(4, 5, 6, 3).astype(np.float32)
    path = save(tmp_path / "dwi.nii.gz", values, AFFINES["anisotropic"])
    data, affine = read_nifti(path)
    np.testing.assert_array_equal(data, np.moveaxis(values, -1, 0))
    assert np.allclose(affine, AFFINES["anisotropic"])
