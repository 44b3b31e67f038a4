"""The npe2 manifest validates and every contribution resolves."""

import shutil
import subprocess

import pytest

npe2 = pytest.importorskip("npe2")


def test_npe2_validate_command():
    executable = shutil.which("npe2")
    assert executable, "npe2 command not installed"
    result = subprocess.run(
        [executable, "validate", "napari-patchwork"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_every_command_imports():
    manifest = npe2.PluginManifest.from_distribution("napari-patchwork")
    manifest.validate_imports()
    names = {command.python_name for command in manifest.contributions.commands}
    assert "napari_patchwork.widgets:TiledInferenceWidget" in names
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "Patch grid",
        "Sampler explorer",
        "Tiled inference",
    }
