"""The functional API of tiled inference: ``infer`` and ``iter_infer``.

Both take the same arguments and resolve the run's settings through :class:`InferenceConfig`
(``config=`` or its fields as keywords). ``iter_infer`` yields an :class:`InferenceStep` after
every batch (what the napari widget and the CLI consume) and returns the result when
exhausted; ``infer`` runs the same generator to the end and returns the result.

The engine is :class:`TiledInference` (:mod:`.engine`), the batches come from
:mod:`.prefetch`, the progress bar from :mod:`.progress`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, Unpack, overload

import torch

from napari_patchwork.core.inference.config import InferenceConfig, InferenceSettings
from napari_patchwork.core.inference.engine import InferenceStep, Output, TiledInference
from napari_patchwork.core.inference.progress import ProgressBar
from napari_patchwork.core.inference.streaming import zarr_target

if TYPE_CHECKING:
    import numpy as np

    from napari_patchwork.core.data.image import Image
    from napari_patchwork.core.data.lazy import SliceableArray
    from napari_patchwork.core.data.subject import Subject

__all__ = [
    "InferenceStep",
    "Output",
    "StoredArray",
    "StoredOutput",
    "TiledInference",
    "infer",
    "iter_infer",
]


class StoredArray(Protocol):
    """What ``infer(output=path)`` returns: an array on disk (a zarr array)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: Any) -> Any: ...


StoredOutput: TypeAlias = StoredArray | dict[str, StoredArray]
PathLike: TypeAlias = str | os.PathLike[str]
Model: TypeAlias = Callable[..., Any]
#: What ``infer`` reads: a ``(C, I, J, K)`` tensor or array, an image, a subject (with
#: ``image_name``), or a lazily read array (zarr, dask, memmap: ``shape``, ``dtype``, slicing).
ImageInput: TypeAlias = "torch.Tensor | np.ndarray | Image | Subject | SliceableArray"


def _start(
    model: Model,
    image: ImageInput,
    config: InferenceConfig | None,
    settings: dict[str, Any],
    *,
    image_name: str | None,
    progress: bool,
    output: PathLike | None,
    output_chunks: tuple[int, int, int] | None,
    overwrite: bool,
    output_labels: bool,
    output_activation: str | None,
    previews: bool,
) -> Generator[InferenceStep, None, Any]:
    """Check every argument now (not at the first ``next``); return the driving generator."""
    resolved = InferenceConfig.resolve(config, **settings)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    if output is None:
        options = {
            "output_chunks": output_chunks is not None,
            "overwrite": overwrite,
            "output_labels": output_labels,
            "output_activation": output_activation is not None,
        }
        given = [name for name, used in options.items() if used]
        if given:
            raise ValueError(f"{', '.join(given)} need output= (a zarr path), got output=None")
        stream = None
    else:
        stream = zarr_target(
            output,
            chunks=output_chunks,
            overwrite=overwrite,
            labels=output_labels,
            activation=output_activation,
        )
    engine = TiledInference(model, resolved, stream)
    return _drive(
        engine, engine.run(image, image_name, previews=previews), ProgressBar(None, progress)
    )


def _drive(
    engine: TiledInference, steps: Generator[InferenceStep, None, None], bar: ProgressBar
) -> Generator[InferenceStep, None, Any]:
    """Yield the engine's steps, updating ``bar``; return the result when every patch is done."""
    try:
        for step in steps:
            bar.update(step.done, step.total)
            yield step
    except BaseException:  # failed, cancelled (GeneratorExit), interrupted: remove partials
        steps.close()
        raise
    finally:
        bar.close()
    return engine.result()


@overload
def iter_infer(
    model: Model,
    image: ImageInput,
    *,
    config: InferenceConfig | None = None,
    image_name: str | None = None,
    progress: bool = False,
    output: None = None,
    output_chunks: None = None,
    overwrite: bool = False,
    output_labels: bool = False,
    output_activation: None = None,
    **settings: Unpack[InferenceSettings],
) -> Generator[InferenceStep, None, Output]: ...


@overload
def iter_infer(
    model: Model,
    image: ImageInput,
    *,
    config: InferenceConfig | None = None,
    image_name: str | None = None,
    progress: bool = False,
    output: PathLike,
    output_chunks: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    output_labels: bool = False,
    output_activation: str | None = None,
    **settings: Unpack[InferenceSettings],
) -> Generator[InferenceStep, None, StoredOutput]: ...


def iter_infer(
    model: Model,
    image: ImageInput,
    *,
    config: InferenceConfig | None = None,
    image_name: str | None = None,
    progress: bool = False,
    output: PathLike | None = None,
    output_chunks: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    output_labels: bool = False,
    output_activation: str | None = None,
    **settings: Unpack[InferenceSettings],
) -> Generator[InferenceStep, None, Output | StoredOutput]:
    """Tiled inference as a generator of :class:`InferenceStep`, one per batch.

    Takes exactly the arguments of :func:`infer` (see there); the settings are checked at
    the call, before the first step. Each step carries a preview of the region the batch
    touched (``step.region``, ``step.output``), except with ``output`` (streamed to zarr:
    both are then empty dicts). Breaking out of the loop (closing the generator) cancels
    cleanly (a streamed ``output`` is removed); ``step.full_output()`` of the last step is
    the partial output, exact for finished patches. Exhausted, the generator returns what
    :func:`infer` returns (``StopIteration.value``, or ``yield from``).

    Examples
    --------
    >>> import torch
    >>> volume = torch.rand(1, 8, 8, 8)
    >>> steps = iter_infer(lambda x: x, volume, patch_size=4, batch_size=2)
    >>> first = next(steps)
    >>> first.done, first.total, first.output.shape
    (2, 8, torch.Size([1, 4, 4, 8]))
    >>> steps.close()
    """
    return _start(
        model,
        image,
        config,
        dict(settings),
        image_name=image_name,
        progress=progress,
        output=output,
        output_chunks=output_chunks,
        overwrite=overwrite,
        output_labels=output_labels,
        output_activation=output_activation,
        previews=True,
    )


@overload
def infer(
    model: Model,
    image: ImageInput,
    *,
    config: InferenceConfig | None = None,
    image_name: str | None = None,
    progress: bool = False,
    output: None = None,
    output_chunks: None = None,
    overwrite: bool = False,
    output_labels: bool = False,
    output_activation: None = None,
    **settings: Unpack[InferenceSettings],
) -> Output: ...


@overload
def infer(
    model: Model,
    image: ImageInput,
    *,
    config: InferenceConfig | None = None,
    image_name: str | None = None,
    progress: bool = False,
    output: PathLike,
    output_chunks: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    output_labels: bool = False,
    output_activation: str | None = None,
    **settings: Unpack[InferenceSettings],
) -> StoredOutput: ...


def infer(
    model: Model,
    image: ImageInput,
    *,
    config: InferenceConfig | None = None,
    image_name: str | None = None,
    progress: bool = False,
    output: PathLike | None = None,
    output_chunks: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    output_labels: bool = False,
    output_activation: str | None = None,
    **settings: Unpack[InferenceSettings],
) -> Output | StoredOutput:
    """Run ``model`` over ``image`` patch by patch and return the blended ``(C', I, J, K)`` output.

    Parameters
    ----------
    model : callable
        ``(B, C, P, P, P) -> (B, C', Q, Q, Q)`` or a dict of such outputs (then a dict is
        returned). Outputs smaller than the patch (Q = P / k) give outputs of shape
        ``(I, J, K) * Q / P``.
    image : tensor, array, ScalarImage or Subject
        ``(C, I, J, K)`` input (any real dtype; converted to float32 patch by patch).
    config : InferenceConfig, optional
        The run's settings; or give them as keywords instead (not both):
    **settings
        The fields of :class:`InferenceConfig`: ``patch_size`` (required), ``patch_overlap``,
        ``overlap_mode``, ``batch_size``, ``device``, ``aggregate_device``, ``amp``,
        ``padding_mode``, ``tta``, ``fixed_batch``, ``compile``.
    image_name : str, optional
        Which image of a ``Subject`` to use.
    progress : bool
        Show a progress bar (tqdm when installed).
    output : path, optional
        Write the result to a new float32 zarr array there (needs ``zarr``) instead of
        returning a tensor: finished rows are written as they complete, so memory holds one
        patch height of rows of input and output, whatever the volume (returns the array;
        a dict of arrays, in a zarr group, for a model returning a dict). ``image`` may then
        be any lazily read array (zarr, dask, memmap). The store is written under
        ``.<name>.partial-<pid>`` beside ``output`` and renamed when complete; an error, a
        cancel or Ctrl-C removes it.
    output_chunks : tuple of 3 int, optional
        Spatial chunks of the zarr output (default: rows on the grid step, so that writes
        cover whole chunks, and 64 in-plane). Needs ``output``, as do the three below.
    overwrite : bool
        Replace an existing ``output`` (once the new one is complete).
    output_labels : bool
        Write a uint8 label map (argmax over channels, or logit > 0) instead of raw outputs.
    output_activation : {'softmax', 'sigmoid', 'none'}, optional
        Write probabilities instead of raw outputs; with ``output_labels``, the one-channel
        threshold (logit > 0, or 0.5 with ``'none'``; an argmax does not depend on it).

    Returns
    -------
    torch.Tensor or dict of torch.Tensor
        Without ``output``. Aggregated on the CPU, its memory is numpy's (as
        ``torch.from_numpy``: it cannot be resized in place), so that a loop of runs reuses
        the freed output's pages.
    zarr array or dict of zarr arrays
        With ``output``.

    Raises
    ------
    TypeError
        For an argument that is not a setting, or ``config`` given with settings.
    ValueError
        For a bad setting (named, with its value), or an output option without ``output``.
    CorruptChunkError
        A chunk of a zarr ``image`` cannot be read (the message names the store and chunk).

    Examples
    --------
    >>> import torch
    >>> volume = torch.rand(1, 10, 10, 10)
    >>> output = infer(lambda x: x, volume, patch_size=6, patch_overlap=2)
    >>> torch.allclose(output, volume)
    True
    >>> config = InferenceConfig(patch_size=6, patch_overlap=2, overlap_mode="hann")
    >>> torch.allclose(infer(lambda x: x, volume, config=config), volume)
    True
    """
    steps = _start(
        model,
        image,
        config,
        dict(settings),
        image_name=image_name,
        progress=progress,
        output=output,
        output_chunks=output_chunks,
        overwrite=overwrite,
        output_labels=output_labels,
        output_activation=output_activation,
        previews=False,
    )
    try:
        with torch.no_grad():  # one grad mode for the whole run, not a context per batch
            while True:
                next(steps)
    except StopIteration as finished:
        result: Output | StoredOutput = finished.value
        return result
    except BaseException:  # e.g. Ctrl-C between two batches: the partial output is removed
        steps.close()
        raise
