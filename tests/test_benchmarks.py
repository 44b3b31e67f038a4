"""The GPU check script runs to completion on the CPU in CI-size settings (issue 16)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_and_prints_every_row():
    environment = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--quick", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    methods = {line.split(" | ")[2] for line in table[1:]}
    assert {
        "napari-patchwork",
        "model only",
        "prefetch off (plain loop)",
        "napari-patchwork, aggregation on CPU",
        "U-Net step (AMP on GPU)",
        "no-op step (loaders)",
    } <= methods
    amp = {line.split(" | ")[1] for line in table[2:] if line.startswith("| inference")}
    assert amp == {"off", "on"}
    assert all("patches/s" in line for line in table if line.startswith("| training"))


def test_settings_sweep_prints_a_row_per_setting_and_names_missing_peers():
    """``bench_settings.py --quick``: a row per setting with our time; each peer either timed
    with a ratio, or named as not installed (CI installs no peers)."""
    import importlib.util

    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_settings.py"),
            "--quick",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| identity |")]
    assert len(rows) == 2
    assert all(float(row.split(" | ")[8]) > 0 for row in rows)  # ours, in milliseconds
    for module, peer in (("monai", "MONAI"), ("torchio", "TorchIO")):
        if importlib.util.find_spec(module) is None:
            assert module in result.stdout.split("left out:")[1].splitlines()[0]
        else:
            assert f"faster than {peer} in " in result.stdout
