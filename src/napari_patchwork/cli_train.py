"""``napari-patchwork train IMAGE ANNOTATIONS [IMAGE ANNOTATIONS ...] --output MODEL.pt2``.

Trains a 3D network on sparse annotations (0 = not annotated, v > 0 = class v) with the same
core as the napari widget, showing loss and patches/s; the saved model carries the class
values, so ``napari-patchwork infer IMAGE --model MODEL.pt2 --output SEG.nii.gz --labels``
writes the annotation values back.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from napari_patchwork.core.allocator import keep_freed_memory
from napari_patchwork.core.training import (
    NETWORKS,
    Trainer,
    TrainingConfig,
    TrainingStep,
    loss_text,
)
from napari_patchwork.core.wording import reworded

EXIT_INTERRUPTED = 130
DEFAULT_SECONDS = 60.0

#: TrainingConfig field -> the command-line flag users type.
FLAGS = {
    "patch_size": "--patch-size",
    "batch_size": "--batch-size",
    "seconds": "--seconds",
    "iterations": "--iterations",
    "network": "--network",
    "init": "--init",
    "weights": "--weights",
    "width": "--width",
    "learning_rate": "--learning-rate",
    "seed": "--seed",
    "device": "--device",
}


def add_train_parser(subparsers: Any, **parser_options: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers`` (from ``add_subparsers``); return it.

    ``parser_options`` go to ``add_parser`` (e.g. ``add_help=False``).
    """
    parser = subparsers.add_parser(
        "train",
        help="train a model on painted annotations (0 = not annotated, v > 0 = class v)",
        description="Train a 3D network on sparse annotations (0 = not annotated, v > 0 ="
        " class v); the model file carries the class values for infer --labels.",
        **parser_options,
    )
    parser.add_argument(
        "pairs", nargs="+", metavar="IMAGE ANNOTATIONS", help="NIfTI image and annotation files"
    )
    add = parser.add_argument
    add("--output", "-o", type=Path, required=True, help="model file (.pt2)")
    add(
        "--seconds",
        type=float,
        default=None,
        help=f"time budget in seconds (default: {DEFAULT_SECONDS:g} unless --iterations)",
    )
    add("--iterations", type=int, default=None, help="optimisation steps instead of a time")
    add(
        "--init",
        default="scratch",
        help="scratch, demo, a trained model file or module:factory (default: scratch)",
    )
    add(
        "--network",
        choices=NETWORKS,
        default="filters",
        help="what --init scratch builds: filters (fixed multiscale filters + a learned"
        " per-voxel classifier; learns from few strokes) or unet (default: filters)",
    )
    add("--weights", default=None, help="state dict for a module:factory --init")
    add("--patch-size", type=int, default=32, metavar="P", help="even, >= 4 (default: 32)")
    add("--batch-size", type=int, default=4, help="patches per step (default: 4)")
    add(
        "--width",
        type=int,
        default=None,
        help="channels of a new network (default: 32 for filters, 8 for unet)",
    )
    add("--learning-rate", type=float, default=3e-3, help="Adam's (default: 0.003)")
    add("--seed", type=int, default=0, help="for a reproducible run (default: 0)")
    add("--device", default=None, help="cpu, cuda… (default: cuda if present)")
    add("--no-augmentation", action="store_true", help="train without augmentation")
    add(
        "--no-harmonise",
        action="store_true",
        help="do not record the first image's intensity field and contrast (other volumes are"
        " then segmented as they are, not mapped onto the first image's intensities)",
    )
    add("--overwrite", action="store_true", help="replace an existing --output")
    add("--quiet", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The :class:`TrainingConfig` of parsed ``train`` arguments (errors name the flags)."""
    seconds = args.seconds
    if seconds is None and args.iterations is None:
        seconds = DEFAULT_SECONDS
    settings = {
        "patch_size": args.patch_size,
        "batch_size": args.batch_size,
        "seconds": seconds,
        "iterations": args.iterations,
        "network": args.network,
        "init": args.init,
        "weights": args.weights,
        "width": args.width,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "device": args.device,
        "harmonise": not args.no_harmonise,
    }
    try:
        config = TrainingConfig(**settings)
    except (TypeError, ValueError) as error:
        raise reworded(error, FLAGS) from None
    if args.no_augmentation:
        config = dataclasses.replace(config, augmentation=None)
    return config


def _pairs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    files = [Path(p) for p in args.pairs]
    if len(files) % 2:
        raise ValueError(
            f"IMAGE ANNOTATIONS come in pairs, got {len(files)} files: {[str(f) for f in files]}"
        )
    for number, path in enumerate(files):
        role = "ANNOTATIONS" if number % 2 else "IMAGE"
        if not path.is_file():
            raise FileNotFoundError(f"{role} file does not exist: '{path}'")
    return list(zip(files[::2], files[1::2]))


def _check_output(output: Path, overwrite: bool) -> None:
    if output.is_dir():
        raise ValueError(f"--output is a directory: '{output}'")
    if not output.parent.is_dir():
        raise ValueError(f"--output folder does not exist: '{output.parent}'")
    if output.exists() and not overwrite:
        raise ValueError(f"--output exists: '{output}' (pass --overwrite to replace it)")


def _pairs_in_memory(pairs: list[tuple[Path, Path]]) -> list[tuple[Any, Any]]:
    from napari_patchwork.core.data.image import LabelMap, ScalarImage

    loaded = []
    for image, labels in pairs:
        try:
            loaded.append((ScalarImage(image), LabelMap(labels)))
        except (ValueError, TypeError, OSError) as error:
            raise ValueError(f"cannot read '{image}' / '{labels}': {error}") from error
    return loaded


class _Progress:
    """A tqdm bar over seconds or iterations, showing loss, patches/s and waiting time."""

    def __init__(self, config: TrainingConfig, quiet: bool) -> None:
        self.bar: Any = None
        self.by_time = config.iterations is None
        total = config.seconds if self.by_time else config.iterations
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is optional
            return
        unit = "s" if self.by_time else "it"
        fmt = "{l_bar}{bar}| {n:.0f}/{total:.0f} " + unit + " [{elapsed}<{remaining}{postfix}]"
        self.bar = tqdm(total=total, unit=unit, desc="training", bar_format=fmt, file=sys.stderr)

    def update(self, step: TrainingStep) -> None:
        if self.bar is None:
            return
        position = min(step.elapsed, self.bar.total) if self.by_time else step.iteration
        self.bar.update(position - self.bar.n)
        self.bar.set_postfix(
            loss=loss_text(step.loss),
            patches_s=f"{step.patches_per_second:.1f}",
            wait=f"{100 * step.wait_fraction:.0f}%",
            refresh=False,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_train(args: argparse.Namespace) -> int:
    """Run ``train`` from parsed arguments; returns the exit status (errors are raised).

    Ctrl-C stops training and still saves the model trained so far (exit status 130).
    """
    config = config_from_args(args)
    pairs = _pairs(args)
    _check_output(args.output, args.overwrite)
    keep_freed_memory()  # each step's activations not faulted in afresh (see core.allocator)
    try:
        trainer = Trainer(_pairs_in_memory(pairs), config)
    except (ValueError, TypeError) as error:  # e.g. a --patch-size larger than the image
        raise reworded(error, FLAGS) from None
    progress = _Progress(config, args.quiet)
    interrupted = False
    try:
        for step in trainer.run():
            progress.update(step)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    if trainer.iteration == 0:
        raise ValueError("training was stopped before its first step; no model was written")
    path = trainer.save(args.output)
    recent = trainer.losses[-10:]
    print(
        f"wrote {path}: classes {trainer.class_values}, {trainer.iteration} iterations in"
        f" {trainer.seconds:.0f} s, loss {loss_text(sum(recent) / len(recent))}"
        + (" (interrupted)" if interrupted else ""),
        file=sys.stderr,
    )
    print(
        f"segment with: napari-patchwork infer {pairs[0][0]} --model {path}"
        " --output SEG.nii.gz --labels",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED if interrupted else 0
