"""The command line, run in subprocesses on real NIfTI files and real model files."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 3, 1)
    ).eval()  # no spatial context: tiling is exact


class SlowNet(torch.nn.Module):
    def forward(self, x):
        time.sleep(0.2)
        return x.repeat(1, 2, 1, 1, 1)


def failing_net():
    def forward(x):
        raise ZeroDivisionError("the model failed\non two lines")

    return forward


def slow_net() -> torch.nn.Module:
    return SlowNet()


def cli(*args, cwd=ROOT, env=None, **kwargs):
    env = dict(env or os.environ, PYTHONPATH=str(ROOT))  # model factories live in this module
    return subprocess.run(
        [sys.executable, "-m", "napari_patchwork.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


@pytest.fixture
def volume(tmp_path):
    affine = np.diag([0.7, 0.8, 1.5, 1.0])
    affine[:3, 3] = (5, -3, 2)
    array = np.random.default_rng(0).random((20, 18, 16)).astype(np.float32)
    path = tmp_path / "input.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path, array, affine


def test_torchscript_model_probabilities_keep_the_affine(volume, tmp_path):
    path, array, affine = volume
    model_path = tmp_path / "net.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, but files exist
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(small_net()), str(model_path))
    output = tmp_path / "probs.nii.gz"
    result = cli(
        "infer",
        path,
        "--model",
        model_path,
        "--output",
        output,
        "--patch-size",
        "8",
        "--overlap",
        "4",
    )
    assert result.returncode == 0, result.stderr
    written = nib.load(str(output))
    assert written.shape == (20, 18, 16, 3)
    assert np.allclose(written.affine, affine)
    assert np.allclose(written.get_fdata().sum(-1), 1, atol=1e-5)  # softmax probabilities
    expected = torch.softmax(small_net()(torch.from_numpy(array)[None, None])[0], 0)
    assert np.allclose(
        np.moveaxis(written.get_fdata(), -1, 0), expected.detach().numpy(), atol=1e-4
    )


def test_factory_with_state_dict_writes_labels(volume, tmp_path):
    path, array, _ = volume
    weights = tmp_path / "weights.pth"
    torch.save(small_net().state_dict(), weights)
    output = tmp_path / "labels.nii.gz"
    result = cli(
        "infer",
        path,
        "--model",
        "tests.test_cli:small_net",
        "--weights",
        weights,
        "--output",
        output,
        "--patch-size",
        "8",
        "--labels",
        "--mode",
        "crop",
    )
    assert result.returncode == 0, result.stderr
    labels = nib.load(str(output))
    assert labels.get_data_dtype() == np.uint8
    expected = small_net()(torch.from_numpy(array)[None, None])[0].argmax(0)
    assert (np.asarray(labels.dataobj) == expected.numpy()).mean() > 0.999


def test_torch_export_archive_with_a_static_batch(volume, tmp_path):
    path, _, _ = volume
    archive = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(small_net(), (torch.zeros(2, 1, 8, 8, 8),)), str(archive))
    result = cli(
        "infer",
        path,
        "--model",
        archive,
        "--output",
        tmp_path / "o.nii.gz",
        "--patch-size",
        "8",
        "--batch-size",
        "2",
    )
    assert result.returncode == 0, result.stderr


def test_pickled_model_is_refused_unless_trusted(volume, tmp_path):
    path, _, _ = volume
    pickled = tmp_path / "full.pth"
    torch.save(small_net(), pickled)
    refused = cli(
        "infer", path, "--model", pickled, "--output", tmp_path / "o.nii.gz", "--patch-size", "8"
    )
    assert refused.returncode == 2 and "trust-pickle" in refused.stderr
    assert not (tmp_path / "o.nii.gz").exists()
    trusted = cli(
        "infer",
        path,
        "--model",
        pickled,
        "--output",
        tmp_path / "o.nii.gz",
        "--patch-size",
        "8",
        "--trust-pickle",
    )
    assert trusted.returncode == 0, trusted.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing.nii.gz", "--model", "demo", "--output", "o.nii.gz"], "missing.nii.gz"),
        (["{input}", "--model", "nope.pt", "--output", "o.nii.gz"], "nope.pt"),
        (
            ["{input}", "--model", "demo", "--output", "{input}", "--overwrite"],
            "refusing to overwrite the input",
        ),
        (["{input}", "--model", "demo", "--output", "{existing}"], "--overwrite"),
        (["{input}", "--model", "demo", "--output", "o.nii.gz", "--overlap", "3"], "even"),
        (
            ["{input}", "--model", "demo", "--output", "o.nii.gz", "--patch-size", "64"],
            "larger than the volume",
        ),
        (["{broken}", "--model", "demo", "--output", "o.nii.gz"], "broken.nii.gz"),
        (["{input}", "--model", "os:nope", "--output", "o.nii.gz"], "no callable 'nope'"),
        (
            [
                "{input}",
                "--model",
                "tests.test_cli:failing_net",
                "--output",
                "o.nii.gz",
                "--patch-size",
                "8",
            ],
            "ZeroDivisionError: the model failed",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(volume, tmp_path, arguments, message):
    path, _, _ = volume
    existing = tmp_path / "existing.nii.gz"
    existing.write_bytes(b"x")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti at all")
    filled = [a.format(input=path, existing=existing, broken=broken) for a in arguments]
    result = cli("infer", *filled, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert existing.read_bytes() == b"x"


def test_sigint_leaves_no_output_and_input_untouched(volume, tmp_path):
    path, _, _ = volume
    before = path.read_bytes()
    output = tmp_path / "out.nii.gz"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "napari_patchwork.cli",
            "infer",
            str(path),
            "--model",
            "tests.test_cli:slow_net",
            "--output",
            str(output),
            "--patch-size",
            "8",
            "--batch-size",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nii.gz"]  # no temp file
    assert path.read_bytes() == before


def test_main_job_on_the_sample(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = cli(
        "infer", "--sample", "--output", tmp_path / "seg.nii.gz", "--labels", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    dice = {
        line.split()[1].rstrip(":"): float(line.split()[-1])
        for line in result.stderr.splitlines()
        if line.startswith("Dice")
    }
    assert dice["blob"] > 0.9 and dice["tube"] > 0.7, dice
