"""Peak memory of a streamed zarr-to-zarr run on a 1 GiB volume, measured in a child process.

The child's peak RSS above its RSS after the imports must stay within 2.2 slabs (a slab is
one patch height of rows of the full 1024² cross-section in float32, 256 MiB here: the input
slab, and the output rows of this one-channel model) plus the working set of the model and
of zarr (one batch in and out, the blending window, zarr's chunks in flight).

The peak is the child's ``VmHWM`` (``/proc/self/status``), not ``ru_maxrss``: Linux keeps
``ru_maxrss`` across ``exec``, so a child of a large pytest process would inherit its peak.
The child runs with glibc's defaults, as users do (no ``MALLOC_*`` variables): the streamed
run sets glibc's mmap threshold itself (``streaming.return_freed_memory``), without which
zarr's decoding threads and the model's freed blocks would hold 0.3 to 0.5 slab more.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

ROWS, SIDE, PATCH, OVERLAP, BATCH = 256, 1024, (64, 128, 128), 16, 2

CHILD = r"""
import json, sys

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

import torch
import zarr
import napari_patchwork as pw

source, output, chunks, patch, overlap, batch = sys.argv[1:7]
torch.set_num_threads(1)
array = zarr.open_array(source, mode="r")
baseline = status("VmRSS")
result = pw.infer(
    lambda x: x * 2.0,  # one channel in, one out
    array,
    patch_size=json.loads(patch),
    patch_overlap=int(overlap),
    batch_size=int(batch),
    output=output,
    output_chunks=json.loads(chunks),
)
print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "chunks": result.chunks}))
"""


@pytest.fixture(scope="module")
def gib_volume(tmp_path_factory):
    """A 1×256×1024×1024 float32 zarr (1 GiB), 64³ chunks, uncompressed (quick to write)."""
    path = tmp_path_factory.mktemp("large") / "in.zarr"
    array = zarr.create_array(
        path, shape=(1, ROWS, SIDE, SIDE), chunks=(1, 64, 64, 64), dtype="float32", compressors=None
    )
    plane = np.linspace(0, 1, SIDE * SIDE, dtype=np.float32).reshape(SIDE, SIDE)
    for start in range(0, ROWS, 64):
        array[0, start : start + 64] = np.stack([plane * ((start + i) % 7) for i in range(64)])
    return path


def run_child(source, output, chunks):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    arguments = [str(source), str(output), json.dumps(chunks), json.dumps(PATCH)]
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, *arguments, str(OVERLAP), str(BATCH)],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "chunks",
    [None, pytest.param([64, 64, 64], marks=pytest.mark.slow)],
    ids=["default-chunks", "64-cubed"],
)
def test_peak_memory_is_within_2_2_slabs(gib_volume, tmp_path, chunks):
    measured = run_child(gib_volume, tmp_path / "out.zarr", chunks)
    slab = PATCH[0] * SIDE * SIDE * 4  # 256 MiB; the volume is 4 slabs in, 4 slabs out
    patch_bytes = int(np.prod(PATCH)) * 4
    zarr_in_flight = 10 * 2 * 64**3 * 4  # async.concurrency chunks, encoded and decoded
    working_set = 2 * BATCH * patch_bytes + patch_bytes + zarr_in_flight
    above = measured["peak"] - measured["baseline"]
    print(f"{chunks}: {above / 2**20:.0f} MiB above the imports = {above / slab:.2f} slabs")
    assert above <= 2.2 * slab + working_set, f"{above / slab:.2f} slabs above the imports"
    written = zarr.open_array(tmp_path / "out.zarr")
    assert written.shape == (1, ROWS, SIDE, SIDE)
    if chunks is None:  # rows on the grid step (48): every write covers whole chunks
        assert tuple(measured["chunks"]) == (1, 48, 64, 64)
    rows = (0, slice(100, 102), slice(None), slice(500, 700))
    expected = 2 * zarr.open_array(gib_volume)[rows]
    assert np.allclose(written[rows], expected, rtol=1e-5, atol=1e-6)
