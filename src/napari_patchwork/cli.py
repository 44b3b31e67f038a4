"""Command line: ``napari-patchwork infer INPUT --model SOURCE --output OUT.nii.gz``.

Consumes the same inference generator as the napari widget, with a progress bar. Everything
that can be checked before the run is (arguments, the output path, the input header, the
patch against the volume), so a typo fails in a second, not after minutes of work. Outputs
are written atomically (temp file, then rename) with the user's umask: an interrupted run
leaves no partial file. NIfTI outputs keep the input's affine and qform/sform codes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from napari_patchwork.core.inference.config import InferenceConfig

from .core.devices import default_device
from .core.types import OVERLAP_MODES
from .core.wording import reworded

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130
#: Output suffixes the CLI writes.
OUTPUT_SUFFIXES = (".nii", ".nii.gz", ".zarr")
#: Default outputs of ``infer --sample`` (probabilities, or ``--labels``).
SAMPLE_OUTPUT, SAMPLE_LABELS = "sample_segmentation.nii.gz", "sample_labels.nii.gz"
#: API names in core error messages, and the flags a CLI user knows them by.
_FLAG_NAMES = {
    "patch_size": "--patch-size",
    "patch_overlap": "--overlap",
    "overlap_mode": "--mode",
    "batch_size": "--batch-size",
    "padding_mode": "--padding-mode",
}
_INFER_USAGE = (
    "%(prog)s INPUT --model SOURCE --output OUT [options]\n"
    "       %(prog)s --sample [--output OUT] [options]"
)


def _size(values: list[int], flag: str) -> int | tuple[int, ...]:
    if len(values) not in (1, 3):
        raise ValueError(f"{flag} takes 1 or 3 sizes (voxels), got {len(values)}: {values}")
    return values[0] if len(values) == 1 else tuple(values)


def _padding(text: str) -> str | float:
    """``--padding-mode``: a number (constant fill) or a mode name."""
    try:
        return float(text)
    except ValueError:
        return text


class _ParseError(Exception):
    """Raised instead of exiting by the lenient first pass of :func:`parse_args`."""


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _ParseError(message)


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _add(group: Any, *flags: str, help: str, **kwargs: Any) -> None:
    """``add_argument`` that appends the default to the help (unless None or False)."""
    default = kwargs.get("default")
    if default is not None and default is not False and not kwargs.get("required"):
        help = f"{help} (default: {_shown(default)})"
    group.add_argument(*flags, help=help, **kwargs)


def _infer_arguments(infer: argparse.ArgumentParser, strict: bool) -> None:
    _add(
        infer,
        "input",
        nargs=None if strict else "?",
        type=Path,
        metavar="INPUT",
        help="input volume: .nii, .nii.gz, or .zarr (with a .zarr --output)",
    )
    _add(
        infer,
        "--sample",
        action="store_true",
        help="run the demo model on the bundled sample volume; INPUT, --model and --output"
        f" are then optional (--output: {SAMPLE_OUTPUT}, or {SAMPLE_LABELS} with --labels)",
    )
    _add(
        infer,
        "--model",
        required=strict,
        metavar="SOURCE",
        help="'demo', a TorchScript/.pt2 file, or package.module:factory",
    )
    _add(infer, "--weights", type=Path, metavar="FILE", help="state dict for a module:factory")
    _add(
        infer,
        "--output",
        "-o",
        type=Path,
        required=strict,
        metavar="OUT",
        help="output file: .nii, .nii.gz or .zarr; its folder must exist",
    )
    _add(infer, "--overwrite", action="store_true", help="replace an existing output file")
    _add(
        infer,
        "--patch-size",
        type=int,
        nargs="+",
        default=[64],
        metavar="N",
        help="patch size in voxels: 1 value, or 3 for axes i j k",
    )
    _add(
        infer,
        "--overlap",
        type=int,
        nargs="+",
        metavar="N",
        help="patch overlap in voxels, even: 1 or 3 values (default: a quarter of the patch)",
    )
    _add(infer, "--mode", choices=OVERLAP_MODES, default="gaussian", help="blending of overlaps")
    _add(infer, "--batch-size", type=int, default=4, metavar="N", help="patches per model call")
    _add(infer, "--device", help="cuda, mps or cpu (default: the best available)")
    _add(
        infer,
        "--padding-mode",
        type=_padding,
        metavar="MODE",
        help="pad the volume by half the overlap: a number, or reflect, edge, ..."
        " (default: no padding)",
    )
    _add(infer, "--amp", action="store_true", help="mixed precision (float16 CUDA, bfloat16 CPU)")
    _add(infer, "--tta", action="store_true", help="average the outputs of the 8 flips")
    _add(
        infer,
        "--compile",
        action="store_true",
        help="torch.compile the model (compiles once; faster for some networks)",
    )
    _add(infer, "--labels", action="store_true", help="write argmax labels, not probabilities")
    _add(
        infer,
        "--activation",
        choices=["softmax", "sigmoid", "none"],
        default=None,
        help="turns the model's outputs into probabilities (default: softmax for NIfTI"
        " outputs; zarr outputs stay raw unless given)",
    )
    _add(
        infer,
        "--trust-pickle",
        action="store_true",
        help="allow pickled full models (unpickling runs their code)",
    )
    _add(infer, "--traceback", action="store_true", help="show the traceback of an error")
    large = infer.add_argument_group("zarr volumes (INPUT and --output ending in .zarr)")
    _add(large, "--engine", choices=["local", "dask"], default="local", help="where to run")
    _add(large, "--workers", type=int, default=2, metavar="N", help="dask LocalCluster processes")
    _add(large, "--scheduler", metavar="ADDRESS", help="a running dask scheduler's address")
    _add(large, "--level", type=int, default=0, metavar="N", help="OME-Zarr scale level to read")
    _add(large, "--block-rows", type=int, default=64, metavar="N", help="rows per dask task")


def _build(strict: bool) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    kind = argparse.ArgumentParser if strict else _RaisingParser
    parser = kind(prog="napari-patchwork", description="Patch-based 3D inference.", add_help=strict)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="infer, train or demo"
    )
    infer = commands.add_parser(
        "infer",
        help="tiled inference on a NIfTI or zarr volume",
        description="Tiled inference: patches of INPUT through the model, blended into OUT.",
        usage=_INFER_USAGE,
        add_help=strict,
    )
    _infer_arguments(infer, strict)
    from .cli_train import add_train_parser

    add_train_parser(commands, add_help=strict)
    commands.add_parser(
        "demo",
        help="open napari with the sample data and the three widgets docked",
        description="Open napari with the sample data and the three widgets docked.",
        add_help=strict,
    )
    return parser, infer


def build_parser(strict: bool = True) -> argparse.ArgumentParser:
    """The ``napari-patchwork`` argument parser.

    Parameters
    ----------
    strict : bool
        Require ``INPUT``, ``--model`` and ``--output`` (every ``infer`` run but
        ``--sample``). The lenient parser (``strict=False``) has no ``-h`` and raises instead
        of exiting.

    Returns
    -------
    argparse.ArgumentParser

    Examples
    --------
    >>> args = build_parser().parse_args(["infer", "a.nii", "--model", "demo", "-o", "b.nii"])
    >>> args.patch_size, args.mode
    ([64], 'gaussian')
    """
    return _build(strict)[0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; missing required arguments are reported together.

    ``infer --sample`` needs none of ``INPUT``, ``--model`` and ``--output``; every other
    ``infer`` run needs all three (``required=True``, shown in the usage).

    Examples
    --------
    >>> parse_args(["infer", "--sample"]).output is None
    True
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    strict, infer = _build(strict=True)
    options = arguments[: arguments.index("--")] if "--" in arguments else arguments
    if "-h" in options or "--help" in options:
        return strict.parse_args(arguments)
    try:
        lenient = build_parser(strict=False).parse_args(arguments)
    except _ParseError as error:
        if "--sample" in options:  # the real error, not "INPUT is required"
            infer.error(str(error))
        return strict.parse_args(arguments)
    return lenient if getattr(lenient, "sample", False) else strict.parse_args(arguments)


def _demo() -> int:
    try:
        from .widgets.demo import run_demo
    except ImportError:
        raise ValueError(
            "the demo needs napari: pip install -e '.[napari]' in the napari-patchwork checkout"
        ) from None
    return run_demo()


def check_output(output: Path, overwrite: bool, input_path: Path | None = None) -> None:
    """Refuse an output path the run could not write, before any work is done.

    Parameters
    ----------
    output : Path
        The ``--output`` value.
    overwrite : bool
        ``--overwrite``: replace an existing file (never the input).
    input_path : Path, optional
        ``INPUT``, which is never replaced.

    Raises
    ------
    ValueError
        Unknown suffix, missing or unwritable folder, a folder where a file goes, the input
        itself, or an existing output without ``overwrite``; the message names ``--output``
        and its value.

    Examples
    --------
    >>> check_output(Path("seg.txt"), overwrite=False)
    Traceback (most recent call last):
    ...
    ValueError: --output 'seg.txt': unknown file type; end it in .nii, .nii.gz or .zarr
    """
    from .io.nifti import is_nifti_path
    from .io.zarr_io import is_zarr_path

    shown = f"--output '{output}'"
    if not (is_nifti_path(output) or is_zarr_path(output)):
        raise ValueError(f"{shown}: unknown file type; end it in .nii, .nii.gz or .zarr")
    folder = output.parent
    if not folder.is_dir():
        raise ValueError(f"{shown}: the folder '{folder}' does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{shown}: the folder '{folder}' is not writable (permission denied)")
    if not output.exists():
        return
    if input_path is not None and input_path.exists() and output.samefile(input_path):
        raise ValueError(f"{shown}: refusing to overwrite the input file '{input_path}'")
    if not overwrite:
        raise ValueError(f"{shown} exists; pass --overwrite to replace it")
    if is_nifti_path(output) and output.is_dir():
        raise ValueError(f"{shown} is a folder; a NIfTI output is a file")


def _resolve(args: argparse.Namespace) -> tuple[Path, str, Path]:
    if not args.sample:
        check_output(args.output, args.overwrite, args.input)
        return args.input, args.model, args.output
    if args.input is not None:
        raise ValueError(
            f"--sample runs on the bundled sample volume and takes no INPUT, got INPUT "
            f"'{args.input}'; drop --sample to segment '{args.input}'"
        )
    output = args.output or Path(SAMPLE_LABELS if args.labels else SAMPLE_OUTPUT)
    check_output(output, args.overwrite)
    from .data import sample

    return sample()["image"], args.model or "demo", output


def _check_model_files(source: str, weights: Path | None) -> None:
    """Refuse a missing ``--model`` or ``--weights`` file before the (slow) model load."""
    path = Path(source)
    if source != "demo" and not (":" in source and not path.exists()) and not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"--model '{source}': model file {problem}")
    if weights is not None and not weights.is_file():
        raise FileNotFoundError(f"--weights '{weights}': weights file does not exist")


def _activate(
    output: torch.Tensor, activation: str, labels: bool, class_values: list[int] | None = None
) -> torch.Tensor:
    from napari_patchwork.core.inference.postprocess import to_labels, to_probabilities

    from .io.models import apply_class_values

    if not labels:
        return to_probabilities(output, activation)
    indices = to_labels(output, activation)
    if class_values is not None:  # a model trained here: write the painted values back
        return apply_class_values(indices, class_values)[None]
    dtype = torch.uint8 if output.shape[0] <= 256 else torch.int32  # never wraps a class
    return indices.to(dtype)[None]


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _write_nifti(
    path: Path, data: torch.Tensor, affine: Any, nifti: dict[str, int], overwrite: bool
) -> None:
    """Write atomically with the user's umask and the input's qform/sform codes."""
    from .io.nifti import write_nifti

    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        write_nifti(temp, data, affine, nifti=nifti)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp made it 0600
        if path.exists() and not overwrite:  # appeared during the run
            raise ValueError(f"--output '{path}' exists; pass --overwrite to replace it")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _file_shape(path: Path) -> tuple[int, ...]:
    """The shape as the file's reader reports it (nibabel: ``(I, J, K[, C])``)."""
    import nibabel as nib

    image: Any = nib.load(str(path))
    return tuple(int(s) for s in image.shape)


def run_infer(args: argparse.Namespace) -> int:
    """``napari-patchwork infer``: check everything, run, write, report; returns the exit code."""
    from napari_patchwork.core.data.image import ScalarImage
    from napari_patchwork.core.inference.functional import TiledInference

    from .io.models import load_model
    from .io.nifti import read_nifti_header
    from .io.zarr_io import is_zarr_path

    input_path, source, output_path = _resolve(args)
    if is_zarr_path(input_path) or is_zarr_path(output_path) or args.engine == "dask":
        return run_infer_zarr(args, input_path, source, output_path)
    image = ScalarImage(input_path)
    nifti = read_nifti_header(input_path).nifti
    device = args.device or default_device()
    config = _config(args, device, source)
    _check_model_files(source, args.weights)
    model = load_model(source, weights=args.weights, device=device, trust_pickle=args.trust_pickle)
    image.load()  # a broken file is named before the patch size is checked against it
    _flags(config.check_fits, image.spatial_shape)  # the engine checks too, with API names
    engine = TiledInference(model, config)
    start = time.perf_counter()
    _consume(engine.run(image, previews=False), f"{input_path.name}")
    output = engine.result()
    if isinstance(output, dict):
        raise ValueError(f"the model returned several outputs {sorted(output)}; the CLI writes one")
    from .io.models import model_class_values

    values = model_class_values(source) if args.labels else None
    result = _activate(output.float().cpu(), args.activation or "softmax", args.labels, values)
    _write_nifti(output_path, result, image.affine, nifti, args.overwrite)
    seconds = time.perf_counter() - start
    print(
        f"wrote {output_path} {_file_shape(output_path)} in {seconds:.1f} s on {device}",
        file=sys.stderr,
    )
    if args.sample:
        _report_sample_quality(result, args.labels)
    return 0


def _flags(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``function``; its errors name the CLI flags, not the API's parameter names."""
    try:
        return function(*args, **kwargs)
    except (TypeError, ValueError) as error:
        raise reworded(error, _FLAG_NAMES) from error


def _config(args: argparse.Namespace, device: str, source: str) -> InferenceConfig:
    patch = _size(args.patch_size, "--patch-size")
    overlap = args.overlap or [p // 4 - (p // 4) % 2 for p in args.patch_size]
    config: InferenceConfig = _flags(
        InferenceConfig,
        patch_size=patch,
        patch_overlap=_size(overlap, "--overlap"),
        overlap_mode=args.mode,
        batch_size=args.batch_size,
        device=device,
        amp=args.amp,
        padding_mode=args.padding_mode,
        tta=args.tta,
        compile=args.compile,
        fixed_batch=str(source).endswith(".pt2"),
    )
    return config


def run_infer_zarr(args: argparse.Namespace, input_path: Path, source: str, output: Path) -> int:
    """zarr in, zarr out (raw model outputs, float32), in this process or on dask."""
    from napari_patchwork.core.data.lazy import LazyVolume
    from napari_patchwork.core.inference.functional import TiledInference
    from napari_patchwork.core.inference.streaming import zarr_target

    from .io.models import load_model
    from .io.zarr_io import is_zarr_path, open_zarr

    if not (is_zarr_path(input_path) and is_zarr_path(output)):
        raise ValueError(
            f"zarr runs need both INPUT and --output to be .zarr paths, got INPUT "
            f"'{input_path}' and --output '{output}'"
        )
    device = args.device or default_device()
    config = _config(args, device, source)
    start = time.perf_counter()
    if args.engine == "dask":
        from .distributed import infer_dask

        result = infer_dask(
            source,
            input_path,
            output,
            config=config,
            level=args.level,
            workers=args.workers,
            scheduler=args.scheduler,
            block_rows=args.block_rows,
            overwrite=args.overwrite,
            output_labels=args.labels,
            output_activation=args.activation,
        )
    else:
        model = load_model(
            source, weights=args.weights, device=device, trust_pickle=args.trust_pickle
        )
        volume = LazyVolume(open_zarr(input_path, args.level))
        target = zarr_target(
            output, overwrite=args.overwrite, labels=args.labels, activation=args.activation
        )
        engine = TiledInference(model, config, target)
        _consume(engine.run(volume, previews=False), input_path.name)
        result = engine.result()
    seconds = time.perf_counter() - start
    print(  # zarr arrays are stored channels first: (C, I, J, K) is the file's order
        f"wrote {output} {_shapes(result)} in {seconds:.1f} s ({args.engine})", file=sys.stderr
    )
    return 0


def _shapes(result: Any) -> Any:
    if isinstance(result, dict):
        return {key: tuple(array.shape) for key, array in result.items()}
    return tuple(result.shape)


def _consume(steps: Any, name: str) -> None:
    try:
        _show(steps, name)
    except BaseException:  # Ctrl-C between batches: remove the partial zarr store now
        steps.close()
        raise


def _show(steps: Any, name: str) -> None:
    from napari_patchwork.core.inference.progress import ProgressBar

    with ProgressBar(name) as bar:
        for step in steps:
            bar.update(step.done, step.total)


def _report_sample_quality(result: torch.Tensor, labels: bool) -> None:
    from napari_patchwork.core.data.image import LabelMap

    from .data import sample
    from .models import DEMO_CLASSES

    truth = LabelMap(sample()["labels"]).data[0].long()
    prediction = result[0].long() if labels else result.argmax(0)
    for label, name in enumerate(DEMO_CLASSES[1:], start=1):
        predicted, true = prediction == label, truth == label
        dice = 2 * (predicted & true).sum() / (predicted.sum() + true.sum()).clamp(min=1)
        print(f"Dice {name}: {float(dice):.3f}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``napari-patchwork``: returns 0, 2 (error) or 130 (interrupted).

    Errors are one line on stderr; ``--traceback`` (or ``PATCHWORK_DEBUG=1``) adds the
    traceback.
    """
    args = parse_args(argv)
    try:
        if args.command == "train":
            from .cli_train import run_train

            return run_train(args)
        return _demo() if args.command == "demo" else run_infer(args)
    except KeyboardInterrupt:
        print("napari-patchwork: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if getattr(args, "traceback", False) or os.environ.get("PATCHWORK_DEBUG"):
            traceback.print_exc()
        expected = isinstance(error, (OSError, ValueError, TypeError))
        kind = "" if expected else f"{type(error).__name__}: "  # the model (or torch) failed
        hint = "" if expected or args.command == "demo" else " (--traceback shows where)"
        print(f"napari-patchwork: error: {kind}{_one_line(error)}{hint}", file=sys.stderr)
        return EXIT_ERROR


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines)[:500] if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
