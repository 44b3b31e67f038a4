import nibabel as nib
import numpy as np
import pytest
import torch

from napari_patchwork.io import read_nifti, read_nifti_header, write_nifti


def test_round_trip_keeps_data_and_affine(tmp_path):
    affine = np.diag([0.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = (-10, 4, 2)
    data = torch.rand(2, 5, 6, 7)
    path = write_nifti(tmp_path / "out.nii.gz", data, affine)
    read, read_affine = read_nifti(path)
    assert read.shape == (2, 5, 6, 7) and np.allclose(read, data.numpy())
    assert np.allclose(read_affine, affine)
    assert nib.load(str(path)).shape == (5, 6, 7, 2)


def test_single_channel_is_written_3d_and_int64_as_int32(tmp_path):
    path = write_nifti(tmp_path / "labels.nii", torch.ones(1, 3, 3, 3, dtype=torch.int64))
    image = nib.load(str(path))
    assert image.shape == (3, 3, 3) and image.get_data_dtype() == np.int32


def test_write_is_atomic_and_respects_overwrite(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", np.zeros((2, 2, 2)))
    with pytest.raises(FileExistsError, match="a.nii.gz"):
        write_nifti(path, np.zeros((2, 2, 2)), overwrite=False)
    with pytest.raises(ValueError, match="shape"):
        write_nifti(tmp_path / "b.nii.gz", np.zeros((2, 2)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]  # no temp file left


def test_voxel_budget_is_checked_before_reading(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.float32)
    path = tmp_path / "huge.nii"
    with open(
        path, "wb"
    ) as handle:  # a crafted NIfTI-1 header (dims are int16) over an almost empty file
        handle.write(header.binaryblock + b"\x00" * 4)
    assert read_nifti_header(path).spatial_shape == (30000, 30000, 30000)
    with pytest.raises(ValueError, match="over the budget"):
        read_nifti(path)
    small = write_nifti(tmp_path / "small.nii", np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="max_voxels"):
        read_nifti(small, max_voxels=10)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    import os
    import stat

    previous = os.umask(umask)
    try:
        path = tmp_path / "out.nii.gz"
        write_nifti(path, np.zeros((1, 2, 2, 2), np.float32), np.eye(4))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode
