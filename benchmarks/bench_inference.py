"""Tiled inference: napari-patchwork vs MONAI sliding_window_inference vs TorchIO, same process.

Same volume, model, patch grid (patch 64, overlap 32: 27 patches at 128³, 343 at 256³) and
batch size for everyone. Also times the model alone on the same batches (gathered beforehand)
and a plain copy-add of every patch (the memory-bound floor). Prints a markdown table of medians,
ratios ours/peer, overhead over the model-only time and peak resident memory above baseline.

    python benchmarks/bench_inference.py [--sizes 128 256] [--repeats 5] [--device cpu|cuda]
                                         [--blending gaussian|average]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable

import torch

import napari_patchwork as pw

warnings.filterwarnings("ignore")
PATCH, OVERLAP, BATCH = 64, 32, 4
#: Blending per ``--blending``: (ours, MONAI's mode, TorchIO's overlap_mode). TorchIO has no
#: gaussian window: its Hann stands in.
BLENDINGS = {
    "gaussian": ("gaussian", "gaussian", "hann"),
    "average": ("average", "constant", "average"),
}
BLENDING = "gaussian"


class PeakMemory:
    """Peak resident memory (CPU, sampled from /proc) or CUDA allocator peak, above the start."""

    def __init__(self, device: str) -> None:
        self.device, self.peak = device, 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base, self.running = self._rss(), True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.0005)

    def __exit__(self, *_: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
            return
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss() - self.base)


def small_cnn(device: str) -> torch.nn.Module:
    return (
        torch.nn.Sequential(
            torch.nn.Conv3d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv3d(8, 2, 3, padding=1),
        )
        .to(device)
        .eval()
    )


def unet(device: str) -> torch.nn.Module:
    from napari_patchwork.models import TinyUNet3D

    return TinyUNet3D(in_channels=1, out_channels=3, width=32).to(device).eval()


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def run_ours(model, volume, device, amp=False):
    return pw.infer(
        model,
        volume,
        patch_size=PATCH,
        patch_overlap=OVERLAP,
        overlap_mode=BLENDINGS[BLENDING][0],
        batch_size=BATCH,
        device=device,
        amp=amp,
    )


def run_monai(model, volume, device, amp=False):
    from monai.inferers import sliding_window_inference

    with torch.autocast(torch.device(device).type, enabled=amp):
        return sliding_window_inference(
            volume[None].to(device),
            (PATCH,) * 3,
            BATCH,
            model,
            overlap=OVERLAP / PATCH,
            mode=BLENDINGS[BLENDING][1],
            sigma_scale=0.125,
            device=device,
            sw_device=device,
        )[0]


def run_torchio(model, volume, device, amp=False):
    import torchio as tio

    subject = tio.Subject(t1=tio.ScalarImage(tensor=volume))
    sampler = tio.GridSampler(subject, PATCH, OVERLAP)
    aggregator = tio.inference.GridAggregator(sampler, overlap_mode=BLENDINGS[BLENDING][2])
    with torch.autocast(torch.device(device).type, enabled=amp):
        for batch in tio.SubjectsLoader(sampler, batch_size=BATCH):
            output = model(batch["t1"][tio.DATA].to(device))
            aggregator.add_batch(output.float(), batch[tio.LOCATION])
    return aggregator.get_output_tensor()


def model_only(model, batches, device, amp=False):
    with torch.autocast(torch.device(device).type, enabled=amp):
        for batch in batches:
            model(batch)
    if device == "cuda":
        torch.cuda.synchronize()


def copy_add(volume: torch.Tensor, locations, output: torch.Tensor) -> torch.Tensor:
    """The floor: zero the output, then add a copy of every patch into it.

    The output is allocated once, before the timing: a fresh 27 MiB ``zeros_like`` faulted in
    all its 6880 pages in every run at 192³ when the peers' runs had just freed theirs (17 ms
    instead of 11), which flattered every ratio to the floor.
    """
    output.zero_()
    for location in locations:
        slices = (slice(None), *location.to_slices())
        output[slices] += volume[slices].clone()
    return output


def methods(size: int, model_name: str, device: str, amp: bool) -> dict[str, Callable[[], object]]:
    """The competing runs, as zero-argument callables on one volume and model."""
    volume = torch.rand(1, size, size, size, generator=torch.Generator().manual_seed(0))
    model = {"identity": lambda d: identity, "small CNN": small_cnn, "UNet": unet}[model_name](
        device
    )
    plan = pw.GridPlan(volume.shape[1:], (PATCH,) * 3, (OVERLAP,) * 3)
    locations = plan.locations(0, len(plan))
    gatherer = pw.PatchGatherer(volume)
    batches = [
        gatherer.gather(locations[i : i + BATCH]).to(device)
        for i in range(0, len(locations), BATCH)
    ]
    on_device = volume.to(device)
    runs = {
        "napari-patchwork": lambda: run_ours(model, on_device, device, amp),
        "MONAI 1.6": lambda: run_monai(model, on_device, device, amp),
    }
    if device == "cpu":
        runs["TorchIO 1.2.1"] = lambda: run_torchio(model, volume, device, amp)
    runs["model only"] = lambda: model_only(model, batches, device, amp)
    if device == "cpu":
        floor_output = torch.empty_like(volume)
        runs["copy-add floor"] = lambda: copy_add(volume, locations, floor_output)
    return runs


def timings(runs: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, float]:
    """Median seconds per method, measured round-robin so machine drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            with torch.inference_mode():
                run()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peaks(runs: dict[str, Callable[[], object]], device: str) -> dict[str, int]:
    """Peak memory above the baseline per method (one warm run each)."""
    result = {}
    for name, run in runs.items():
        run()
        with PeakMemory(device) as memory, torch.inference_mode():
            run()
        result[name] = memory.peak
    return result


def memory_in_child(size: int, model_name: str, device: str, amp: bool) -> dict[str, int]:
    """Peaks measured in a child process where freed large blocks go back to the OS."""
    if device == "cuda":
        return peaks(methods(size, model_name, device, amp), device)
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    command = [
        sys.executable,
        __file__,
        "--memory-child",
        str(size),
        model_name,
        device,
        str(int(amp)),
        BLENDING,
    ]
    output = subprocess.run(
        command, env=environment, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def bench(size: int, model_name: str, device: str, repeats: int, amp: bool) -> list[tuple]:
    seconds = timings(methods(size, model_name, device, amp), repeats, device)
    memory = memory_in_child(size, model_name, device, amp)
    ours, model_time = seconds["napari-patchwork"], seconds["model only"]
    table = []
    for name, value in seconds.items():
        ratio = f"{ours / value:.2f}"
        overhead = ""
        if model_name != "identity" and name not in ("model only", "copy-add floor"):
            overhead = f"{value / model_time:.3f}×"
        elif model_name == "identity" and device == "cpu" and name != "copy-add floor":
            overhead = f"{value / seconds['copy-add floor']:.2f}× floor"
        label = (
            model_name
            + (" amp" if amp else "")
            + ("" if BLENDING == "gaussian" else f", {BLENDING}")
        )
        table.append(
            (
                f"{size}³",
                label,
                name,
                f"{value:.4f}",
                ratio,
                overhead,
                f"{memory[name] / 2**20:.0f}",
            )
        )
    channels = {"identity": 1, "small CNN": 2, "UNet": 3}[model_name]
    voxels = size**3
    # The input is resident before the run (part of the baseline) and the model's own working
    # memory is the model-only peak; ours on top: output, one weight channel, two batches, +10%.
    ours = voxels * 4 * channels + voxels * 4 + 2 * BATCH * PATCH**3 * 4 * (1 + channels)
    budget = ours * 1.1 + memory["model only"]
    label = "budget: model-only + (output + weight channel + 2 batches) x 1.1"
    table.append((f"{size}³", model_name, label, "", "", "", f"{budget / 2**20:.0f}"))
    return table


def main() -> None:
    global BLENDING
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        size, model_name, device, amp, BLENDING = sys.argv[2:7]
        print(json.dumps(peaks(methods(int(size), model_name, device, amp == "1"), device)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--models", nargs="+", default=["identity", "small CNN"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="also run with autocast")
    parser.add_argument(
        "--blending", choices=sorted(BLENDINGS), default="gaussian", help="overlap blending"
    )
    args = parser.parse_args()
    BLENDING = args.blending
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"patch {PATCH}, overlap {OVERLAP}, batch {BATCH}, blending {BLENDING}\n"
    )
    print(
        "| volume | model | method | median s | ours / method"
        " | × model-only (or × floor) | peak MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for model_name in args.models:
            for amp in [False, True] if args.amp and model_name != "identity" else [False]:
                repeats = args.repeats if size <= 128 else max(1, args.repeats // 2)
                if model_name == "identity":  # milliseconds: many more runs for a stable median
                    repeats *= 5
                for row in bench(size, model_name, args.device, repeats, amp):
                    print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
