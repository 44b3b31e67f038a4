"""Command line: ``napari-patchwork infer INPUT --model SOURCE --output OUT.nii.gz``.

Consumes the same inference generator as the napari widget, with a progress bar. Outputs are
written atomically (temp file, then rename): an interrupted run leaves no partial file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .core.config import InferenceConfig
from .core.inference import TiledInference
from .core.types import OVERLAP_MODES

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130


def default_device() -> str:
    """``'cuda'`` if available, else ``'mps'`` if available, else ``'cpu'``."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _size(values: list[int]) -> int | tuple[int, ...]:
    if len(values) not in (1, 3):
        raise ValueError(f"give 1 or 3 sizes, got {values}")
    return values[0] if len(values) == 1 else tuple(values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-patchwork", description="Patch-based 3D inference."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    infer = commands.add_parser("infer", help="tiled inference on a NIfTI volume")
    infer.add_argument("input", nargs="?", type=Path, help="input .nii / .nii.gz")
    infer.add_argument(
        "--sample", action="store_true", help="run the demo model on the bundled sample volume"
    )
    infer.add_argument(
        "--model", default=None, help="'demo', a TorchScript/.pt2 file, or module:factory"
    )
    infer.add_argument("--weights", type=Path, help="state dict for a module:factory model")
    infer.add_argument("--output", "-o", type=Path, help="output .nii.gz")
    infer.add_argument("--patch-size", type=int, nargs="+", default=[64], metavar="N")
    infer.add_argument(
        "--overlap",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="patch overlap, even (default: a quarter of the patch)",
    )
    infer.add_argument("--mode", choices=OVERLAP_MODES, default="gaussian")
    infer.add_argument("--batch-size", type=int, default=4)
    infer.add_argument(
        "--device", default=None, help="cuda, mps or cpu (default: the best available)"
    )
    infer.add_argument(
        "--padding-mode", default=None, help="pad by half the overlap (e.g. reflect)"
    )
    infer.add_argument(
        "--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)"
    )
    infer.add_argument("--tta", action="store_true", help="average the 8 flips")
    infer.add_argument(
        "--labels", action="store_true", help="write argmax labels instead of probabilities"
    )
    infer.add_argument("--activation", choices=["softmax", "sigmoid", "none"], default="softmax")
    infer.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    infer.add_argument(
        "--trust-pickle", action="store_true", help="allow pickled full models (runs their code)"
    )
    large = infer.add_argument_group("zarr volumes (input and output ending in .zarr)")
    large.add_argument("--engine", choices=["local", "dask"], default="local")
    large.add_argument("--workers", type=int, default=2, help="dask LocalCluster processes")
    large.add_argument("--scheduler", default=None, help="a running dask scheduler's address")
    large.add_argument("--level", type=int, default=0, help="OME-Zarr scale level to read")
    large.add_argument("--block-rows", type=int, default=64, help="rows per dask task")
    commands.add_parser(
        "demo", help="open napari with the sample data and the three widgets docked"
    )
    return parser


def _demo() -> int:
    try:
        from .widgets.demo import run_demo
    except ImportError:
        raise ValueError("the demo needs napari: pip install 'napari-patchwork[napari]'") from None
    return run_demo()


def _resolve(args: argparse.Namespace) -> tuple[Path, str, Path]:
    if args.sample:
        from .data import sample

        paths = sample()
        return (
            paths["image"],
            args.model or "demo",
            args.output or Path("sample_segmentation.nii.gz"),
        )
    if args.input is None:
        raise ValueError("give an INPUT file, or --sample")
    if args.model is None:
        raise ValueError("--model is required (or use --sample for the demo)")
    if args.output is None:
        raise ValueError("--output is required")
    return args.input, args.model, args.output


def _check_output(input_path: Path, output: Path, overwrite: bool) -> None:
    if output.exists() and input_path.exists() and output.resolve() == input_path.resolve():
        raise ValueError(f"refusing to overwrite the input file '{input_path}'")
    if output.exists() and not overwrite:
        raise ValueError(f"output exists: '{output}' (pass --overwrite to replace it)")


def _activate(output: torch.Tensor, activation: str, labels: bool) -> torch.Tensor:
    from .core.postprocess import to_labels, to_probabilities

    if labels:
        return to_labels(output, activation).to(torch.uint8)[None]
    return to_probabilities(output, activation)


def run_infer(args: argparse.Namespace) -> int:
    from .core.image import ScalarImage
    from .io.models import load_model
    from .io.nifti import write_nifti
    from .io.zarr_io import is_zarr_path

    input_path, source, output_path = _resolve(args)
    _check_output(input_path, output_path, args.overwrite)
    if is_zarr_path(input_path) or is_zarr_path(output_path) or args.engine == "dask":
        return run_infer_zarr(args, input_path, source, output_path)
    image = ScalarImage(input_path)
    device = args.device or default_device()
    config = _config(args, device, source)
    model = load_model(source, weights=args.weights, device=device, trust_pickle=args.trust_pickle)
    engine = TiledInference(model, config)
    start = time.perf_counter()
    _consume(engine.run(image, previews=False), f"{input_path.name}")
    output = engine.result()
    if isinstance(output, dict):
        raise ValueError(f"the model returned several outputs {sorted(output)}; the CLI writes one")
    result = _activate(output.float().cpu(), args.activation, args.labels)
    write_nifti(output_path, result, image.affine)
    seconds = time.perf_counter() - start
    print(
        f"wrote {output_path} {tuple(result.shape)} in {seconds:.1f} s on {device}", file=sys.stderr
    )
    if args.sample:
        _report_sample_quality(result, args.labels)
    return 0


def _config(args: argparse.Namespace, device: str, source: str) -> InferenceConfig:
    overlap = args.overlap or [p // 4 - (p // 4) % 2 for p in args.patch_size]
    return InferenceConfig(
        _size(args.patch_size),
        _size(overlap),
        args.mode,
        args.batch_size,
        device,
        None,
        args.amp,
        args.padding_mode,
        args.tta,
        fixed_batch=str(source).endswith(".pt2"),
    )


def run_infer_zarr(args: argparse.Namespace, input_path: Path, source: str, output: Path) -> int:
    """zarr in, zarr out (raw model outputs, float32), in this process or on dask."""
    from .core.lazy import LazyVolume, open_zarr
    from .core.streaming import zarr_target
    from .io.models import load_model
    from .io.zarr_io import is_zarr_path

    if not (is_zarr_path(input_path) and is_zarr_path(output)):
        raise ValueError("zarr runs need both INPUT and --output to be .zarr paths")
    device = args.device or default_device()
    config = _config(args, device, source)
    start = time.perf_counter()
    if args.engine == "dask":
        from .distributed import infer_dask

        result = infer_dask(
            source,
            input_path,
            output,
            patch_size=config.patch,
            patch_overlap=config.overlap,
            overlap_mode=config.overlap_mode,
            batch_size=config.batch_size,
            padding_mode=config.padding_mode,
            level=args.level,
            workers=args.workers,
            scheduler=args.scheduler,
            block_rows=args.block_rows,
            overwrite=args.overwrite,
            amp=config.amp,
            tta=config.tta,
            labels=args.labels,
        )
    else:
        model = load_model(
            source, weights=args.weights, device=device, trust_pickle=args.trust_pickle
        )
        volume = LazyVolume(open_zarr(input_path, args.level))
        target = zarr_target(output, overwrite=args.overwrite, labels=args.labels)
        engine = TiledInference(model, config, target)
        _consume(engine.run(volume, previews=False), input_path.name)
        result = engine.result()
    seconds = time.perf_counter() - start
    print(
        f"wrote {output} {tuple(result.shape)} in {seconds:.1f} s ({args.engine})", file=sys.stderr
    )
    return 0


def _consume(steps: Any, name: str) -> None:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        for step in steps:
            print(f"\r{name}: {step.done}/{step.total} patches", end="", file=sys.stderr)
        print(file=sys.stderr)
        return
    bar = None
    for step in steps:
        if bar is None:
            bar = tqdm(total=step.total, unit="patch", desc=name)
        bar.update(step.done - bar.n)
    if bar is not None:
        bar.close()


def _report_sample_quality(result: torch.Tensor, labels: bool) -> None:
    from .core.image import LabelMap
    from .data import sample
    from .models import DEMO_CLASSES

    truth = LabelMap(sample()["labels"]).data[0].long()
    prediction = result[0].long() if labels else result.argmax(0)
    for label, name in enumerate(DEMO_CLASSES[1:], start=1):
        predicted, true = prediction == label, truth == label
        dice = 2 * (predicted & true).sum() / (predicted.sum() + true.sum()).clamp(min=1)
        print(f"Dice {name}: {float(dice):.3f}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``napari-patchwork``."""
    args = _parser().parse_args(argv)
    try:
        return _demo() if args.command == "demo" else run_infer(args)
    except KeyboardInterrupt:
        print("napari-patchwork: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FileNotFoundError, PermissionError, ValueError, TypeError) as error:
        print(f"napari-patchwork: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # the model (or torch) failed: one line, traceback on request
        if os.environ.get("PATCHWORK_DEBUG"):
            raise
        print(
            f"napari-patchwork: error: {type(error).__name__}: {_one_line(error)}"
            " (set PATCHWORK_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines)[:500] if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
