"""Broken, missing, unreadable files and interrupted runs: a clear error naming the path,
in the API, the command line (non-zero exit, one line) and napari; no half-written output.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_patchwork.cli import main
from napari_patchwork.core.data.image import ScalarImage
from napari_patchwork.io.nifti import read_nifti
from napari_patchwork.napari_contributions import get_reader
from tests.conftest import default_sigint

ROOT = Path(__file__).resolve().parents[2]


def write_volume(path: Path, shape=(12, 10, 8)) -> Path:
    array = np.random.default_rng(0).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 1.2, 1])), str(path))
    return path


def broken_files(folder: Path) -> dict[str, Path]:
    """One file (or path) per kind of fault."""
    good_gz = write_volume(folder / "good.nii.gz")
    good = write_volume(folder / "good.nii")
    files = {
        "truncated .nii.gz": folder / "truncated.nii.gz",
        "truncated .nii": folder / "truncated.nii",
        "corrupted gzip": folder / "corrupted.nii.gz",
        "not NIfTI (text)": folder / "notes.nii",
        "not NIfTI (png)": folder / "picture.nii.gz",
        "wrong suffix": folder / "volume.txt",
        "directory": folder / "folder.nii.gz",
        "missing": folder / "missing.nii.gz",
        "empty file": folder / "empty.nii",
    }
    data = good_gz.read_bytes()
    files["truncated .nii.gz"].write_bytes(data[: len(data) // 2])
    files["truncated .nii"].write_bytes(good.read_bytes()[:600])
    corrupted = bytearray(data)
    corrupted[40:80] = bytes(40)
    files["corrupted gzip"].write_bytes(bytes(corrupted))
    files["not NIfTI (text)"].write_text("patient notes, not an image\n" * 20)
    files["not NIfTI (png)"].write_bytes(gzip.compress(b"\x89PNG\r\n\x1a\n" + bytes(500)))
    files["wrong suffix"].write_bytes(data)
    files["directory"].mkdir()
    files["empty file"].write_bytes(b"")
    return files


KINDS = [
    "truncated .nii.gz",
    "truncated .nii",
    "corrupted gzip",
    "not NIfTI (text)",
    "not NIfTI (png)",
    "wrong suffix",
    "directory",
    "missing",
    "empty file",
]


@pytest.fixture
def files(tmp_path):
    return broken_files(tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_api_names_the_path(files, kind):
    path = files[kind]
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        read_nifti(path)
    assert str(path) in str(raised.value)
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        ScalarImage(path).load()
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("kind", KINDS)
def test_cli_exits_2_with_one_line_naming_the_path(files, kind, tmp_path, capsys):
    path = files[kind]
    output = tmp_path / "out.nii.gz"
    code = main(["infer", str(path), "--model", "demo", "--output", str(output)])
    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.count("\n") == 1 and str(path) in stderr and "Traceback" not in stderr
    assert not output.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_napari_reader_refuses_or_names_the_path(files, kind):
    path = files[kind]
    reader = get_reader(str(path))
    if reader is None:  # not ours to read (napari says no reader found for the path)
        assert kind == "wrong suffix"
        return
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        reader(str(path))
    assert str(path) in str(raised.value)


def test_napari_viewer_open_reports_the_path(make_napari_viewer, files):
    """What a user of File > Open sees: napari turns the error into a notification."""
    viewer = make_napari_viewer()
    path = files["truncated .nii.gz"]
    with pytest.raises(ValueError) as raised:  # ours, or napari's ReaderPluginError wrapping it
        viewer.open(str(path), plugin="napari-patchwork")
    chain, error = [], raised.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any(str(path) in message for message in chain)
    assert len(viewer.layers) == 0


def without_root_override() -> list[str]:
    """A command prefix under which file permissions apply, even to root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root without util-linux's setpriv: cannot drop DAC override")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def test_unreadable_file_is_refused_with_its_path(tmp_path):
    path = write_volume(tmp_path / "secret.nii.gz")
    path.chmod(0)
    output = tmp_path / "out.nii.gz"
    result = subprocess.run(
        [
            *without_root_override(),
            sys.executable,
            "-m",
            "napari_patchwork.cli",
            "infer",
            str(path),
            "--model",
            "demo",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "permission denied" in result.stderr and str(path) in result.stderr
    assert result.stderr.count("\n") == 1 and not output.exists()


# ---------------------------------------------------------------- SIGINT at random moments
def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "delay", [round(random.Random(seed).uniform(2.0, 6.0), 2) for seed in range(3)]
)
def test_sigint_at_a_random_moment_leaves_no_partial_file(tmp_path, delay):
    source = write_volume(tmp_path / "input.nii.gz", shape=(24, 24, 24))
    before = digest(source)
    output = tmp_path / "out.nii.gz"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "napari_patchwork.cli",
            "infer",
            str(source),
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
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (130, 0), stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    if process.returncode == 130:
        assert "interrupted" in stderr and names == ["input.nii.gz"]  # no output, no temp file
    else:  # finished before the signal: a complete, readable output
        assert names == ["input.nii.gz", "out.nii.gz"] and read_nifti(output)[0].shape[1:] == (
            24,
            24,
            24,
        )
    assert digest(source) == before
