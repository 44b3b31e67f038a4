"""The command line, run in subprocesses on real NIfTI files and real model files."""

import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import default_sigint

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
        preexec_fn=default_sigint,
    )
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nii.gz"]  # no temp file
    assert path.read_bytes() == before


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps (Linux)")
def test_sigint_while_torch_is_still_importing_is_one_line_and_130(volume, tmp_path):
    """Ctrl-C in the seconds torch takes to import (a busy machine) is an interruption like
    any other: exit 130, one line, no traceback, nothing written."""
    path = volume[0]
    output = tmp_path / "out.nii.gz"
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_patchwork.cli", "infer", str(path), "--model", "demo"]
        + ["--output", str(output)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if "libtorch" in maps.read_text():  # torch's import has begun (inside main)
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert "interrupted" in stderr and not output.exists()


def readme_main_job() -> tuple[list[str], str]:
    """The README's main-job command (without the program name) and the flag it suggests."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run the main job", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\n(.*?)\n```", section, flags=re.DOTALL).group(1).strip()
    suggested = re.search(r"add `(--[a-z-]+)`", section).group(1)
    program, *arguments = shlex.split(command)
    assert program == "napari-patchwork"
    return arguments, suggested


def dice_scores(stderr: str) -> dict[str, float]:
    return {
        line.split()[1].rstrip(":"): float(line.split()[-1])
        for line in stderr.splitlines()
        if line.startswith("Dice")
    }


def test_readme_main_job_then_its_labels_suggestion(tmp_path):
    """What a new user pastes: the main job, then the same command with ``--labels``."""
    arguments, suggested = readme_main_job()
    assert suggested == "--labels"
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    first = cli(*arguments, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    probabilities = nib.load(str(tmp_path / "sample_segmentation.nii.gz"))
    assert probabilities.shape == (160, 160, 160, 3)
    assert dice_scores(first.stderr)["blob"] > 0.9
    second = cli(*arguments, suggested, cwd=tmp_path, env=env)  # right after: no --overwrite
    assert second.returncode == 0, second.stderr
    labels = nib.load(str(tmp_path / "sample_labels.nii.gz"))
    assert labels.shape == (160, 160, 160) and labels.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2}
    dice = dice_scores(second.stderr)
    assert dice["blob"] > 0.9 and dice["tube"] > 0.7, dice
    assert "sample_labels.nii.gz (160, 160, 160) in" in second.stderr
    again = cli(*arguments, suggested, cwd=tmp_path, env=env)  # a third run refuses to replace
    assert again.returncode == 2 and "--overwrite" in again.stderr


# ---------------------------------------------------------------- scans as scanners write them
def oblique_las() -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.9, 0.8, 1.5])
    affine[:3, 3] = (40, -20, 10)
    return affine


@pytest.fixture(params=["ras-float32", "oblique-las-int16-scaled"])
def scan(request, tmp_path):
    """A non-cubic scan with explicit qform/sform codes that differ from nibabel's defaults."""
    rng = np.random.default_rng(1)
    path = tmp_path / "scan.nii.gz"
    if request.param == "ras-float32":
        affine = np.diag([0.7, 0.8, 1.5, 1.0])
        affine[:3, 3] = (5, -3, 2)
        image = nib.Nifti1Image(rng.random((20, 18, 16)).astype(np.float32), affine)
        codes = {"qform_code": 1, "sform_code": 4}
        axes = ("R", "A", "S")
    else:
        affine = oblique_las()
        raw = rng.integers(-400, 400, (20, 18, 16)).astype(np.int16)
        image = nib.Nifti1Image(raw, affine, dtype=np.int16)
        image.header.set_slope_inter(0.01, 2.0)
        codes = {"qform_code": 3, "sform_code": 1}
        axes = ("L", "A", "S")
    image.set_qform(affine, codes["qform_code"])
    image.set_sform(affine, codes["sform_code"])
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    written = nib.load(str(path))
    assert nib.aff2axcodes(written.affine) == axes
    if request.param != "ras-float32":
        assert written.dataobj.slope == pytest.approx(0.01)  # scaled on disk
    return path, written.get_fdata(), affine, codes


@pytest.mark.parametrize("labels", [False, True], ids=["probabilities", "labels"])
def test_output_keeps_the_scans_codes_affine_and_axis_order(scan, tmp_path, labels):
    path, voxels, affine, codes = scan
    output = tmp_path / "out.nii.gz"
    extra = ["--labels"] if labels else []
    args = ["infer", path, "--model", "tests.test_cli:small_net", "--output", output]
    result = cli(*args, "--patch-size", "8", "--overlap", "4", *extra)
    assert result.returncode == 0, result.stderr
    written = nib.load(str(output))
    expected_shape = (20, 18, 16) if labels else (20, 18, 16, 3)
    assert written.shape == expected_shape
    assert f"wrote {output} {expected_shape} in" in result.stderr  # the file's axis order
    header = written.header
    assert int(header["qform_code"]) == codes["qform_code"]
    assert int(header["sform_code"]) == codes["sform_code"]
    assert np.allclose(header.get_qform(), affine, atol=1e-5)
    assert np.allclose(header.get_sform(), affine, atol=1e-6)
    assert np.allclose(written.affine, affine, atol=1e-6)
    assert header.get_xyzt_units() == ("mm", "sec")
    logits = small_net()(torch.from_numpy(voxels).float()[None, None])[0].detach()
    if labels:
        assert (np.asarray(written.dataobj) == logits.argmax(0).numpy()).mean() > 0.999
    else:
        probabilities = np.moveaxis(written.get_fdata(), -1, 0)
        assert np.allclose(probabilities, torch.softmax(logits, 0).numpy(), atol=1e-4)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_follow_the_users_umask(volume, tmp_path, umask, mode):
    path, _, _ = volume
    output = tmp_path / "labels.nii.gz"
    args = ["infer", path, "--model", "tests.test_cli:small_net", "--output", output, "--labels"]
    result = cli(*args, "--patch-size", "8", umask=umask)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(output.stat().st_mode) == mode
    again = cli(*args, "--patch-size", "8", "--overwrite", umask=umask)  # a replaced file too
    assert again.returncode == 0, again.stderr
    assert stat.S_IMODE(output.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nii.gz", "labels.nii.gz"]


def test_train_then_infer_labels_writes_the_painted_values(tmp_path):
    """The README workflow of issue 15: paint 1 / 2 in a file, train, infer --labels."""
    from napari_patchwork.cli import main
    from napari_patchwork.core.training import scribbles_from_labels
    from napari_patchwork.sample import make_sample

    sample = make_sample((32, 32, 32), seed=4)
    objects = (sample.labels > 0).astype(np.int16)
    painted = scribbles_from_labels(objects, seed=0)  # paints 1 = background, 2 = objects
    assert set(np.unique(painted).tolist()) == {0, 1, 2}
    image, annotations = tmp_path / "image.nii.gz", tmp_path / "paint.nii.gz"
    nib.save(nib.Nifti1Image(sample.image, np.eye(4)), image)
    nib.save(nib.Nifti1Image(np.asarray(painted, np.int16), np.eye(4)), annotations)
    model, segmentation = tmp_path / "model.pt2", tmp_path / "seg.nii.gz"
    common = ["--patch-size", "16", "--device", "cpu"]
    assert (
        main(
            [
                "train",
                str(image),
                str(annotations),
                "--output",
                str(model),
                "--iterations",
                "3",
                "--seed",
                "0",
                "--quiet",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "infer",
                str(image),
                "--model",
                str(model),
                "--output",
                str(segmentation),
                "--labels",
                "--patch-size",
                "16",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    values = set(np.unique(np.asarray(nib.load(segmentation).dataobj)).tolist())
    assert values <= {1, 2} and values, values  # the painted values, never 0
