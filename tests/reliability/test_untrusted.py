"""Untrusted files: no arbitrary unpickling, no allocation from a lying header, no overwrite."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import napari_patchwork as pw
from napari_patchwork.cli import main
from napari_patchwork.io import load_model
from napari_patchwork.io.nifti import read_nifti, write_nifti
from napari_patchwork.models import TinyUNet3D
from napari_patchwork.napari_contributions import read_layers, write_image

MARKER = Path("/tmp") / "napari-patchwork-pickle-payload-ran"


class Payload:
    """Unpickling this runs code: it would create MARKER."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


@pytest.fixture
def no_marker():
    MARKER.unlink(missing_ok=True)
    yield
    assert not MARKER.exists(), "a pickle payload ran"


def test_pickled_full_model_is_refused_unless_trusted(tmp_path, no_marker):
    path = tmp_path / "model.pth"
    torch.save(TinyUNet3D(width=4), path)
    with pytest.raises(ValueError, match="trust_pickle"):
        load_model(path)
    assert isinstance(load_model(path, trust_pickle=True), TinyUNet3D)


def test_malicious_model_file_does_not_run(tmp_path, no_marker):
    path = tmp_path / "model.pt"
    torch.save({"state": Payload()}, path)
    with pytest.raises(ValueError, match=str(path)):
        load_model(path)


def test_malicious_weights_do_not_run(tmp_path, no_marker):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": Payload()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_model("napari_patchwork.models:TinyUNet3D", weights=path)


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_safe_formats_load(tmp_path):
    network = TinyUNet3D().eval()
    scripted = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(network), scripted)
    weights = tmp_path / "weights.pt"
    torch.save(network.state_dict(), weights)
    example = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = network(example)
        for model in (
            load_model(scripted),
            load_model("napari_patchwork.models:TinyUNet3D", weights=weights),
        ):
            assert torch.allclose(model(example), expected, atol=1e-6)


def test_weights_for_another_model_are_a_clear_error(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(TinyUNet3D(width=4).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit the model") as raised:
        load_model("napari_patchwork.models:TinyUNet3D", weights=path)
    assert str(path) in str(raised.value)


def crafted_header(path: Path, shape: tuple[int, ...]) -> Path:
    """A valid NIfTI-2 header (64-bit dims) claiming ``shape``, then a few bytes of data."""
    header = nib.Nifti2Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 64
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_enormous_header_fails_before_allocating(tmp_path, suffix):
    path = crafted_header(tmp_path / f"huge{suffix}", (100_000, 100_000, 100_000))
    if suffix == ".nii.gz":
        import gzip

        path.write_bytes(gzip.compress(path.read_bytes()))
    tracemalloc.start()
    try:
        for read in (lambda: read_nifti(path), lambda: pw.ScalarImage(path).load()):
            with pytest.raises(ValueError, match="over the budget"):
                read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # 10^15 voxels claimed; nothing near that was allocated


def test_voxel_budget_is_configurable(tmp_path):
    path = tmp_path / "volume.nii.gz"
    write_nifti(path, np.zeros((1, 20, 20, 20), np.float32))
    assert read_nifti(path, max_voxels=8000)[0].shape == (1, 20, 20, 20)
    with pytest.raises(ValueError, match="max_voxels"):
        read_nifti(path, max_voxels=7999)


def test_cli_refuses_to_overwrite(tmp_path, capsys):
    source = tmp_path / "input.nii.gz"
    write_nifti(source, np.random.rand(1, 16, 16, 16).astype(np.float32))
    before = source.read_bytes()
    for output, message in ((source, "input file"), (tmp_path / "taken.nii.gz", "--overwrite")):
        if output != source:
            output.write_bytes(b"keep me")
        args = ["infer", str(source), "--model", "demo", "--output", str(output)]
        assert main([*args, "--patch-size", "16"]) == 2
        assert message in capsys.readouterr().err
    assert source.read_bytes() == before
    assert (tmp_path / "taken.nii.gz").read_bytes() == b"keep me"


def test_napari_writer_refuses_the_source_file(tmp_path):
    source = tmp_path / "input.nii.gz"
    write_nifti(source, np.random.rand(1, 8, 8, 8).astype(np.float32))
    before = source.read_bytes()
    data, meta, _ = read_layers(str(source))[0]
    with pytest.raises(ValueError, match="read from"):
        write_image(str(source), np.zeros((8, 8, 8), np.float32), meta)
    assert source.read_bytes() == before
