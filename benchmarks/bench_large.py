"""Out-of-core tiled inference: peak memory of a zarr-to-zarr run on a volume larger than a
memory budget, and the dask engine with 1 vs 2 worker processes.

    python benchmarks/bench_large.py [--rows 1024] [--side 256]

Each measurement runs in a fresh child process; peak RSS is the child's ``ru_maxrss``, taken
against the same child's RSS right after importing torch (the fixed cost of any run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
import torch
from napari_patchwork.core.config import InferenceConfig
from napari_patchwork.core.inference import TiledInference
from napari_patchwork.core.lazy import LazyVolume, open_zarr
from napari_patchwork.core.streaming import zarr_target
from napari_patchwork.models import demo_model
settings = json.loads(sys.argv[1])
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if settings["engine"] == "local":
    torch.set_num_threads(settings["threads"])
    engine = TiledInference(demo_model(), InferenceConfig(64, 16, "gaussian", 2),
                            zarr_target(settings["output"]))
    for _ in engine.run(LazyVolume(open_zarr(settings["input"]))):
        pass
    engine.result()
else:
    from napari_patchwork.distributed import infer_dask
    infer_dask("demo", settings["input"], settings["output"], patch_size=64, patch_overlap=16,
               batch_size=2, workers=settings["workers"], block_rows=64)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mib": peak / 1024, "baseline_mib": baseline / 1024}))
"""


def make_volume(path: str, rows: int, side: int) -> None:
    import numpy as np
    import zarr

    array = zarr.create_array(
        path, shape=(1, rows, side, side), chunks=(1, 64, side, side), dtype="float32"
    )
    generator = np.random.default_rng(0)
    for start in range(0, rows, 64):
        stop = min(start + 64, rows)
        array[:, start:stop] = generator.random((1, stop - start, side, side), np.float32)


def run(settings: dict) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(settings)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--side", type=int, default=192)
    parser.add_argument("--dask-rows", type=int, default=192)
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    print(
        "| volume | input MiB | output MiB | seconds | peak RSS MiB | above torch import MiB |"
        " (input + output) ÷ peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for rows in args.rows:
        big = os.path.join(folder, f"big{rows}.zarr")
        make_volume(big, rows, args.side)
        volume_mib = 4 * rows * args.side**2 / 2**20
        local = run(
            {
                "engine": "local",
                "input": big,
                "output": os.path.join(folder, f"o{rows}.zarr"),
                "threads": os.cpu_count(),
            }
        )
        above = local["peak_mib"] - local["baseline_mib"]
        print(
            f"| 1×{rows}×{args.side}² | {volume_mib:.0f} | {3 * volume_mib:.0f} |"
            f" {local['seconds']:.1f} | {local['peak_mib']:.0f} | {above:.0f} |"
            f" {4 * volume_mib / local['peak_mib']:.2f} |",
            flush=True,
        )
    small = os.path.join(folder, "small.zarr")
    make_volume(small, args.dask_rows, args.side // 2)
    times = {}
    for workers in (1, 2):
        out = os.path.join(folder, f"d{workers}.zarr")
        times[workers] = run({"engine": "dask", "input": small, "output": out, "workers": workers})[
            "seconds"
        ]
    print(
        f"dask LocalCluster on 1×{args.dask_rows}×{args.side // 2}²: 1 worker"
        f" {times[1]:.1f} s, 2 workers {times[2]:.1f} s, speed-up {times[1] / times[2]:.2f}×"
        f" (cluster start-up included; {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
