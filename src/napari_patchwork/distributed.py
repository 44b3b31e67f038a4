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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Unpack

import torch

from napari_patchwork.core.data.lazy import LazyVolume
from napari_patchwork.core.inference.config import InferenceConfig, InferenceSettings
from napari_patchwork.core.inference.functional import TiledInference
from napari_patchwork.core.inference.streaming import StreamTarget, store_target, zarr_target

from .io.zarr_io import ZarrOutput, open_zarr

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
    count = config.batch_size if config.fixed_batch else 1
    probe = torch.zeros((count, volume.shape[0], *config.patch))
    with torch.no_grad():
        out = model(probe)
    if isinstance(out, torch.Tensor):
        return {None: out}
    if isinstance(out, dict) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
        return {str(key): value for key, value in out.items()}
    raise TypeError(f"the model must return a tensor or a dict of tensors, got {type(out)}")


def _create_outputs(
    outputs: dict[str | None, Any],
    volume: LazyVolume,
    config: InferenceConfig,
    target: StreamTarget,
    block_rows: int,
) -> None:
    """Create every output of the run (one array, or a group of one array per output).

    Each output's chunk rows are ``block_rows`` times its scale, so that no two tasks write
    the same chunk.
    """
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
        shape = (spatial[0], spatial[1], spatial[2])
        target.create(int(out.shape[1]), shape, name, round(rows))


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
            # no dashboard; the scheduler's HTTP routes on a free local port, not 8787 (which
            # another cluster may hold: distributed would warn and move)
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
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
    config: InferenceConfig | None = None,
    level: int = 0,
    workers: int = 2,
    scheduler: str | None = None,
    block_rows: int = 64,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    output_labels: bool = False,
    output_activation: str | None = None,
    **settings: Unpack[InferenceSettings],
) -> Any:
    """Tiled inference of a zarr volume on a dask cluster, into a new zarr array.

    Takes the settings of :func:`napari_patchwork.infer` by the same names (the fields of
    :class:`~napari_patchwork.core.inference.config.InferenceConfig`, or ``config=``), plus the
    engine's own. The output
    is written under ``.<name>.partial-<pid>`` beside ``output_path`` and renamed when every
    block is done; an error in any task, or Ctrl-C, removes it.

    Parameters
    ----------
    model_source : str
        What :func:`napari_patchwork.io.load_model` takes (``'demo'``, a TorchScript or
        ``.pt2`` file, ``'module:factory'``): each worker loads it once (on ``device``). A
        model may return a dict (the output is then a zarr group, one array per key) and
        outputs scaled from the patch (``block_rows`` times the scale must be whole rows).
    input_path, output_path : path
        A zarr array or OME-Zarr image (``level`` picks the scale), and where to write.
    config : InferenceConfig, optional
        All the settings at once (then no ``**settings``).
    level : int
        The OME-Zarr scale to read (0: the finest).
    workers : int
        Worker processes of the ``LocalCluster`` started when ``scheduler`` is None.
    scheduler : str, optional
        Address of a running scheduler (``'tcp://host:8786'``); the workers there must see
        both paths.
    block_rows : int
        Rows per task (and the output's chunk rows along the first axis).
    overwrite : bool
        Replace an existing ``output_path`` once the new output is complete.
    progress : callable, optional
        ``progress(done, total)`` after each finished block.
    output_labels, output_activation
        As for :func:`napari_patchwork.infer`.
    **settings
        ``patch_size`` (required), ``patch_overlap``, ``overlap_mode``, ``batch_size``,
        ``device``, ``aggregate_device``, ``amp``, ``padding_mode``, ``tta``,
        ``fixed_batch``, ``compile``: see
        :class:`~napari_patchwork.core.inference.config.InferenceConfig`.

    Returns
    -------
    zarr.Array or dict of zarr.Array
        The output, ``(C, I, J, K)`` float32 (uint8 with ``output_labels``), by key for dict
        models.

    Raises
    ------
    TypeError
        For a setting ``InferenceConfig`` does not have, or ``config`` with settings.
    ValueError
        For a bad setting, ``workers`` or ``block_rows``, or an existing output.
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
    config = InferenceConfig.resolve(config, **settings)  # names an unknown setting
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if not isinstance(block_rows, int) or isinstance(block_rows, bool) or block_rows < 1:
        raise ValueError(f"block_rows must be a positive int, got {block_rows!r}")
    if not isinstance(output_labels, bool):
        raise TypeError(f"output_labels must be True or False, got {output_labels!r}")
    store = ZarrOutput(output_path, overwrite=overwrite, labels=output_labels)
    target = store_target(store, labels=output_labels, activation=output_activation)
    volume = LazyVolume(open_zarr(input_path, level))
    config.check_fits(volume.spatial_shape)  # before starting a cluster
    if config.harmonisation is not None:  # the whole input's field, once, for every block
        config = replace(config, harmonisation=config.harmonisation.bound(volume))
    outputs = _probe(_model(str(model_source), None), volume, config)
    try:
        _create_outputs(outputs, volume, config, target, block_rows)
        job = BlockJob(
            str(model_source),
            str(input_path),
            level,
            str(store.partial),
            config.to_dict(),
            output_labels,
            output_activation,
        )
        blocks = plan_blocks(volume.spatial_shape[0], block_rows)
        _run_blocks(job, blocks, scheduler, workers, progress)
        assert target.commit is not None
        result = target.commit(list(outputs))
    except BaseException:
        store.discard()
        raise
    return result[None] if list(result) == [None] else result


__all__ = ["BlockJob", "infer_dask", "plan_blocks", "run_block"]
