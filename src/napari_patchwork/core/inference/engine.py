"""``TiledInference``: the engine of a tiled (sliding-window) run.

Grid plan → gathered batches (:mod:`.prefetch`) → model → grid merger (:mod:`.merger`), or a
streaming merger writing finished rows to a sink (:mod:`.streaming`). ``run`` yields an
:class:`InferenceStep` after every batch; the functional API (:mod:`.inference`) drives it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from napari_patchwork.core.data.harmonisation import Harmonisation, HarmonisedArray
from napari_patchwork.core.data.image import Image, _as_tensor
from napari_patchwork.core.data.lazy import LazyVolume, is_lazy_array
from napari_patchwork.core.data.location import PatchLocation
from napari_patchwork.core.data.subject import Subject
from napari_patchwork.core.inference.config import InferenceConfig
from napari_patchwork.core.inference.grid import GridPlan, planned_grid
from napari_patchwork.core.inference.merger import GridMerger
from napari_patchwork.core.inference.patches import PatchGatherer
from napari_patchwork.core.inference.prefetch import Prefetcher
from napari_patchwork.core.inference.streaming import (
    StreamingMerger,
    StreamTarget,
    aligned_chunk_rows,
    block_ranks,
    return_freed_memory,
)

Output = torch.Tensor | dict[str, torch.Tensor]
_PLAIN = "__tensor__"
_T = TypeVar("_T")
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
        """The whole normalised output so far (a full-volume copy: call it sparingly).

        Valid for the newest step: the engine keeps one buffer, whose finished rows are
        already divided by their weights."""
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
        return volume.detach()  # inference needs no gradient to the input (iter_infer failed)
    raise TypeError(
        "image must be a (C, I, J, K) tensor or array, a ScalarImage or a Subject,"
        f" got {type(image)}"
    )


def _harmonised(
    volume: torch.Tensor | LazyVolume, harmonisation: Harmonisation | None
) -> torch.Tensor | LazyVolume:
    """The volume mapped onto the training volume's intensities (lazily for a lazy volume)."""
    if harmonisation is None:
        return volume
    if isinstance(volume, torch.Tensor):
        return harmonisation.apply(volume)
    bound = harmonisation.bound(volume)
    return LazyVolume(HarmonisedArray(volume.array, bound), slab_rows=volume.slab_rows)


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
        self.device = _model_device(model, config.device)  # from the model's own parameters
        if config.compile:
            model = torch.compile(model, dynamic=False)
        self.model, self.config, self.stream = model, config, stream
        self.ranks = range(0)
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
        config = self.config
        volume = _harmonised(_as_volume(image, image_name), config.harmonisation)
        padded = config.padding_mode is not None
        config.check_fits(volume.shape[1:])
        self.plan = planned_grid(tuple(volume.shape[1:]), config.patch, config.overlap, padded)
        self.ranks = block_ranks(self.plan, self.stream.rows if self.stream else None)
        previews = previews and self.stream is None
        self.mergers, self.done, self._streamed = {}, self.ranks.start, None
        if isinstance(volume, LazyVolume):
            volume.slab_rows = config.patch[0]  # one patch height of input rows in memory
        if self.stream is not None:
            return_freed_memory()  # before zarr's threads and the model free large blocks
        gatherer = PatchGatherer(volume, config.padding_mode)
        start = time.perf_counter()
        prefetcher = Prefetcher(gatherer, self.plan, config.batch_size, self.device, self.ranks)
        try:
            with prefetcher as batches:
                for first, stop, locations, batch in batches:
                    self._process(batch, first)
                    self.done = stop
                    if self.stream is not None and stop == self.ranks.stop:
                        self._finish_stream()  # the last rows, renamed, before the last step
                    yield self._step(first, stop, locations, start, previews)
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
        """The model on one batch, without autograd (under autocast with ``amp``)."""
        if not self.config.amp and not torch.is_grad_enabled():
            return self._apply(batch)  # grad off already (infer's run, inference_mode)
        autocast: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.config.amp:
            amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
            autocast = torch.autocast(self.device.type, dtype=amp_dtype)
        with torch.no_grad(), autocast:
            return self._apply(batch)

    def _apply(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's checked outputs (averaged over the 8 flips with ``tta``)."""
        if not self.config.tta:
            return _check_outputs(self.model(batch), batch.shape[0])
        total: dict[str, torch.Tensor] = {}
        for dims in _FLIPS:
            flipped = self.model(batch.flip(dims) if dims else batch)
            flipped = _check_outputs(flipped, batch.shape[0])
            for key, value in flipped.items():
                value = value.float().flip(dims) if dims else value.float()
                total[key] = total[key].add_(value) if key in total else value.clone()
        return {key: value / len(_FLIPS) for key, value in total.items()}

    def _merge(self, outputs: dict[str, torch.Tensor], first: int) -> None:
        if not self.mergers:
            self._create_mergers(outputs)
        if outputs.keys() != self.mergers.keys():
            raise ValueError(
                f"the model's output keys changed from {sorted(self.mergers)} to {sorted(outputs)}"
            )
        for key, tensor in outputs.items():
            merger = self.mergers[key]
            if tensor.shape[1:] != merger.patch_shape:
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
                _spatial(tensor),
                device,
            )

    def _streaming_merger(
        self, key: str, tensor: torch.Tensor, device: torch.device
    ) -> StreamingMerger:
        assert self.plan is not None and self.stream is not None
        patch = _spatial(tensor)
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
            return torch.device(self.config.aggregate_device)
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
    def _step(
        self,
        first: int,
        stop: int,
        locations: list[PatchLocation],
        start: float,
        previews: bool,
    ) -> InferenceStep:
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
            locations,
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

    def result(self) -> Any:
        """Normalise the finished output in place and return it (no copy).

        A tensor, or a dict of them for a model returning a dict; for a streamed run, what the
        stream's ``commit`` returned (e.g. zarr arrays) or its sinks."""
        if self.plan is None or self.done != self.ranks.stop:
            raise RuntimeError("the run has not finished; use partial_output() for what is done")
        if self.stream is not None:
            if self._streamed is None:
                self._finish_stream()
            assert self._streamed is not None
            return _unwrap(self._streamed)
        outputs = {key: merger.finalize() for key, merger in self.mergers.items()}
        for key, merger in self.mergers.items():
            if not merger.all_finite():
                warnings.warn(
                    "the model returned NaN or infinite values"
                    f" ({key if key != _PLAIN else 'output'})",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return _unwrap(outputs)


def _unwrap(values: dict[str, _T]) -> _T | dict[str, _T]:
    return values[_PLAIN] if set(values) == {_PLAIN} else values


def _spatial(tensor: torch.Tensor) -> tuple[int, int, int]:
    """The spatial size of a ``(B, C, I, J, K)`` output."""
    return (int(tensor.shape[2]), int(tensor.shape[3]), int(tensor.shape[4]))
