"""The CUDA table of issue 16, in one run: tiled inference and the training loop on one GPU.

Rows (same model, grid and batch size for every method; medians of round-robin repeats):

- napari-patchwork ``infer`` and MONAI ``sliding_window_inference``, AMP off and on;
- the model alone on the same pre-gathered batches (already on the device): the floor;
- the share of the time spent outside the model, ``1 - model only / total``;
- prefetch off: the same grid run as a plain loop (gather on the CPU, pageable copy, model,
  accumulate), what our pinned double-buffered prefetch thread replaces;
- aggregation on the CPU instead of the GPU (``aggregate_device="cpu"``);
- the training loop: ``Queue`` + ``LabelSampler`` + ``SubjectsLoader`` feeding a U-Net step
  (forward, loss, backward, optimiser) and a no-op step (what the loaders alone deliver).

``benchmarks/gpu_check.sh`` runs it with the GPU settings (256³, under 5 minutes on one GPU);
``--quick`` runs a CI-size version on any device (the test suite runs it on the CPU)::

    python benchmarks/bench_gpu.py [--device cuda] [--size 256] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

import napari_patchwork as pw
from napari_patchwork.models import TinyUNet3D

warnings.filterwarnings("ignore")


@dataclass(frozen=True)
class Settings:
    """One run's sizes (GPU defaults; ``quick`` shrinks everything for CI)."""

    device: str
    size: int = 256
    patch: int = 96
    overlap: int = 32
    batch: int = 4
    width: int = 16
    repeats: int = 3
    subjects: int = 8
    train_patch: int = 64
    train_batch: int = 8
    train_steps: int = 30

    @classmethod
    def quick(cls, device: str) -> Settings:
        return cls(device, 48, 24, 8, 2, 4, 1, 2, 16, 2, 3)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(runs: dict[str, Callable[[], object]], settings: Settings) -> dict[str, float]:
    """Median wall time per run, round-robin after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(settings.repeats):
        for name, run in runs.items():
            synchronize(settings.device)
            start = time.perf_counter()
            with torch.inference_mode():
                run()
            synchronize(settings.device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def inference_runs(settings: Settings, amp: bool) -> dict[str, Callable[[], object]]:
    device, batch = settings.device, settings.batch
    patch, overlap = settings.patch, settings.overlap
    generator = torch.Generator().manual_seed(0)
    volume = torch.rand(1, *(settings.size,) * 3, generator=generator)
    model = TinyUNet3D(1, 3, width=settings.width).to(device).eval()
    plan = pw.GridPlan(volume.shape[1:], (patch,) * 3, (overlap,) * 3)
    locations = plan.locations(0, len(plan))
    gatherer = pw.PatchGatherer(volume)
    batches = [
        gatherer.gather(locations[i : i + batch]).to(device)
        for i in range(0, len(locations), batch)
    ]
    common = {"patch_size": patch, "patch_overlap": overlap, "batch_size": batch, "amp": amp}
    autocast = torch.autocast(torch.device(device).type, enabled=amp)

    def model_only() -> None:
        with autocast:
            for patches in batches:
                model(patches)

    def ours() -> object:
        return pw.infer(model, volume, device=device, **common)

    def ours_cpu_aggregation() -> object:
        return pw.infer(model, volume, device=device, aggregate_device="cpu", **common)

    def prefetch_off() -> object:  # gather, pageable copy, model, accumulate: one at a time
        window = pw.blending_window("gaussian", (patch,) * 3, device=device)
        output = torch.zeros(3, *volume.shape[1:], device=device)
        weight = torch.zeros(1, *volume.shape[1:], device=device)
        for start in range(0, len(locations), batch):
            chunk = locations[start : start + batch]
            with autocast:
                logits = model(gatherer.gather(chunk).to(device)).float()
            for location, logit in zip(chunk, logits):
                slices = (slice(None), *location.to_slices())
                output[slices] += logit * window
                weight[slices] += window
        return output / weight

    runs: dict[str, Callable[[], object]] = {
        "napari-patchwork": ours,
        "model only": model_only,
        "prefetch off (plain loop)": prefetch_off,
        "napari-patchwork, aggregation on CPU": ours_cpu_aggregation,
    }
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return runs
    on_device = volume.to(device)

    def monai() -> object:
        with autocast:
            return sliding_window_inference(
                on_device[None],
                (patch,) * 3,
                batch,
                model,
                overlap=overlap / patch,
                mode="gaussian",
                sigma_scale=0.125,
                device=device,
                sw_device=device,
            )

    runs["MONAI sliding_window_inference"] = monai
    return runs


def inference_rows(settings: Settings) -> list[tuple[str, ...]]:
    rows = []
    for amp in (False, True):
        seconds = median_seconds(inference_runs(settings, amp), settings)
        ours, floor = seconds["napari-patchwork"], seconds["model only"]
        for name, value in seconds.items():
            outside = "" if name == "model only" else f"{max(0.0, 1 - floor / value):.1%}"
            rows.append(
                (
                    f"inference {settings.size}³",
                    "on" if amp else "off",
                    name,
                    f"{value:.4f}",
                    f"{value / ours:.2f}",
                    outside,
                )
            )
    return rows


def training_subjects(settings: Settings) -> list[pw.Subject]:
    generator = torch.Generator().manual_seed(1)
    size = max(settings.train_patch * 2, settings.size // 2)
    subjects = []
    for _ in range(settings.subjects):
        image = torch.rand(1, size, size, size, generator=generator)
        labels = (image > 0.7).long() + (image > 0.9).long()
        subjects.append(pw.Subject(image=pw.ScalarImage(image), labels=pw.LabelMap(labels)))
    return subjects


def training_rows(settings: Settings) -> list[tuple[str, ...]]:
    """Patches per second of a training loop fed by the Queue, with a U-Net and a no-op step."""
    device, amp = settings.device, settings.device == "cuda"
    model = TinyUNet3D(1, 3, width=settings.width).to(device)
    optimiser = torch.optim.Adam(model.parameters(), 1e-3)
    scaler = torch.amp.GradScaler(enabled=amp)

    def unet_step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(torch.device(device).type, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()

    def no_op(images: torch.Tensor, labels: torch.Tensor) -> None:
        return None

    rows = []
    for name, step in (("U-Net step (AMP on GPU)", unet_step), ("no-op step (loaders)", no_op)):
        queue = pw.Queue(
            training_subjects(settings),
            pw.LabelSampler(None, settings.train_patch, label_name="labels"),
            max_length=4 * settings.train_batch,
            patches_per_volume=settings.train_batch,
            num_workers=2,
        )
        loader = pw.SubjectsLoader(queue, batch_size=settings.train_batch)
        batches = iter(loader)
        done, start = 0, 0.0
        for index in range(settings.train_steps + 1):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            images = batch.image.data.to(device, non_blocking=True)
            labels = batch.labels.data[:, 0].to(device, non_blocking=True)
            step(images, labels)
            if index == 0:  # the first batch fills the queue: not counted
                synchronize(device)
                start = time.perf_counter()
            else:
                done += images.shape[0]
        synchronize(device)
        rate = done / (time.perf_counter() - start)
        patch = settings.train_patch
        label = f"training, patch {patch}³"
        rows.append((label, "on" if amp else "off", name, "", "", f"{rate:.1f} patches/s"))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="CI-size run on any device")
    args = parser.parse_args(argv)
    settings = (
        Settings.quick(args.device)
        if args.quick
        else Settings(args.device, size=args.size, repeats=args.repeats)
    )
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, device {args.device} ({name}), volume {settings.size}³, "
        f"patch {settings.patch}, overlap {settings.overlap}, batch {settings.batch}, "
        f"U-Net width {settings.width}\n"
    )
    print("| work | AMP | method | median s | × ours | outside the model / rate |")
    print("|---|---|---|---|---|---|")
    for row in [*inference_rows(settings), *training_rows(settings)]:
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
