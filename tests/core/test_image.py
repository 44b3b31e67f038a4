import numpy as np
import pytest
import torch

from napari_patchwork import Image, LabelMap, PatchLocation, ScalarImage


def test_from_tensor_and_array():
    image = ScalarImage(torch.zeros(2, 4, 5, 6))
    assert image.shape == (2, 4, 5, 6) and image.spatial_shape == (4, 5, 6)
    assert image.num_channels == 2
    from_array = LabelMap(np.ones((1, 3, 3, 3), np.uint8))
    assert from_array.data.dtype == torch.uint8
    assert np.array_equal(ScalarImage(tensor=torch.ones(1, 2, 2, 2)).affine, np.eye(4))


def test_uint16_array_becomes_a_signed_tensor():
    image = ScalarImage(np.full((1, 2, 2, 2), 60000, np.uint16))
    assert image.data.dtype == torch.int32 and int(image.data.max()) == 60000


def test_spacing_from_affine():
    affine = np.diag([0.5, 2.0, 3.0, 1.0])
    assert ScalarImage(torch.zeros(1, 2, 2, 2), affine=affine).spacing == (0.5, 2.0, 3.0)


def test_nifti_path_is_read_lazily(nifti_file):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = nifti_file(array)
    image = ScalarImage(path)
    assert not image.is_loaded
    assert image.spatial_shape == (4, 5, 6) and image.spacing == (0.5, 0.75, 2.0)
    assert not image.is_loaded
    assert torch.equal(image.data[0], torch.from_numpy(array))
    assert image.is_loaded


def test_nifti_4d_puts_channels_first(nifti_file):
    array = np.random.default_rng(0).random((4, 5, 6, 3)).astype(np.float32)
    image = ScalarImage(nifti_file(array, "vector.nii"))
    assert image.shape == (3, 4, 5, 6)
    assert np.allclose(image.data[2].numpy(), array[..., 2])


def test_crop_copies_and_moves_the_origin():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (10, 20, 30)
    image = ScalarImage(torch.rand(1, 8, 8, 8), affine=affine)
    patch = image.crop(PatchLocation((1, 2, 3), (4, 4, 4)))
    assert torch.equal(patch.data, image.data[:, 1:5, 2:6, 3:7])
    assert np.allclose(patch.affine[:3, 3], (12, 24, 36))
    patch.data[:] = -1
    assert image.data.min() >= 0
    assert isinstance(patch, ScalarImage)


@pytest.mark.parametrize("shape", [(4, 4, 4), (1, 1, 2, 2, 2), (4, 4)])
def test_rejects_wrong_dimensions(shape):
    with pytest.raises(ValueError, match=r"4D \(C, I, J, K\)"):
        ScalarImage(torch.zeros(shape))


def test_rejects_empty_and_bad_sources():
    with pytest.raises(ValueError, match="empty"):
        ScalarImage(torch.zeros(1, 0, 2, 2))
    with pytest.raises(TypeError, match="tensor"):
        ScalarImage([[1, 2]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exactly one"):
        Image()
    with pytest.raises(ValueError, match="affine"):
        ScalarImage(torch.zeros(1, 2, 2, 2), affine=np.eye(3))


def test_missing_and_non_nifti_paths_name_the_path(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        ScalarImage(missing)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt"):
        ScalarImage(text)
    with pytest.raises(ValueError, match="directory"):
        ScalarImage(tmp_path)


def test_corrupted_nifti_names_the_path(tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(ValueError, match="broken.nii.gz"):
        ScalarImage(broken).data


def test_truncated_nifti_names_the_path(nifti_file, tmp_path):
    path = nifti_file(np.ones((20, 20, 20), np.float32), "full.nii")
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated.nii"):
        ScalarImage(truncated).data


def test_crop_is_a_copy_even_when_the_patch_is_the_whole_volume():
    image = ScalarImage(torch.rand(1, 4, 4, 4))
    whole = image.crop(PatchLocation((0, 0, 0), (4, 4, 4)))
    whole.data[0, 0, 0, 0] = -1.0
    assert image.data[0, 0, 0, 0] != -1.0 and whole.data.is_contiguous()
    half = torch.rand(1, 4, 4, 4, dtype=torch.bfloat16)  # a dtype numpy lacks: torch copies
    cropped = ScalarImage(half).crop(PatchLocation((1, 0, 0), (2, 4, 4)))
    assert cropped.data.dtype == torch.bfloat16 and torch.equal(cropped.data, half[:, 1:3])
