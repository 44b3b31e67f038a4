"""Without a display (no Xvfb, DISPLAY unset) the widget tests skip, saying what to install.

Run in a subprocess whose PATH holds only the venv's ``bin`` (so ``Xvfb`` is not found) and
whose environment has no display: before tests/conftest.py skipped them, Qt aborted the whole
run (exit 134) at the first viewer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_DISPLAY = ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "PYTEST_ADDOPTS")


def run_headless(*args: str) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {key: value for key, value in os.environ.items() if key not in NO_DISPLAY}
    env["PATH"] = bin_dir
    assert shutil.which("Xvfb", path=bin_dir) is None
    env = {key: value for key, value in env.items() if not key.startswith("PYTEST_XDIST")}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-n", "0"]
    command += args
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY is a Linux matter")
@pytest.mark.parametrize("xvfb_plugin", [[], ["-p", "no:xvfb"]], ids=["pytest-xvfb", "no-plugin"])
def test_widget_tests_skip_with_what_to_install_without_a_display(xvfb_plugin):
    result = run_headless(*xvfb_plugin, "tests/widgets/test_demo.py")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "skipped" in result.stdout and "passed" not in result.stdout, output[-3000:]
    assert "needs a display" in result.stdout
    assert "apt-get install xvfb" in result.stdout and "xvfb-run -a python -m pytest" in output
    assert "Fatal Python error" not in output
