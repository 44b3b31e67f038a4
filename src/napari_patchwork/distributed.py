"""Tiled inference on a ``dask.distributed`` cluster, block by block, into one zarr array.

The volume is cut along its first axis into blocks aligned with the output's zarr chunks. Each
task runs exactly the patches touching its block (the block plus a halo of the patch overlap)
in the same order and with the same weights as a single-process run, and writes only its own
rows, so tasks never write the same chunk and the result equals ``infer(..., output=...)``
bit for bit. Each worker loads the model once (cached per model source).

Needs ``dask[distributed]`` and ``zarr`` (``pip install napari-patchwork[dask]``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .core.config import InferenceConfig
from .core.inference import TiledInference
from .core.lazy import LazyVolume, open_zarr
from .core.streaming import default_chunks, partial_path, replace_with, zarr_target

_MODELS: dict[str, Any] = {}  # per worker process: model source -> loaded model


def _model(source: str, device: str | None) -> Any:
    key = f"{source}@{device}"
    if key not in _MODELS:
        from .io.models import load_model

        _MODELS[key] = load_model(source, device=device)
    return _MODELS[key]


@dataclass(frozen=True)
class BlockJob:
    """What every task of one run shares (plain values: sent to worker processes)."""

    model_source: str
    input_path: str
    level: int
    output_path: str  # the partial store (renamed by the caller when every block is done)
    settings: dict[str, Any]
    labels: bool = False
    activation: str | None = None


def run_block(job: BlockJob, rows: tuple[int, int]) -> tuple[int, int]:
    """One task: infer the input rows ``[start, stop)`` into the existing zarr output."""
    config = InferenceConfig(**job.settings)
    target = zarr_target(job.output_path, rows=rows, labels=job.labels, activation=job.activation)
    engine = TiledInference(_model(job.model_source, job.settings.get("device")), config, target)
    for _ in engine.run(LazyVolume(open_zarr(job.input_path, job.level))):
        pass
    engine.result()
    return rows


def plan_blocks(rows: int, block_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of ``block_rows`` (the last one may be shorter)."""
    return [(start, min(start + block_rows, rows)) for start in range(0, rows, block_rows)]


def _probe(model: Any, volume: LazyVolume, config: InferenceConfig) -> dict[str | None, Any]:
    """The model's outputs on one patch: ``{None: tensor}`` or its dict."""
    probe = torch.zeros((1, volume.shape[0], *config.patch))
    with torch.no_grad():
        out = model(probe)
    if isinstance(out, torch.Tensor):
        return {None: out}
    if isinstance(out, dict) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
        return {str(key): value for key, value in out.items()}
    raise TypeError(f"the model must return a tensor or a dict of tensors, got {type(out)}")


def _create_output(
    outputs: dict[str | None, Any],
    volume: LazyVolume,
    config: InferenceConfig,
    partial: Path,
    block_rows: int,
    labels: bool,
) -> None:
    """Create the zarr output (one array, or a group of one array per output) at ``partial``.

    Each output's chunk rows are ``block_rows`` times its scale, so that no two tasks write
    the same chunk.
    """
    import zarr

    for name, out in outputs.items():
        scale = [q / p for q, p in zip(out.shape[2:], config.patch)]
        rows = block_rows * scale[0]
        if abs(rows - round(rows)) > 1e-9 or round(rows) < 1:
            label = "the model's output" if name is None else f"the model's output {name!r}"
            raise ValueError(
                f"{label} is {scale[0]:g}× the patch along the first axis, so a block of"
                f" {block_rows} rows is not a whole number of output rows; choose a block_rows"
                f" that is a multiple of {round(1 / scale[0]) if scale[0] < 1 else 1}"
            )
        spatial = tuple(int(s * f + 1e-9) for s, f in zip(volume.spatial_shape, scale))
        shape = (1 if labels else int(out.shape[1]), *spatial)
        chunks = (shape[0], min(round(rows), spatial[0]), *default_chunks(shape)[1:])
        dtype = "uint8" if labels else "float32"
        if name is None:
            zarr.create_array(str(partial), shape=shape, chunks=chunks, dtype=dtype, overwrite=True)
        else:
            group = zarr.open_group(str(partial), mode="a")
            group.create_array(name, shape=shape, chunks=chunks, dtype=dtype)


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextmanager
def _restored_thread_variables() -> Iterator[None]:
    """Undo what starting a ``LocalCluster`` does to the caller's environment.

    distributed's nanny sets ``OMP_NUM_THREADS=1`` (and MKL/OpenBLAS) in the parent's
    ``os.environ`` for its workers; the caller keeps its own values.
    """
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _start_cluster(workers: int) -> Any:
    from dask.distributed import LocalCluster

    with _restored_thread_variables():
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,  # a task's error reaches the caller once, not logged
        )


def _run_blocks(
    job: BlockJob,
    blocks: list[tuple[int, int]],
    scheduler: str | None,
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    from dask.distributed import Client, as_completed

    cluster = _start_cluster(workers) if scheduler is None else None
    try:
        with Client(scheduler or cluster) as client:
            futures = [client.submit(run_block, job, rows, pure=False) for rows in blocks]
            try:
                for done, future in enumerate(as_completed(futures), start=1):
                    future.result()  # re-raises a task's error here
                    if progress is not None:
                        progress(done, len(blocks))
            except BaseException:
                client.cancel(futures)  # no task may write after the partial store is removed
                raise
    finally:
        if cluster is not None:
            with _restored_thread_variables():
                cluster.close()


def infer_dask(
    model_source: str,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    patch_size: Any,
    patch_overlap: Any = 0,
    overlap_mode: str = "gaussian",
    batch_size: int = 4,
    padding_mode: str | float | None = None,
    level: int = 0,
    workers: int = 2,
    scheduler: str | None = None,
    block_rows: int = 64,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    amp: bool = False,
    tta: bool = False,
    labels: bool = False,
    activation: str | None = None,
) -> Any:
    """Tiled inference of a zarr volume on a dask cluster, into a new zarr array.

    The output is written under ``.<name>.partial-<pid>`` beside ``output_path`` and renamed
    when every block is done; an error in any task, or Ctrl-C, removes it.

    Parameters
    ----------
    model_source : str
        What :func:`napari_patchwork.io.load_model` takes (``'demo'``, a TorchScript or
        ``.pt2`` file, ``'module:factory'``): each worker loads it once. A model may return
        a dict (the output is then a zarr group, one array per key) and outputs scaled from
        the patch (``block_rows`` times the scale must be whole rows).
    input_path, output_path : path
        A zarr array or OME-Zarr image (``level`` picks the scale), and where to write.
    patch_size, patch_overlap, overlap_mode, batch_size, padding_mode, amp, tta
        As for :func:`napari_patchwork.infer`.
    workers : int
        Worker processes of the ``LocalCluster`` started when ``scheduler`` is None.
    scheduler : str, optional
        Address of a running scheduler (``'tcp://host:8786'``); the workers there must see
        both paths.
    block_rows : int
        Rows per task (and the output's chunk rows along the first axis).
    labels : bool
        Write a uint8 label map (argmax, or logit > 0) instead of raw float32 outputs.
    activation : {'softmax', 'sigmoid', 'none'}, optional
        As ``output_activation`` of :func:`napari_patchwork.infer`.

    Returns
    -------
    zarr.Array or dict of zarr.Array
        The output, ``(C, I, J, K)`` float32 (uint8 with ``labels``), by key for dict models.

    Raises
    ------
    CorruptChunkError
        A chunk of the input cannot be read (names the store and chunk).

    Examples
    --------
    >>> import tempfile, zarr, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> source = zarr.create_array(f"{folder}/in.zarr", shape=(1, 40, 16, 16), dtype="float32")
    >>> source[:] = np.random.rand(1, 40, 16, 16)
    >>> result = infer_dask("demo", f"{folder}/in.zarr", f"{folder}/out.zarr", patch_size=16,
    ...                     patch_overlap=4, workers=1, block_rows=16)  # doctest: +SKIP
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if not isinstance(block_rows, int) or isinstance(block_rows, bool) or block_rows < 1:
        raise ValueError(f"block_rows must be a positive int, got {block_rows!r}")
    config = InferenceConfig(
        patch_size,
        patch_overlap,
        overlap_mode,
        batch_size,
        amp=amp,
        padding_mode=padding_mode,
        tta=tta,
    )
    zarr_target(output_path, overwrite=overwrite, activation=activation)  # checks both
    volume = LazyVolume(open_zarr(input_path, level))
    config.check_fits(volume.spatial_shape)  # before starting a cluster
    outputs = _probe(_model(str(model_source), None), volume, config)
    partial = partial_path(output_path)
    try:
        _create_output(outputs, volume, config, partial, block_rows, labels)
        job = BlockJob(
            str(model_source),
            str(input_path),
            level,
            str(partial),
            config.to_dict(),
            labels,
            activation,
        )
        blocks = plan_blocks(volume.spatial_shape[0], block_rows)
        _run_blocks(job, blocks, scheduler, workers, progress)
        replace_with(partial, Path(output_path), overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return _open_result(Path(output_path), list(outputs))


def _open_result(path: Path, names: list[str | None]) -> Any:
    import zarr

    if names == [None]:
        return zarr.open_array(str(path), mode="r")
    return {name: zarr.open_array(str(path / str(name)), mode="r") for name in names}


__all__ = ["BlockJob", "infer_dask", "plan_blocks", "run_block"]
