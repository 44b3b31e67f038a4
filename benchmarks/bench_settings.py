"""Tiled inference over many settings: napari-patchwork vs MONAI vs TorchIO, one command.

``bench_inference.py`` measures one grid (patch 64, overlap 32, batch 4) closely. A user
comparing us with the peers tries their own settings; this script runs the same model over a
grid of them (volume shape, patch, overlap, batch, blending, input dtype, channels), each
method round-robin on the same volume, and prints one row per setting, the ratios and a
summary: in how many settings we are the fastest, and the closest call.

    python benchmarks/bench_settings.py [--repeats 6] [--models identity "small CNN"] [--quick]

MONAI and TorchIO come with ``pip install -e ".[bench]"``; a peer that is not installed is
left out (and said so). TorchIO has no gaussian window: its Hann stands in, as in
``bench_inference.py``, so its output differs there; the script times, it does not compare
outputs (``tests/core/test_torchio_parity.py`` does, for ours and TorchIO's). Times are
medians of ``--repeats`` round-robin runs after a warm-up; this VM's speed drifts, so only
the ratios within a row mean much.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

import napari_patchwork as pw

warnings.filterwarnings("ignore")

#: Blending per name: (ours, MONAI's mode, TorchIO's overlap_mode).
BLENDINGS = {
    "gaussian": ("gaussian", "gaussian", "hann"),
    "average": ("average", "constant", "average"),
}


@dataclass(frozen=True)
class Setting:
    """One tiled-inference setting a user might try."""

    shape: tuple[int, int, int]
    patch: int
    overlap_fraction: float
    batch: int
    blending: str
    dtype: torch.dtype = torch.float32
    channels: int = 1

    @property
    def overlap(self) -> int:
        """The overlap in voxels (even, as every tool here accepts)."""
        return int(self.patch * self.overlap_fraction) // 2 * 2

    def cells(self) -> list[str]:
        return [
            "×".join(map(str, self.shape)),
            str(self.patch),
            str(self.overlap),
            str(self.batch),
            self.blending,
            str(self.dtype).removeprefix("torch."),
            str(self.channels),
        ]


def settings_grid(quick: bool) -> list[Setting]:
    """Shapes × patch × overlap × batch × blending, plus input dtypes, channels, a large batch."""
    if quick:  # CI: two small settings, every method
        return [
            Setting((32, 32, 32), 16, 0.5, 4, "gaussian"),
            Setting((24, 40, 32), 16, 0.25, 1, "average", torch.int16, 2),
        ]
    grid = []
    for shape in [(128, 128, 128), (96, 160, 200), (40, 300, 300), (64, 64, 64)]:
        for patch in (32, 64, 96):
            if patch > min(shape):
                continue
            for fraction in (0.0, 0.25, 0.5):
                for batch in (1, 4):
                    for blending in BLENDINGS:
                        grid.append(Setting(shape, patch, fraction, batch, blending))
    cube = (128, 128, 128)
    grid += [
        Setting(cube, 64, 0.5, 4, "gaussian", torch.int16),
        Setting(cube, 64, 0.5, 4, "gaussian", torch.uint8),
        Setting(cube, 64, 0.5, 4, "gaussian", torch.float32, 3),
        Setting(cube, 64, 0.5, 8, "gaussian"),
    ]
    return grid


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def small_cnn(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(channels, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(8, 2, 1),
    ).eval()


def methods(setting: Setting, model_name: str) -> dict[str, Callable[[], object]]:
    """The competing runs on one volume and model (peers only where installed)."""
    generator = torch.Generator().manual_seed(0)
    volume = torch.rand(setting.channels, *setting.shape, generator=generator)
    if not setting.dtype.is_floating_point:
        volume = (volume * 200).to(setting.dtype)
    model = identity if model_name == "identity" else small_cnn(setting.channels)
    ours_mode, monai_mode, torchio_mode = BLENDINGS[setting.blending]
    patch, overlap, batch = setting.patch, setting.overlap, setting.batch
    runs: dict[str, Callable[[], object]] = {
        "napari-patchwork": lambda: pw.infer(
            model,
            volume,
            patch_size=patch,
            patch_overlap=overlap,
            overlap_mode=ours_mode,
            batch_size=batch,
            device="cpu",
        )
    }
    if importlib.util.find_spec("monai") is not None:
        from monai.inferers import sliding_window_inference

        def monai() -> object:  # MONAI takes a float batch: the conversion is part of its run
            return sliding_window_inference(
                volume[None].float(),
                (patch,) * 3,
                batch,
                model,
                overlap=overlap / patch,
                mode=monai_mode,
                sigma_scale=0.125,
            )[0]

        runs["MONAI"] = monai
    if importlib.util.find_spec("torchio") is not None:
        import torchio as tio

        def torchio() -> object:
            subject = tio.Subject(image=tio.ScalarImage(tensor=volume))
            sampler = tio.GridSampler(subject, patch, overlap)
            aggregator = tio.inference.GridAggregator(sampler, overlap_mode=torchio_mode)
            for patches in tio.SubjectsLoader(sampler, batch_size=batch):
                output = model(patches["image"][tio.DATA].float())
                aggregator.add_batch(output.float(), patches[tio.LOCATION])
            return aggregator.get_output_tensor()

        runs["TorchIO"] = torchio
    return runs


def timings(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per method, round-robin, each round in the next order of the methods.

    Every order in turn, not a rotation: rotating keeps each method after the same one (ours
    always after TorchIO, whose run leaves the caches and the OpenMP threads colder).
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    orders = list(itertools.permutations(runs))
    with torch.inference_mode():
        for run in runs.values():
            run()  # warm-up
        for round_ in range(repeats):
            for name in orders[round_ % len(orders)]:
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="rounds (6 orders of 3 methods)")
    parser.add_argument("--models", nargs="+", default=["identity"])
    parser.add_argument("--quick", action="store_true", help="two small settings (CI)")
    args = parser.parse_args()
    peers = [name for name in ("monai", "torchio") if importlib.util.find_spec(name) is None]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu")
    if peers:
        print(f"not installed, left out: {', '.join(peers)} (pip install -e '.[bench]')")
    print(
        "\n| model | volume | patch | overlap | batch | blending | dtype | channels"
        " | ours ms | MONAI ms | TorchIO ms | ours / MONAI | ours / TorchIO |"
    )
    print("|---" * 13 + "|")
    worst: dict[str, tuple[float, str]] = {}
    wins: dict[str, int] = {}
    rows = 0
    for model_name in args.models:
        for setting in settings_grid(args.quick):
            seconds = timings(methods(setting, model_name), args.repeats)
            ours = seconds["napari-patchwork"]
            cells = [model_name, *setting.cells(), f"{1e3 * ours:.2f}"]
            ratios = []
            for peer in ("MONAI", "TorchIO"):
                cells.append(f"{1e3 * seconds[peer]:.2f}" if peer in seconds else "—")
                if peer in seconds:
                    ratio = ours / seconds[peer]
                    ratios.append(f"{ratio:.2f}")
                    wins[peer] = wins.get(peer, 0) + (ratio < 1)
                    if ratio > worst.get(peer, (0.0, ""))[0]:
                        worst[peer] = (ratio, f"{model_name}, " + ", ".join(setting.cells()))
                else:
                    ratios.append("—")
            print("| " + " | ".join(cells + ratios) + " |", flush=True)
            rows += 1
    print()
    for peer, (ratio, where) in worst.items():
        print(
            f"faster than {peer} in {wins[peer]} of {rows} settings;"
            f" closest: ours / {peer} = {ratio:.2f} ({where})"
        )


if __name__ == "__main__":
    main()
