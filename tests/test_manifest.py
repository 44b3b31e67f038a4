"""The npe2 manifest validates and every contribution resolves."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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
        "Train from annotations",
    }


def test_our_reader_is_the_one_napari_preselects_for_nifti():
    """napari's "Choose reader" dialog checks the first display name in sorted order."""
    manager = npe2.PluginManager.instance()
    manager.discover()
    for name in ("scan.nii.gz", "scan.nii", "SCAN.NII.GZ"):
        readers = {
            manager.get_manifest(reader.command).display_name: reader.plugin_name
            for reader in manager.iter_compatible_readers([name])
        }
        assert "napari" in readers.values(), readers  # napari's builtin reader claims them too
        assert readers[sorted(readers)[0]] == "napari-patchwork", readers


def test_manifest_names_for_people():
    manifest = npe2.PluginManifest.from_distribution("napari-patchwork")
    assert manifest.display_name == "Patchwork"
    assert {w.display_name for w in manifest.contributions.writers} == {
        "NIfTI image",
        "NIfTI labels",
    }


def test_pyproject_has_the_metadata_the_napari_hub_reads():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    classifiers = set(project["classifiers"])
    assert {
        "Framework :: napari",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: BSD License",
        "Topic :: Scientific/Engineering :: Image Processing",
        "Operating System :: OS Independent",
    } <= classifiers
    low = int(re.fullmatch(r">=3\.(\d+)", project["requires-python"]).group(1))
    versions = {int(c.rsplit(".", 1)[1]) for c in classifiers if re.search(r"Python :: 3\.\d+$", c)}
    assert min(versions) == low and versions == set(range(low, max(versions) + 1))
    assert project["authors"] and project["keywords"] and project["description"]
    assert project["license"] == {"text": "BSD-3-Clause"}
    urls = project["urls"]
    assert {"Source Code", "Bug Tracker", "Documentation", "User Support"} <= set(urls)
    assert all(url.startswith(urls["Source Code"]) for url in urls.values())
