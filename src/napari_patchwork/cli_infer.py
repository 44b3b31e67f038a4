"""Running ``napari-patchwork infer``: NIfTI in memory, zarr in this process or on dask.

Consumes the same inference generator as the napari widget, with a progress bar; the
arguments are checked first (:mod:`.cli_args`, :mod:`.cli_files`), the result is written
through :mod:`.cli_files` (NIfTI) or streamed into the zarr output.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cli_args import (
    SAMPLE_LABELS,
    SAMPLE_OUTPUT,
    flag_worded,
    inference_config,
    untyped_patch_named,
)
from .cli_files import check_model_files, check_output, file_shape, write_nifti_atomically
from .core.devices import default_device

if TYPE_CHECKING:
    from .core.inference.engine import InferenceStep


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


def run_infer(args: argparse.Namespace) -> int:
    """``napari-patchwork infer``: check everything, run, write, report; returns the exit code."""
    from napari_patchwork.core.data.image import ScalarImage
    from napari_patchwork.core.inference.functional import TiledInference

    from .io.models import load_model, model_patch_size
    from .io.nifti import read_nifti_header
    from .io.zarr_io import is_zarr_path

    input_path, source, output_path = _resolve(args)
    if is_zarr_path(input_path) or is_zarr_path(output_path) or args.engine == "dask":
        return run_infer_zarr(args, input_path, source, output_path)
    image = ScalarImage(input_path)
    header = read_nifti_header(input_path)
    nifti = header.nifti
    device = args.device or default_device()
    config = inference_config(args, device, source, header.spatial_shape)
    check_model_files(source, args.weights)
    model = load_model(source, weights=args.weights, device=device, trust_pickle=args.trust_pickle)
    image.load()  # a broken file is named before the patch size is checked against it
    try:  # the engine checks too, with API names
        flag_worded(config.check_fits, image.spatial_shape)
    except ValueError as error:  # a patch the user did not type is named for what it is
        recorded = None if args.patch_size else model_patch_size(source)
        raise untyped_patch_named(error, args, recorded, tuple(config.patch)) from error
    engine = TiledInference(model, config)
    start = time.perf_counter()
    _consume(engine.run(image, previews=False), f"{input_path.name}")
    output = engine.result()
    if isinstance(output, dict):
        raise ValueError(f"the model returned several outputs {sorted(output)}; the CLI writes one")
    from .io.models import model_class_values

    values = model_class_values(source) if args.labels else None
    result = _activate(output.float().cpu(), args.activation or "softmax", args.labels, values)
    write_nifti_atomically(output_path, result, image.affine, nifti, args.overwrite)
    seconds = time.perf_counter() - start
    print(
        f"wrote {output_path} {file_shape(output_path)} in {seconds:.1f} s on {device}",
        file=sys.stderr,
    )
    if args.sample:
        _report_sample_quality(result, args.labels)
    return 0


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
    shape = tuple(open_zarr(input_path, args.level).shape[-3:])  # metadata only
    config = inference_config(args, device, source, shape)
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


def _consume(steps: Generator[InferenceStep, None, None], name: str) -> None:
    try:
        _show(steps, name)
    except BaseException:  # Ctrl-C between batches: remove the partial zarr store now
        steps.close()
        raise


def _show(steps: Generator[InferenceStep, None, None], name: str) -> None:
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


__all__ = ["run_infer", "run_infer_zarr"]
