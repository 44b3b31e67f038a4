"""The model itself on the CPU: eager vs channels-last-3d vs torch.compile vs bf16 autocast.

Same batches (batch 4, patch 64³ by default) through the demo U-Net architecture
(``TinyUNet3D``, widths 8 and 32) and, when installed, MONAI's ``UNet``; median of round-robin
repeats after a warm-up (compilation is timed separately and reported). Prints the speedup of
each variant over eager float32, and the largest output difference (bf16 is not exact).

    python benchmarks/bench_model_cpu.py [--patch 64] [--batch 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from napari_patchwork.models import TinyUNet3D

warnings.filterwarnings("ignore")


def models() -> dict[str, torch.nn.Module]:
    found: dict[str, torch.nn.Module] = {
        "TinyUNet3D width 8 (demo)": TinyUNet3D(1, 3, width=8),
        "TinyUNet3D width 32": TinyUNet3D(1, 3, width=32),
    }
    try:
        from monai.networks.nets import UNet
    except ImportError:
        return found
    found["MONAI UNet (16-32-64-128)"] = UNet(
        3, 1, 3, (16, 32, 64, 128), (2, 2, 2), num_res_units=1
    )
    return found


def variants(model: torch.nn.Module, batch: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument runs of ``model`` on ``batch``, one per way of running it."""
    model = model.eval()
    last = model.to(memory_format=torch.channels_last_3d)
    batch_last = batch.contiguous(memory_format=torch.channels_last_3d)
    eager = model

    def plain() -> torch.Tensor:
        return eager(batch)

    def channels_last() -> torch.Tensor:
        return last(batch_last)

    def bf16() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return eager(batch).float()

    runs = {"eager fp32": plain, "channels-last-3d": channels_last, "bf16 autocast": bf16}
    try:
        compiled = torch.compile(eager, dynamic=False)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(batch)
        print(f"  torch.compile: first call (compilation) {time.perf_counter() - start:.1f} s")
        runs["torch.compile"] = lambda: compiled(batch)
    except Exception as error:  # no compiler toolchain, unsupported op, …
        print(f"  torch.compile unavailable: {type(error).__name__}: {error}"[:200])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = torch.rand(args.batch, 1, args.patch, args.patch, args.patch)
    rows = []
    for name, model in models().items():
        print(name)
        runs = variants(model, batch)
        with torch.inference_mode():
            reference = runs["eager fp32"]()
            errors = {key: float((run() - reference).abs().max()) for key, run in runs.items()}
            times: dict[str, list[float]] = {key: [] for key in runs}
            for _ in range(args.repeats):
                for key, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[key].append(time.perf_counter() - start)
        medians = {key: statistics.median(values) for key, values in times.items()}
        for key, value in medians.items():
            speedup = medians["eager fp32"] / value
            rows.append((name, key, f"{value:.3f}", f"{speedup:.2f}×", f"{errors[key]:.1e}"))
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} × "
        f"{args.patch}³, median of {args.repeats}\n"
    )
    print("| model | variant | median s | speedup over eager fp32 | max abs difference |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
