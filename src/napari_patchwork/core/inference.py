"""Tiled (sliding-window) inference: grid plan → gathered batches → model → grid merger.

``iter_infer`` yields an :class:`InferenceStep` after every batch (what the napari widget and
the CLI consume); ``infer`` runs the same generator to the end and returns the volume.
"""

from __future__ import annotations

import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import InferenceConfig
from .grid import GridPlan
from .image import Image, _as_tensor
from .lazy import LazyVolume, is_lazy_array
from .location import PatchLocation
from .merger import GridMerger
from .patches import PatchGatherer
from .streaming import (
    StreamingMerger,
    StreamTarget,
    aligned_chunk_rows,
    block_ranks,
    zarr_target,
)
from .subject import Subject

Output = torch.Tensor | dict[str, torch.Tensor]
_PLAIN = "__tensor__"
_FLIPS = [dims for n in range(4) for dims in itertools.combinations((2, 3, 4), n)]


@dataclass
class InferenceStep:
    """Progress after one batch.

    Attributes
    ----------
    done, total : int
        Patches processed so far, and in all.
    locations : list of PatchLocation
        The batch's patches (input coordinates).
    region : tuple of slice, or dict of them
        The output voxels the batch touched (per output name for dict models).
    output : torch.Tensor or dict of torch.Tensor
        The normalised aggregate so far over ``region`` (a copy of that region only).
    elapsed : float
        Seconds since the run started.
    """

    done: int
    total: int
    locations: list[PatchLocation]
    region: Any
    output: Any
    elapsed: float
    _engine: TiledInference = field(repr=False)

    def full_output(self) -> Output:
        """The whole normalised output so far (a full-volume copy: call it sparingly)."""
        return self._engine.partial_output(self.done)


def _as_volume(image: Any, image_name: str | None) -> torch.Tensor | LazyVolume:
    if not isinstance(image, (Subject, Image)) and is_lazy_array(image):
        return image if isinstance(image, LazyVolume) else LazyVolume(image)
    if isinstance(image, Subject):
        if image_name is None:
            raise ValueError(
                f"image_name is required for a Subject; images: {list(image.get_images_dict())}"
            )
        image = image.check_image(image_name, "image_name")
    if isinstance(image, Image):  # a lazily backed image stays lazy
        return image.lazy_volume if image.lazy_volume is not None else image.data
    if isinstance(image, (torch.Tensor, np.ndarray)):
        volume = _as_tensor(image, "image")
        if volume.is_complex() or volume.dtype == torch.bool:
            raise TypeError(f"image must hold real numbers, got dtype {volume.dtype}")
        return volume
    raise TypeError(
        "image must be a (C, I, J, K) tensor or array, a ScalarImage or a Subject,"
        f" got {type(image)}"
    )


def _model_device(model: Any, device: torch.device | None) -> torch.device:
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if device is None:
        return parameter.device if parameter is not None else torch.device("cpu")
    if parameter is not None and parameter.device.type != device.type:
        raise ValueError(
            f"device={device} but the model's parameters are on {parameter.device};"
            " move the model first"
        )
    return device


def _check_outputs(outputs: Any, batch_size: int) -> dict[str, torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        outputs = {_PLAIN: outputs}
    elif not isinstance(outputs, Mapping) or not outputs:
        raise TypeError(f"the model must return a tensor or a dict of tensors, got {type(outputs)}")
    for key, tensor in outputs.items():
        name = "output" if key == _PLAIN else f"output[{key!r}]"
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"the model's {name} must be a tensor, got {type(tensor)}")
        if tensor.ndim != 5 or tensor.shape[0] != batch_size:
            raise ValueError(
                f"the model's {name} must be (B={batch_size}, C, I, J, K),"
                f" got shape {tuple(tensor.shape)}"
            )
    return dict(outputs)


class TiledInference:
    """Runs a model over a volume patch by patch and blends the outputs.

    Parameters
    ----------
    model : callable
        Maps ``(B, C, P, P, P)`` to ``(B, C', Q, Q, Q)`` (Q an integer multiple or divisor of P)
        or to a dict of such tensors. It is called as given (put it in ``eval()`` mode and on
        its device first).
    config : InferenceConfig
        The run's settings.

    Examples
    --------
    >>> engine = TiledInference(lambda x: 2 * x, InferenceConfig(patch_size=4, patch_overlap=2))
    >>> volume = torch.rand(1, 6, 6, 6)
    >>> steps = list(engine.run(volume))
    >>> steps[-1].done, torch.allclose(engine.result(), 2 * volume)
    (8, True)
    """

    def __init__(
        self, model: Callable[..., Any], config: InferenceConfig, stream: StreamTarget | None = None
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model)}")
        if not isinstance(config, InferenceConfig):
            raise TypeError(f"config must be an InferenceConfig, got {type(config)}")
        self.model, self.config, self.stream = model, config, stream
        self.ranks = range(0)
        self.device = _model_device(model, config.device)
        self.mergers: dict[str, GridMerger] = {}
        self.plan: GridPlan | None = None
        self.done = 0
        self._fell_back = False
        self._streamed: dict[str, Any] | None = None  # the committed outputs of a streamed run

    # ------------------------------------------------------------------ run
    def run(
        self, image: Any, image_name: str | None = None, previews: bool = True
    ) -> Generator[InferenceStep, None, None]:
        """Process every patch, yielding a step after each batch; closing it cancels."""
        volume = _as_volume(image, image_name)
        config = self.config
        padded = config.padding_mode is not None
        config.check_fits(volume.shape[1:])
        self.plan = GridPlan(volume.shape[1:], config.patch, config.overlap, padded)
        self.ranks = block_ranks(self.plan, self.stream.rows if self.stream else None)
        previews = previews and self.stream is None
        self.mergers, self.done, self._streamed = {}, self.ranks.start, None
        if isinstance(volume, LazyVolume):
            volume.slab_rows = config.patch[0]  # one patch height of input rows in memory
        gatherer = PatchGatherer(volume, config.padding_mode)
        start = time.perf_counter()
        prefetcher = _Prefetcher(gatherer, self.plan, config.batch_size, self.device, self.ranks)
        try:
            with prefetcher as batches:
                for first, stop, batch in batches:
                    self._process(batch, first)
                    self.done = stop
                    if self.stream is not None and stop == self.ranks.stop:
                        self._finish_stream()  # the last rows, renamed, before the last step
                    yield self._step(first, stop, start, previews)
        except BaseException:  # failed, cancelled (GeneratorExit) or interrupted
            self._discard_stream()
            raise
        finally:
            if isinstance(volume, LazyVolume):
                volume.release()

    def _finish_stream(self) -> None:
        """Write the last rows of every streamed output, then commit (rename) the store."""
        assert self.stream is not None
        for merger in self.mergers.values():
            merger.finalize()
        if self.stream.commit is None:
            self._streamed = {k: m.sink for k, m in self.mergers.items()}  # type: ignore[attr-defined]
            return
        names = [None if key == _PLAIN else key for key in self.mergers]
        finished = self.stream.commit(names)
        self._streamed = {key: finished[name] for key, name in zip(self.mergers, names)}

    def _discard_stream(self) -> None:
        if self.stream is not None and self._streamed is None and self.stream.discard is not None:
            self.stream.discard()

    def _process(self, batch: torch.Tensor, first: int) -> None:
        try:
            outputs = self._forward(batch)
            self._merge(outputs, first)
        except torch.cuda.OutOfMemoryError:
            if self._fell_back:
                raise
            self._fall_back_to_cpu()
            self._merge(self._forward(batch), first)

    def _fall_back_to_cpu(self) -> None:
        warnings.warn(
            "out of memory: aggregating on the CPU from now on (run continues)",
            RuntimeWarning,
            stacklevel=4,
        )
        self._fell_back = True
        for merger in self.mergers.values():
            merger.to(torch.device("cpu"))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        count = batch.shape[0]
        if self.config.fixed_batch and count < self.config.batch_size:
            extra = batch[-1:].expand(self.config.batch_size - count, *batch.shape[1:])
            outputs = self._call(torch.cat([batch, extra]))
            return {key: value[:count] for key, value in outputs.items()}
        return self._call(batch)

    def _call(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        autocast = torch.autocast(self.device.type, dtype=amp_dtype, enabled=self.config.amp)
        with torch.no_grad(), autocast:
            if not self.config.tta:
                return _check_outputs(self.model(batch), batch.shape[0])
            total: dict[str, torch.Tensor] = {}
            for dims in _FLIPS:
                flipped = _check_outputs(
                    self.model(batch.flip(dims) if dims else batch), batch.shape[0]
                )
                for key, value in flipped.items():
                    value = value.float().flip(dims) if dims else value.float()
                    total[key] = total[key].add_(value) if key in total else value.clone()
            return {key: value / len(_FLIPS) for key, value in total.items()}

    def _merge(self, outputs: dict[str, torch.Tensor], first: int) -> None:
        if not self.mergers:
            self._create_mergers(outputs)
        if set(outputs) != set(self.mergers):
            raise ValueError(
                f"the model's output keys changed from {sorted(self.mergers)} to {sorted(outputs)}"
            )
        for key, tensor in outputs.items():
            merger = self.mergers[key]
            if tuple(tensor.shape[1:]) != (merger.values.shape[0], *merger.output_patch):
                raise ValueError(f"the model's output shape changed to {tuple(tensor.shape)}")
            merger.add(tensor, first)

    def _create_mergers(self, outputs: dict[str, torch.Tensor]) -> None:
        assert self.plan is not None
        for tensor in outputs.values():
            patch = tuple(tensor.shape[2:])
            if any(q % p and p % q for q, p in zip(patch, self.plan.patch_size)):
                raise ValueError(
                    f"the model's output patch {patch} is not an integer scale of the input patch "
                    f"{self.plan.patch_size}"
                )
        device = self._choose_aggregate_device(outputs)
        for key, tensor in outputs.items():
            if self.stream is not None:
                self.mergers[key] = self._streaming_merger(key, tensor, device)
                continue
            self.mergers[key] = GridMerger(
                self.plan,
                self.config.overlap_mode,
                tensor.shape[1],
                tuple(tensor.shape[2:]),
                device,  # type: ignore[arg-type]
            )

    def _streaming_merger(
        self, key: str, tensor: torch.Tensor, device: torch.device
    ) -> StreamingMerger:
        assert self.plan is not None and self.stream is not None
        patch: tuple[int, int, int] = tuple(tensor.shape[2:])  # type: ignore[assignment]
        factors = [q / p for q, p in zip(patch, self.plan.patch_size)]
        shape = tuple(int(s * f + 1e-9) for s, f in zip(self.plan.spatial_shape, factors))
        starts = [math.floor(s * factors[0] + 1e-9) for s in self.plan.starts[0]]
        name = None if key == _PLAIN else key
        chunk_rows = aligned_chunk_rows(starts, shape[0])
        sink = self.stream.create(tensor.shape[1], shape, name, chunk_rows)  # type: ignore[arg-type]
        return StreamingMerger(
            self.plan,
            self.config.overlap_mode,
            tensor.shape[1],
            patch,
            device,
            sink,
            self.stream.rows,
            self.stream.transform,
        )

    def _choose_aggregate_device(self, outputs: dict[str, torch.Tensor]) -> torch.device:
        if self.config.aggregate_device is not None:
            return self.config.aggregate_device
        if self.stream is not None:  # a slab: small, next to the model
            return self.device
        if self._fell_back:
            return torch.device("cpu")
        if self.device.type != "cuda":
            return self.device
        assert self.plan is not None
        voxels = int(np.prod(self.plan.spatial_shape))
        needed = sum(
            t.shape[1] * voxels * (t.shape[2] / self.plan.patch_size[0]) ** 3 * 4
            for t in outputs.values()
        )
        free, _ = torch.cuda.mem_get_info(self.device)
        if needed * 1.2 < free:
            return self.device
        warnings.warn(
            f"the output ({needed / 2**30:.1f} GiB) does not fit on {self.device};"
            " aggregating on the CPU",
            RuntimeWarning,
            stacklevel=5,
        )
        return torch.device("cpu")

    # ------------------------------------------------------------------ results
    def _step(self, first: int, stop: int, start: float, previews: bool) -> InferenceStep:
        assert self.plan is not None
        regions, outputs = {}, {}
        if previews:
            for key, merger in self.mergers.items():
                boxes = [merger.region(rank) for rank in range(first, stop)]
                box = tuple(
                    slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))
                    for a in range(3)
                )
                regions[key], outputs[key] = box, merger.normalized(stop, box)
        return InferenceStep(
            stop,
            self.ranks.stop,
            self.plan.locations(first, stop),
            _unwrap(regions),
            _unwrap(outputs),
            time.perf_counter() - start,
            self,
        )

    def partial_output(self, done: int | None = None) -> Output:
        """Normalised copy of the output of the first ``done`` patches (default: all done)."""
        if not self.mergers:
            raise RuntimeError("no batch has been processed yet")
        done = self.done if done is None else done
        everything = (slice(None), slice(None), slice(None))
        return _unwrap({key: m.normalized(done, everything) for key, m in self.mergers.items()})

    def result(self) -> Output:
        """Normalise the finished output in place and return it (no copy)."""
        if self.plan is None or self.done != self.ranks.stop:
            raise RuntimeError("the run has not finished; use partial_output() for what is done")
        if self.stream is not None:
            if self._streamed is None:
                self._finish_stream()
            assert self._streamed is not None
            return _unwrap(self._streamed)
        outputs = {key: merger.finalize() for key, merger in self.mergers.items()}
        for key, tensor in outputs.items():
            if not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
                warnings.warn(
                    "the model returned NaN or infinite values"
                    f" ({key if key != _PLAIN else 'output'})",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return _unwrap(outputs)


def _unwrap(values: dict[str, Any]) -> Any:
    return values[_PLAIN] if set(values) == {_PLAIN} else values


class _Prefetcher:
    """Gathers batch n + 1 (and copies it to the device) while the model runs on batch n."""

    def __init__(
        self,
        gatherer: PatchGatherer,
        plan: GridPlan,
        batch_size: int,
        device: torch.device,
        ranks: range | None = None,
    ) -> None:
        self.gatherer, self.plan, self.device = gatherer, plan, device
        ranks = range(len(plan)) if ranks is None else ranks
        self.ranges = [
            (f, min(f + batch_size, ranks.stop)) for f in range(ranks.start, ranks.stop, batch_size)
        ]
        shape = (min(batch_size, len(plan)), gatherer.volume.shape[0], *plan.patch_size)
        pin = device.type == "cuda"
        count = 1 if device.type == "cpu" else 2  # on the CPU a batch is used before the next
        self.buffers = [
            torch.empty(shape, dtype=torch.float32, pin_memory=pin) for _ in range(count)
        ]
        self.events: list[Any] = [None, None]
        self.inference_mode = torch.is_inference_mode_enabled()  # thread-local: mirror the caller's
        self.executor = (
            ThreadPoolExecutor(1, thread_name_prefix="patchwork-prefetch")
            if device.type != "cpu"
            else None
        )

    def _prepare(self, index: int) -> torch.Tensor:
        first, stop = self.ranges[index]
        slot = index % len(self.buffers)
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the device copy from this buffer has finished
        with torch.inference_mode(self.inference_mode):
            batch = self.gatherer.gather(self.plan.locations(first, stop), out=self.buffers[slot])
        if self.device.type == "cpu":
            return batch
        moved = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self.events[slot] = torch.cuda.Event()
            self.events[slot].record()
        return moved

    def __enter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        return self._batches()

    def _batches(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        if self.executor is None:  # CPU: a second thread only fights the model's OpenMP threads
            for index, (first, stop) in enumerate(self.ranges):
                yield first, stop, self._prepare(index)
            return
        future = self.executor.submit(self._prepare, 0)
        for index, (first, stop) in enumerate(self.ranges):
            batch = future.result()
            if index + 1 < len(self.ranges):
                future = self.executor.submit(self._prepare, index + 1)
            yield first, stop, batch

    def __exit__(self, *_: Any) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def _config(kwargs: dict[str, Any]) -> tuple[InferenceConfig, dict[str, Any]]:
    names = InferenceConfig.__dataclass_fields__
    config = InferenceConfig(**{k: v for k, v in kwargs.items() if k in names})
    return config, {k: v for k, v in kwargs.items() if k not in names}


def iter_infer(
    model: Callable[..., Any], image: Any, *, image_name: str | None = None, **settings: Any
) -> Iterator[InferenceStep]:
    """Tiled inference as a generator of :class:`InferenceStep`, one per batch.

    Takes the arguments of :func:`infer`. Breaking out of the loop (closing the generator)
    cancels cleanly; ``step.full_output()`` of the last step is the partial output, exact for
    finished patches.

    Examples
    --------
    >>> volume = torch.rand(1, 8, 8, 8)
    >>> steps = iter_infer(lambda x: x, volume, patch_size=4, batch_size=2)
    >>> first = next(steps)
    >>> first.done, first.total, first.output.shape
    (2, 8, torch.Size([1, 4, 4, 8]))
    >>> steps.close()
    """
    config, rest = _config(settings)
    if rest:
        raise TypeError(f"unexpected arguments: {sorted(rest)}")
    return TiledInference(model, config).run(image, image_name)


def infer(
    model: Callable[..., Any],
    image: Any,
    *,
    patch_size: Any,
    patch_overlap: Any = 0,
    overlap_mode: str = "gaussian",
    batch_size: int = 4,
    device: Any = None,
    aggregate_device: Any = None,
    amp: bool = False,
    padding_mode: str | float | None = None,
    tta: bool = False,
    progress: bool = False,
    image_name: str | None = None,
    output: str | os.PathLike[str] | None = None,
    output_chunks: tuple[int, int, int] | None = None,
    overwrite: bool = False,
    output_labels: bool = False,
    output_activation: str | None = None,
) -> Output:
    """Run ``model`` over ``image`` patch by patch and return the blended ``(C', I, J, K)`` output.

    Parameters
    ----------
    model : callable
        ``(B, C, P, P, P) -> (B, C', Q, Q, Q)`` or a dict of such outputs (then a dict is
        returned). Outputs smaller than the patch (Q = P / k) give outputs of shape
        ``(I, J, K) * Q / P``.
    image : tensor, array, ScalarImage or Subject
        ``(C, I, J, K)`` input (any real dtype; converted to float32 patch by patch).
    patch_size, patch_overlap, overlap_mode, batch_size
        See :class:`InferenceConfig`.
    device, aggregate_device, amp, padding_mode, tta
        See :class:`InferenceConfig`.
    progress : bool
        Show a progress bar (tqdm when installed).
    image_name : str, optional
        Which image of a ``Subject`` to use.
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
        cover whole chunks, and 64 in-plane).
    overwrite : bool
        Replace an existing ``output`` (once the new one is complete).
    output_labels : bool
        Write a uint8 label map (argmax over channels, or logit > 0) instead of raw outputs.
    output_activation : {'softmax', 'sigmoid', 'none'}, optional
        Write probabilities instead of raw outputs; with ``output_labels``, the one-channel
        threshold (logit > 0, or 0.5 with ``'none'``; an argmax does not depend on it).

    Raises
    ------
    CorruptChunkError
        A chunk of a zarr ``image`` cannot be read (the message names the store and chunk).

    Examples
    --------
    >>> volume = torch.rand(1, 10, 10, 10)
    >>> output = infer(lambda x: x, volume, patch_size=6, patch_overlap=2)
    >>> torch.allclose(output, volume)
    True
    """
    config = InferenceConfig(
        patch_size,
        patch_overlap,
        overlap_mode,
        batch_size,
        device,
        aggregate_device,
        amp,
        padding_mode,
        tta,
    )
    stream = None
    if output is not None:
        stream = zarr_target(
            output,
            chunks=output_chunks,
            overwrite=overwrite,
            labels=output_labels,
            activation=output_activation,
        )
    engine = TiledInference(model, config, stream)
    steps = engine.run(image, image_name, previews=False)
    bar = _progress_bar(progress)
    try:
        for step in steps:
            bar(step.done, step.total)
    except BaseException:  # e.g. Ctrl-C between two batches: the partial output is removed
        steps.close()
        raise
    return engine.result()


def _progress_bar(enabled: bool) -> Callable[[int, int], None]:
    if not enabled:
        return lambda done, total: None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        import sys

        return lambda done, total: print(
            f"\rpatches {done}/{total}", end="\n" if done == total else "", file=sys.stderr
        )
    bars: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="patch"))
        bars[0].update(done - bars[0].n)
        if done == total:
            bars[0].close()

    return update
