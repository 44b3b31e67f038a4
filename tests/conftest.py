"""Shared fixtures (small seeded volumes as subjects, in memory and as NIfTI files), napari's
settings kept out of the user's home, and tests that need a display skipped without one."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import napari_patchwork as pw

# napari saves its settings (window size included) when a viewer closes: keep the tests' away
# from the user's own, so a test can never break their next napari start (set before napari's
# settings are imported, which happens lazily after this file is loaded).
if "NAPARI_CONFIG" not in os.environ:
    _settings_dir = tempfile.mkdtemp(prefix="napari-patchwork-tests-")
    atexit.register(shutil.rmtree, _settings_dir, ignore_errors=True)
    os.environ["NAPARI_CONFIG"] = str(Path(_settings_dir) / "settings.yaml")

# The suite runs in several processes (pytest-xdist, ``-n auto`` in pyproject.toml): each gets
# its share of the cores for torch's intra-op threads, or the processes' thread pools would
# wait on each other (a 0.1 ms copy took 2.7 ms with two 2-thread pools on two cores).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(
        max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    )


def default_sigint() -> None:
    """``preexec_fn`` for children a test interrupts: SIGINT back to its default disposition.

    A shell starts background jobs (``cmd &``, as CI scripts and nohup runs do) with SIGINT
    ignored, children inherit that across exec, and Python then never installs its
    KeyboardInterrupt handler: the test's Ctrl-C would be silently dropped.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: Why a test that opens a window is skipped, and what to install (README, "Run the tests").
DISPLAY_HELP = (
    "needs a display, and none was found (DISPLAY unset, Xvfb not on PATH). Install Xvfb and "
    "Mesa, e.g. on Debian/Ubuntu `sudo apt-get install xvfb xauth libgl1 libegl1 libglx-mesa0 "
    "libgl1-mesa-dri libxkbcommon-x11-0 libxcb-cursor0` (the full list is in .ci/run and the "
    "README's 'Run the tests'); pytest-xvfb (installed by .[test]) then starts Xvfb by itself, "
    "or run `xvfb-run -a python -m pytest`"
)


def display_available() -> bool:
    """Whether Qt can open windows: not Linux, a display (pytest-xvfb sets ``DISPLAY`` when it
    starts Xvfb, before collection), or a Qt platform the user chose."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def needs_display(item: pytest.Item) -> bool:
    """Tests that create a QApplication (``qapp``, ``qtbot``, ``make_napari_viewer``) or are
    marked ``display`` (tests/widgets/conftest.py marks the widget tests)."""
    return (
        "qapp" in getattr(item, "fixturenames", ())
        or item.get_closest_marker("display") is not None
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a display, skip what needs one (Qt would abort the whole run otherwise)."""
    if display_available():
        return
    skip = pytest.mark.skip(reason=DISPLAY_HELP)
    for item in items:
        if needs_display(item):
            item.add_marker(skip)


def make_subject(
    shape: tuple[int, int, int] = (12, 10, 8), channels: int = 1, seed: int = 0
) -> pw.Subject:
    """A subject with a random intensity image and a two-class label map."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.rand(channels, *shape, generator=generator)
    labels = (data[:1] > 0.7).to(torch.int64)
    return pw.Subject(t1=pw.ScalarImage(data), seg=pw.LabelMap(labels))


@pytest.fixture
def subject() -> pw.Subject:
    return make_subject()


@pytest.fixture
def nifti_file(tmp_path: Path) -> Callable[..., Path]:
    """Write an array as a NIfTI file with nibabel and return its path."""

    def write(
        array: np.ndarray, name: str = "image.nii.gz", affine: np.ndarray | None = None
    ) -> Path:
        path = tmp_path / name
        affine = np.diag([0.5, 0.75, 2.0, 1.0]) if affine is None else affine
        nib.save(nib.Nifti1Image(array, affine), str(path))
        return path

    return write
