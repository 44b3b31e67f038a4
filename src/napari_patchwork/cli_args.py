"""Arguments of ``napari-patchwork``: the parser, ``parse_args``, and settings from flags.

``parse_args`` reports missing required arguments together, and lets ``infer --sample`` run
without ``INPUT``, ``--model`` and ``--output``. :func:`inference_config` turns the ``infer``
flags into the one :class:`InferenceConfig`; its errors name the flags, not the API's names.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from napari_patchwork.core.data.harmonisation import Harmonisation
from napari_patchwork.core.inference.config import InferenceConfig
from napari_patchwork.core.inference.grid import fit_patch, quarter_overlap

from .core.types import OVERLAP_MODES
from .core.wording import reworded
from .io.models import model_patch_size, read_model_metadata

_T = TypeVar("_T")

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
        metavar="N",
        help="patch size in voxels: 1 value, or 3 for axes i j k (default: the patch the"
        " model was trained with, if its file records it, else 64)",
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
    (None, 'gaussian')
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


def flag_worded(function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call ``function``; its errors name the CLI flags, not the API's parameter names."""
    try:
        return function(*args, **kwargs)
    except (TypeError, ValueError) as error:
        raise reworded(error, _FLAG_NAMES) from error


def inference_config(
    args: argparse.Namespace, device: str, source: str, shape: Sequence[int] | None = None
) -> InferenceConfig:
    """The :class:`InferenceConfig` of the ``infer`` flags (``--patch-size``: the model's
    training patch when its file records it, fitted to the volume's ``shape`` when given
    (:func:`fit_patch`), else 64; ``--overlap``: a quarter of the patch, even
    (:func:`quarter_overlap`), unless given; ``.pt2`` models run fixed-size batches)."""
    recorded = None if args.patch_size else model_patch_size(source)
    fitted = recorded if recorded is None or shape is None else fit_patch(recorded, shape)
    sizes = args.patch_size or list(fitted or [64])
    patch = _size(sizes, "--patch-size")
    overlap = args.overlap or list(quarter_overlap(sizes * 3 if len(sizes) == 1 else sizes))
    try:
        return _inference_config(args, device, source, patch, overlap)
    except ValueError as error:
        raise untyped_patch_named(error, args, recorded, fitted) from error


def untyped_patch_named(
    error: ValueError,
    args: argparse.Namespace,
    recorded: tuple[int, ...] | None,
    fitted: tuple[int, ...] | None,
) -> ValueError:
    """``error`` with "--patch-size" named for what it is when the user did not type one:
    "the default patch size", or "the model's patch size" (fitted to the volume when it was).
    """
    if args.patch_size or "--patch-size" not in str(error):
        return error
    if recorded is None:
        name, note = "the default patch size", "choose one with --patch-size"
    else:
        name = "the model's patch size"
        note = (
            f"{'fitted to the volume; ' if fitted != recorded else ''}choose one with --patch-size"
        )
    return ValueError(f"{str(error).replace('--patch-size', name, 1)} ({note})")


def _inference_config(
    args: argparse.Namespace, device: str, source: str, patch: Any, overlap: list[int]
) -> InferenceConfig:
    return flag_worded(
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
        harmonisation=Harmonisation.from_metadata(read_model_metadata(source)),
    )


__all__ = [
    "SAMPLE_LABELS",
    "SAMPLE_OUTPUT",
    "build_parser",
    "flag_worded",
    "inference_config",
    "parse_args",
    "untyped_patch_named",
]
