"""Tiled inference on a ``dask.distributed`` cluster, block by block, into one zarr array.

The volume is cut along its first axis into blocks aligned with the output's zarr chunks. Each
task runs exactly the patches touching its block (the block plus a halo of the patch overlap)
in the same order and with the same weights as a single-process run, and writes only its own
rows, so tasks never write the same chunk and the result equals ``infer(..., output=...)``
bit for bit. Each worker loads the model once (cached per model source).

Needs ``dask[distributed]`` and ``zarr`` (``pip install napari-patchwork[dask]``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .core.config import InferenceConfig
from .core.inference import TiledInference
from .core.lazy import LazyVolume, open_zarr
from .core.streaming import default_chunks, zarr_target

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
    output_path: str
    settings: dict[str, Any]
    labels: bool = False


def run_block(job: BlockJob, rows: tuple[int, int]) -> tuple[int, int]:
    """One task: infer the input rows ``[start, stop)`` into the existing zarr output."""
    config = InferenceConfig(**job.settings)
    target = zarr_target(job.output_path, rows=rows, labels=job.labels)
    engine = TiledInference(_model(job.model_source, job.settings.get("device")), config, target)
    for _ in engine.run(LazyVolume(open_zarr(job.input_path, job.level))):
        pass
    engine.result()
    return rows


def plan_blocks(rows: int, block_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of ``block_rows`` (the last one may be shorter)."""
    return [(start, min(start + block_rows, rows)) for start in range(0, rows, block_rows)]


def _create_output(
    model: Any,
    volume: LazyVolume,
    config: InferenceConfig,
    output_path: str,
    block_rows: int,
    overwrite: bool,
    labels: bool,
) -> tuple[int, ...]:
    """Probe the model on one patch for its channels and scale; create the zarr output."""
    import zarr

    probe = torch.zeros((1, volume.shape[0], *config.patch))
    with torch.no_grad():
        out = model(probe)
    if not isinstance(out, torch.Tensor):
        raise TypeError("the dask engine supports models returning one tensor")
    scale = [q / p for q, p in zip(out.shape[2:], config.patch)]
    if any(s != 1 for s in scale):
        raise ValueError("the dask engine needs outputs of the patch's size")
    if os.path.exists(output_path) and not overwrite:
        raise ValueError(f"output exists: '{output_path}' (pass overwrite=True to replace it)")
    shape = (1 if labels else int(out.shape[1]), *volume.spatial_shape)
    chunks = (shape[0], block_rows, *default_chunks(shape)[1:])
    dtype = "uint8" if labels else "float32"
    zarr.create_array(output_path, shape=shape, chunks=chunks, dtype=dtype, overwrite=True)
    return shape


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
) -> Any:
    """Tiled inference of a zarr volume on a dask cluster, into a new zarr array.

    Parameters
    ----------
    model_source : str
        What :func:`napari_patchwork.io.load_model` takes (``'demo'``, a TorchScript or
        ``.pt2`` file, ``'module:factory'``): each worker loads it once.
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

    Returns
    -------
    zarr.Array
        The output, ``(C, I, J, K)`` float32.

    Examples
    --------
    >>> import tempfile, zarr, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> source = zarr.create_array(f"{folder}/in.zarr", shape=(1, 40, 16, 16), dtype="float32")
    >>> source[:] = np.random.rand(1, 40, 16, 16)
    >>> result = infer_dask("demo", f"{folder}/in.zarr", f"{folder}/out.zarr", patch_size=16,
    ...                     patch_overlap=4, workers=1, block_rows=16)  # doctest: +SKIP
    """
    from dask.distributed import Client, LocalCluster

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
    volume = LazyVolume(open_zarr(input_path, level))
    config.check_fits(volume.spatial_shape)  # before starting a cluster
    _create_output(
        _model(str(model_source), None),
        volume,
        config,
        str(output_path),
        block_rows,
        overwrite,
        labels,
    )
    job = BlockJob(
        str(model_source), str(input_path), level, str(output_path), config.to_dict(), labels
    )
    blocks = plan_blocks(volume.spatial_shape[0], block_rows)
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    try:
        with Client(scheduler or cluster) as client:
            futures = [client.submit(run_block, job, rows, pure=False) for rows in blocks]
            from dask.distributed import as_completed

            for done, future in enumerate(as_completed(futures), start=1):
                future.result()  # re-raises a task's error here
                if progress is not None:
                    progress(done, len(blocks))
    finally:
        if cluster is not None:
            cluster.close()
    import zarr

    return zarr.open_array(str(output_path), mode="r")


__all__ = ["BlockJob", "infer_dask", "plan_blocks", "run_block"]
