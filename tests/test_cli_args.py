"""The command line's arguments: usage, help, and every refusal that comes before the run.

Each refusal runs the real CLI in a subprocess on a real NIfTI file and checks that nothing
was done: the model factory below leaves a marker file when it is called.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_patchwork.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
MARKER = "PATCHWORK_TEST_MARKER"


def marking_net() -> torch.nn.Module:
    """A model factory that leaves a file at ``$PATCHWORK_TEST_MARKER`` when it is called."""
    Path(os.environ[MARKER]).touch()
    torch.manual_seed(0)
    return torch.nn.Conv3d(1, 2, 1).eval()


def cli(*args, cwd, env=None):
    env = dict(env or os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "napari_patchwork.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "scan.nii.gz"
    array = np.random.default_rng(0).random((12, 10, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.0, 1.0])), str(path))
    return path


@pytest.fixture
def marked(tmp_path):
    marker = tmp_path / "model-was-loaded"
    return marker, dict(os.environ, **{MARKER: str(marker)})


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# ---------------------------------------------------------------- usage and help
def test_missing_required_arguments_are_reported_together(tmp_path):
    result = cli("infer", cwd=tmp_path)
    assert result.returncode == 2
    usage, error = result.stderr.strip().splitlines()[-3:-1], result.stderr.strip().splitlines()[-1]
    assert "INPUT --model SOURCE --output OUT" in usage[0]
    assert "--sample" in usage[1]
    assert error.endswith("the following arguments are required: INPUT, --model, --output/-o")


def test_missing_model_and_output_are_reported_together(scan, tmp_path):
    result = cli("infer", scan, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("required: --model, --output/-o"), result.stderr


def test_required_arguments_are_required_in_the_parser():
    infer = subcommands(build_parser())["infer"]
    required = {action.dest for action in infer._actions if action.required}
    assert required == {"input", "model", "output"}


def test_sample_needs_none_of_them_and_keeps_other_errors(tmp_path):
    result = cli("infer", "--sample", "--bogus", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("unrecognized arguments: --bogus"), result.stderr
    assert "required" not in result.stderr


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def all_actions():
    parser = build_parser()
    yield "napari-patchwork", parser, parser._actions
    for name, sub in subcommands(parser).items():
        yield name, sub, sub._actions


def test_every_argument_has_help_and_shows_its_default():
    for command, _, actions in all_actions():
        for action in actions:
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{command} {name} has no help"
            default = action.default
            if default not in (None, False, argparse.SUPPRESS) and not action.required:
                shown = " ".join(map(str, default)) if isinstance(default, list) else default
                assert f"(default: {shown})" in action.help, f"{command} {name}: {action.help}"


def test_help_shows_defaults(tmp_path):
    result = cli("infer", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for expected in (
        "(default: 64)",
        "(default: gaussian)",
        "(default: 4)",
        "(default: softmax for NIfTI outputs; zarr outputs stay raw unless given)",
        "(default: a quarter of the patch)",
        "(default: the best available)",
        "(default: local)",
    ):
        assert expected in text, expected
    assert "usage: napari-patchwork infer INPUT --model SOURCE --output OUT" in text


# ---------------------------------------------------------------- refusals before the run
@pytest.mark.parametrize(
    ("output", "fragments"),
    [
        ("seg.txt", ["--output 'seg.txt'", "unknown file type", ".nii, .nii.gz or .zarr"]),
        ("seg", ["--output 'seg'", "unknown file type"]),
        ("missing/seg.nii.gz", ["--output 'missing/seg.nii.gz'", "'missing' does not exist"]),
        ("taken.nii.gz", ["--output 'taken.nii.gz' exists", "--overwrite"]),
        ("scan.nii.gz", ["--output 'scan.nii.gz'", "refusing to overwrite the input"]),
    ],
)
def test_output_path_is_refused_before_the_model_is_loaded(
    scan, tmp_path, marked, output, fragments
):
    marker, env = marked
    (tmp_path / "taken.nii.gz").write_bytes(b"keep")
    before = scan.read_bytes()
    extra = ["--overwrite"] if output == "scan.nii.gz" else []
    model = "tests.test_cli_args:marking_net"
    result = cli(
        "infer", scan.name, "--model", model, "--output", output, *extra, cwd=tmp_path, env=env
    )
    one_line_error(result, *fragments)
    assert not marker.exists(), "the model was loaded before the output was checked"
    assert (tmp_path / "taken.nii.gz").read_bytes() == b"keep"
    assert scan.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz", "taken.nii.gz"]


def test_output_folder_where_a_file_goes_is_refused(scan, tmp_path, marked):
    marker, env = marked
    (tmp_path / "folder.nii.gz").mkdir()
    model = "tests.test_cli_args:marking_net"
    args = ["infer", scan, "--model", model, "--output", tmp_path / "folder.nii.gz", "--overwrite"]
    one_line_error(cli(*args, cwd=tmp_path, env=env), "is a folder")
    assert not marker.exists()


def test_sample_output_is_checked_before_the_sample_is_written(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp))
    result = cli("infer", "--sample", "--output", "missing/seg.nii.gz", cwd=tmp_path, env=env)
    one_line_error(result, "--output 'missing/seg.nii.gz'", "does not exist")
    assert list(temp.iterdir()) == []  # the 160³ sample was not generated


def test_an_input_with_sample_is_refused(scan, tmp_path):
    result = cli("infer", scan.name, "--sample", cwd=tmp_path)
    one_line_error(result, "--sample", "takes no INPUT", f"'{scan.name}'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (["--model", "nope.pt"], ["--model 'nope.pt'", "does not exist"]),
        (["--model", "{folder}"], ["--model", "is a folder"]),
        (
            ["--model", "tests.test_cli_args:marking_net", "--weights", "nope.pth"],
            ["--weights 'nope.pth'", "does not exist"],
        ),
        (["--model", "demo", "--patch-size", "8", "8"], ["--patch-size", "1 or 3", "[8, 8]"]),
        (["--model", "demo", "--overlap", "3"], ["--overlap", "even"]),
        (["--model", "demo", "--patch-size", "8", "--batch-size", "0"], ["--batch-size", "0"]),
        (["--model", "demo", "--padding-mode", "bogus"], ["--padding-mode", "'bogus'"]),
    ],
)
def test_bad_settings_name_their_flag(scan, tmp_path, arguments, fragments):
    (tmp_path / "folder").mkdir()
    filled = [a.format(folder=tmp_path / "folder") for a in arguments]
    result = cli("infer", scan, "--output", tmp_path / "o.nii.gz", *filled, cwd=tmp_path)
    one_line_error(result, *fragments)
    assert not (tmp_path / "o.nii.gz").exists()


def test_a_too_large_patch_names_the_flag(scan, tmp_path, capsys):
    """Typed, the patch is named by its flag; not typed, as the default it is."""
    argv = ["infer", str(scan), "--model", "demo", "--output", str(tmp_path / "o.nii.gz")]
    assert main([*argv, "--patch-size", "64"]) == 2
    error = capsys.readouterr().err
    assert "--patch-size (64, 64, 64) is larger than the volume (12, 10, 8)" in error
    assert "--padding-mode" in error
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "the default patch size (64, 64, 64) is larger than the volume (12, 10, 8)" in error
    assert "choose one with --patch-size" in error


# ---------------------------------------------------------------- errors and tracebacks
def failing_net():
    def forward(x):
        raise ZeroDivisionError("the model failed")

    return forward


def test_errors_are_one_line_unless_traceback_is_asked_for(scan, tmp_path):
    args = ["infer", scan, "--model", "tests.test_cli_args:failing_net", "--patch-size", "4"]
    args += ["--output", tmp_path / "o.nii.gz"]
    quiet = cli(*args, cwd=tmp_path)
    one_line_error(quiet, "ZeroDivisionError: the model failed", "--traceback")
    loud = cli(*args, "--traceback", cwd=tmp_path)
    assert loud.returncode == 2
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1].startswith("napari-patchwork: error:")
    assert not (tmp_path / "o.nii.gz").exists()
