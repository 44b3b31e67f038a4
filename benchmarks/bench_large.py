"""Out-of-core tiled inference: peak memory of zarr-to-zarr runs, counted in slabs.

    python benchmarks/bench_large.py [--rows 512] [--sides 1024 256] [--patch 64 128 128]
                                     [--overlap 16] [--model identity|demo] [--dask] [--quick]
                                     [--input-chunks 64x64x64 ...]
                                     [--output-chunks grid 64x64x64 ...]

``--input-chunks`` and ``--output-chunks`` take spatial chunk shapes ``IxJxK`` (clamped to the
volume; ``slice`` is ``1×J×K``, whole planes; ``grid`` as an output chunking is the default one:
rows on the grid step, 64 in-plane). Each input chunking is written once per cross-section and
run with each output chunking.

A *slab* is one patch height of rows of the full cross-section in float32
(``patch[0] × J × K × 4`` bytes): the output rows of a one-channel model (the input is held
as a window of whole chunk columns of one patch height of rows, a fraction of a slab on wide
cross-sections). The figure is the peak RSS above the RSS after the imports, divided
by the slab. Each run is a fresh child process; its peak is ``VmHWM`` (``ru_maxrss`` is kept
across ``exec`` on Linux, so a child would inherit the parent's peak).

The *model's working set* is measured the same way in its own child: the peak RSS above the
imports of running the model twice on one batch of patches of the run's size, less that
input batch (the run's batch buffer is counted among its own buffers; the header also gives
the figure with the batch, and a column subtracts that). The table gives the slabs raw and
with the model's working set subtracted, what is left above two slabs once the model is
subtracted (the run's fixed buffers: batch, blending window, zarr's chunks in flight, code
pages; negative when the input window and output rows are less than two slabs), and the code
pages alone: the growth of the file-backed RSS (``RssFile``) over the run. ``--quick`` skips
the two allocator columns.

Every volume runs three ways: as users run it (glibc's defaults; a streamed run sets glibc's
mmap threshold itself, see ``streaming.return_freed_memory``), with that setting off
(``TUNE_ALLOCATOR = False``: glibc exactly as it starts), and with
``MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=262144`` in the environment. ``--dask`` adds
1 vs 2 dask workers on a small volume.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

import torch, zarr
import napari_patchwork as pw
from napari_patchwork.core.inference import streaming
from napari_patchwork.models import demo_model

settings = json.loads(sys.argv[1])
streaming.TUNE_ALLOCATOR = settings.get("tune", True)
if settings["engine"] == "model":  # the model alone, on one batch of patches
    torch.set_num_threads(settings["threads"])
    model = demo_model() if settings["model"] == "demo" else (lambda x: x * 2.0)
    baseline, code, start = status("VmRSS"), status("RssFile"), time.perf_counter()
    batch = torch.empty((2, 1, *settings["patch"]))
    batch.fill_(0.5)
    with torch.no_grad():
        for _ in range(2):
            outputs = model(batch)
            del outputs
    batch_bytes = batch.numel() * 4  # the input batch: the run's buffer (reported apart)
elif settings["engine"] == "local":
    torch.set_num_threads(settings["threads"])
    model = demo_model() if settings["model"] == "demo" else (lambda x: x * 2.0)
    array = zarr.open_array(settings["input"], mode="r")
    baseline, code, start = status("VmRSS"), status("RssFile"), time.perf_counter()
    pw.infer(model, array, patch_size=settings["patch"], patch_overlap=settings["overlap"],
             batch_size=2, output=settings["output"], output_chunks=settings["chunks"])
else:
    from napari_patchwork.distributed import infer_dask
    baseline, code, start = status("VmRSS"), status("RssFile"), time.perf_counter()
    infer_dask("demo", settings["input"], settings["output"], patch_size=settings["patch"],
               patch_overlap=settings["overlap"], batch_size=2, workers=settings["workers"],
               block_rows=64)
seconds = time.perf_counter() - start
result = {"seconds": seconds, "peak": status("VmHWM"), "baseline": baseline}
result["code"] = status("RssFile") - code  # file-backed pages first touched by the run
if settings["engine"] == "model":
    result["batch"] = batch_bytes
print(json.dumps(result))
"""

TUNED = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "262144"}


def chunk_shape(spec: str, rows: int, side: int, flag: str) -> list[int] | None:
    """``IxJxK`` (clamped to the volume), ``slice`` (whole planes) or ``grid`` (None)."""
    if spec == "grid":
        return None
    if spec == "slice":
        return [1, side, side]
    try:
        sizes = [int(part) for part in spec.lower().split("x")]
    except ValueError:
        sizes = []
    if len(sizes) != 3 or min(sizes) < 1:
        raise SystemExit(f"{flag} must be IxJxK, 'slice' or 'grid', got {spec!r}")
    return [min(sizes[0], rows), min(sizes[1], side), min(sizes[2], side)]


def chunk_label(chunks: list[int] | None) -> str:
    if chunks is None:
        return "grid step"
    if len(set(chunks)) == 1:
        return f"{chunks[0]}³"
    return "×".join(str(c) for c in chunks)


def make_volume(path: str, rows: int, side: int, chunks: list[int] | None = None) -> None:
    """A ``1 × rows × side²`` float32 zarr (64³ chunks by default), written band by band."""
    import numpy as np
    import zarr

    chunks = chunks or [64, 64, 64]
    array = zarr.create_array(
        path, shape=(1, rows, side, side), chunks=(1, *chunks), dtype="float32"
    )
    generator = np.random.default_rng(0)
    band = max(64, chunks[0])
    for start in range(0, rows, band):
        stop = min(start + band, rows)
        array[:, start:stop] = generator.random((1, stop - start, side, side), np.float32)


def run(settings: dict, environment: dict[str, str] | None = None) -> dict:
    """One measurement in a fresh child process."""
    if "output" in settings:
        shutil.rmtree(settings["output"], ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(settings)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(environment or {})},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def above(measured: dict) -> int:
    return int(measured["peak"] - measured["baseline"])


def measure_memory(args: argparse.Namespace, folder: str) -> None:
    measured = run(
        {"engine": "model", "threads": os.cpu_count(), "model": args.model, "patch": args.patch}
    )
    with_batch = above(measured)
    model = with_batch - measured["batch"]
    print(
        f"patch {tuple(args.patch)}, overlap {args.overlap}, model {args.model}, batch 2,"
        f" {os.cpu_count()} cores; slabs = peak RSS above the imports ÷ slab; model's working"
        f" set (peak above the imports running it on one batch, less the batch):"
        f" {model / 2**20:.1f} MiB ({with_batch / 2**20:.1f} MiB with its input batch)\n"
    )
    print(
        "| volume | input chunks | output chunks | slab MiB | seconds | above imports MiB |"
        " **slabs** |"
        " slabs − model | slabs − model with its batch |"
        " fixed buffers MiB (above 2 slabs + model) | of which code pages MiB |"
        " slabs, allocator untouched | slabs, `MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=262144` |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for side, input_spec in itertools.product(args.sides, args.input_chunks):
        source = os.path.join(folder, f"in{side}.zarr")
        input_chunks = chunk_shape(input_spec, args.rows, side, "--input-chunks") or [64, 64, 64]
        make_volume(source, args.rows, side, input_chunks)
        slab = args.patch[0] * side * side * 4
        for output_spec in args.output_chunks:
            chunks = chunk_shape(output_spec, args.rows, side, "--output-chunks")
            settings = {
                "engine": "local",
                "input": source,
                "output": os.path.join(folder, "out.zarr"),
                "threads": os.cpu_count(),
                "model": args.model,
                "patch": args.patch,
                "overlap": args.overlap,
                "chunks": chunks,
            }
            default = run(settings)
            if args.quick:
                untouched = tuned = "–"
            else:
                untouched = f"{above(run({**settings, 'tune': False})) / slab:.2f}"
                tuned = f"{above(run(settings, TUNED)) / slab:.2f}"
            peak = above(default)
            print(
                f"| 1×{args.rows}×{side}² | {chunk_label(input_chunks)} | {chunk_label(chunks)} |"
                f" {slab / 2**20:.0f} | {default['seconds']:.1f} | {peak / 2**20:.0f} |"
                f" **{peak / slab:.2f}** | {(peak - model) / slab:.2f} |"
                f" {(peak - with_batch) / slab:.2f} |"
                f" {(peak - model - 2 * slab) / 2**20:.0f} | {default['code'] / 2**20:.0f} |"
                f" {untouched} | {tuned} |",
                flush=True,
            )
        shutil.rmtree(source, ignore_errors=True)


def measure_dask(args: argparse.Namespace, folder: str) -> None:
    small = os.path.join(folder, "small.zarr")
    side = min(args.sides) // 2
    make_volume(small, args.dask_rows, side)
    times = {}
    for workers in (1, 2):
        settings = {
            "engine": "dask",
            "input": small,
            "output": os.path.join(folder, f"d{workers}.zarr"),
            "workers": workers,
            "patch": args.patch,
            "overlap": args.overlap,
        }
        times[workers] = run(settings)["seconds"]
    print(
        f"\ndask LocalCluster on 1×{args.dask_rows}×{side}²: 1 worker {times[1]:.1f} s,"
        f" 2 workers {times[2]:.1f} s, speed-up {times[1] / times[2]:.2f}×"
        f" (cluster start-up included; {os.cpu_count()} cores)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--sides", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 128, 128])
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--model", choices=["identity", "demo"], default="identity")
    parser.add_argument("--dask", action="store_true")
    parser.add_argument("--quick", action="store_true", help="skip the two allocator columns")
    parser.add_argument("--dask-rows", type=int, default=192)
    parser.add_argument(
        "--input-chunks", nargs="+", default=["64x64x64"], help="input chunkings (IxJxK, slice)"
    )
    parser.add_argument(
        "--output-chunks",
        nargs="+",
        default=["grid", "64x64x64"],
        help="output chunkings (grid, IxJxK, slice)",
    )
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    try:
        measure_memory(args, folder)
        if args.dask:
            measure_dask(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
