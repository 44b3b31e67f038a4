"""Interactive training from sparse annotations: a few painted strokes per class, a 3D network.

Built from the patch pipeline: each image/annotation pair becomes a ``Subject``; a
:class:`LabelSampler` draws patch centres balanced over the annotated classes; a
:class:`Queue` loads and augments (:mod:`.augmentation`) the subjects in a background thread;
a loss over annotated voxels only (0 = not annotated) trains the network. :class:`Trainer`
keeps the weights between runs, so *Continue* after painting corrections resumes from them.
"""

import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_patchwork.core.batching.queue import Queue
from napari_patchwork.core.data.harmonisation import Harmonisation, IntensityField
from napari_patchwork.core.data.image import LabelMap, ScalarImage
from napari_patchwork.core.data.subject import Subject
from napari_patchwork.core.inference.grid import fit_patch, quarter_overlap
from napari_patchwork.core.training.annotations import (
    annotated_reach,
    as_annotations,
    as_pairs,
    as_volume,
)
from napari_patchwork.core.training.augmentation import RandomAugmentation
from napari_patchwork.core.training.batches import BalancedSampler, BatchStream
from napari_patchwork.core.training.config import (
    INITS,
    Region,
    TrainingConfig,
    check_positive,
    merged_config,
)
from napari_patchwork.core.training.networks import (
    NormalizedNet,
    annotation_loss,
    check_output,
    new_network,
    saved_network,
)


def _check_patch_fits(patch: int, images: list[torch.Tensor]) -> None:
    """Refuse a patch larger than an image in every direction: all padding, slow (patch 66
    on 64 x 64 x 48: 8 s a step) or out of memory (256: the system killed the process)."""
    for number, image in enumerate(images, 1):
        if all(patch > size for size in image.shape[1:]):
            suffix = f" {number}" if len(images) > 1 else ""
            largest = max(4, max(image.shape[1:]) // 2 * 2)  # even, >= 4, as patch_size must be
            raise ValueError(
                f"patch_size {patch} is larger than image{suffix} in every direction"
                f" {tuple(image.shape[1:])}: use at most {largest}"
            )


def _window(box: slice, size: int, patch: int) -> slice:
    """The voxels read to predict ``box`` on an axis of ``size``: half a patch of context on
    each side, at least a patch wide where the axis allows (slid inward at the borders: a
    window cut short there would be padded with copies of voxels the image has)."""
    half = patch // 2
    lo, hi = max(box.start - half, 0), min(box.stop + half, size)
    if hi - lo < patch:
        lo, hi = (0, min(patch, size)) if lo == 0 else (max(size - patch, 0), size)
    return slice(lo, hi)


@dataclass(frozen=True)
class Prediction:
    """The model's prediction over a region of an image.

    Attributes
    ----------
    region : tuple of 3 slice
        Where it lies in the image (voxels).
    labels : numpy.ndarray
        ``(I, J, K)`` annotation values (the classes' own values, e.g. 1 and 2).
    probabilities : numpy.ndarray
        ``(C, I, J, K)`` float32 softmax, channel ``c`` for ``class_values[c]``.
    painted_agreement : float or None
        Fraction of the painted voxels in the region that the prediction gives their painted
        class (predictions of the first training image only; None where nothing is painted).
        A training score, not a test score: strokes are what the model learns from.
    """

    region: Region
    labels: np.ndarray
    probabilities: np.ndarray
    painted_agreement: float | None = None


@dataclass(frozen=True)
class TrainingStep:
    """Progress after one optimisation step.

    Attributes
    ----------
    iteration : int
        Steps done by the trainer in all runs.
    loss : float
        This step's loss (annotated voxels only).
    elapsed : float
        Seconds since this run started.
    patches_per_second : float
        Training patches processed per second in this run.
    wait_fraction : float
        Fraction of this run spent waiting for patches.
    preview : Prediction or None
        Present when a preview was requested and was due.
    """

    iteration: int
    loss: float
    elapsed: float
    patches_per_second: float
    wait_fraction: float
    preview: Prediction | None = None


def loss_text(loss: float) -> str:
    """A loss as progress lines show it: three decimals, or two significant digits below
    0.001 (a well-trained run's loss read "0.000" in a user test).

    Examples
    --------
    >>> loss_text(0.6931), loss_text(0.00042), loss_text(0.0)
    ('0.693', '4.2e-04', '0')
    """
    if loss == 0:
        return "0"
    return f"{loss:.3f}" if abs(loss) >= 0.001 else f"{loss:.1e}"


def _progress(
    done: int, iterations: int | None, elapsed: float, seconds: float | None
) -> float | None:
    """Fraction of the run's budget used (the larger of steps and time), None without one."""
    fractions = []
    if iterations is not None:
        fractions.append(done / iterations)
    if seconds is not None:
        fractions.append(elapsed / seconds)
    return max(fractions) if fractions else None


class Trainer:
    """Trains a 3D network on sparse annotations; keeps its weights between runs.

    Parameters
    ----------
    pairs : (image, annotations) or list of them
        Images ``(I, J, K)`` or ``(C, I, J, K)`` (arrays, tensors, ``ScalarImage`` or NIfTI
        paths) and annotations of the same shape: 0 = not annotated, ``v > 0`` = class ``v``.
    config : TrainingConfig, optional
        The settings (defaults if omitted).

    Examples
    --------
    >>> image = torch.rand(12, 12, 12)
    >>> strokes = torch.zeros(12, 12, 12, dtype=torch.int64)
    >>> strokes[2:4, 2:4, 2:4], strokes[8:10, 8:10, 8:10] = 1, 2
    >>> trainer = Trainer((image, strokes), TrainingConfig(patch_size=8, iterations=2, width=2))
    >>> [step.iteration for step in trainer.run()], trainer.class_values
    ([1, 2], [1, 2])
    >>> trainer.predict().labels.shape
    (12, 12, 12)
    """

    def __init__(self, pairs: Any, config: TrainingConfig | None = None) -> None:
        if config is not None and not isinstance(config, TrainingConfig):
            raise TypeError(f"config must be a TrainingConfig, got {type(config)}")
        self.config = config or TrainingConfig()
        self.device = torch.device(self.config.device)  # type: ignore[arg-type]
        self.amp = self.config.amp if self.config.amp is not None else self.device.type == "cuda"
        self.images: list[torch.Tensor] = []
        self.annotations: list[torch.Tensor] = []
        self.class_values: list[int] = []
        self.harmonisation: Harmonisation | None = None
        self._inherited = False  # the reference comes from the init model file
        self._channels_last = False
        self.set_annotations(pairs, _first=True)
        seed = self.config.seed
        self._seed = seed if seed is not None else secrets.randbits(31)  # global RNG untouched
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, caller's RNG untouched
            torch.manual_seed(self._seed)
            self.model = self._initial_model()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.learning_rate)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp and self.device.type == "cuda"
        )
        self.iteration = 0
        self.losses: list[float] = []
        self.seconds = 0.0
        self._stop = threading.Event()
        self._runs = 0

    # ------------------------------------------------------------------ data
    def set_annotations(self, pairs: Any, *, _first: bool = False) -> None:
        """Replace the images and annotations (e.g. after painting corrections).

        The classes must stay those the trainer was built with (the network's outputs).
        """
        images, annotations = [], []
        for number, (image, labels) in enumerate(as_pairs(pairs), 1):
            suffix = f" {number}" if number > 1 or len(as_pairs(pairs)) > 1 else ""
            volume = as_volume(image, f"image{suffix}", ScalarImage)
            if volume.is_complex() or volume.dtype == torch.bool:
                raise TypeError(f"image{suffix} must hold real numbers, got dtype {volume.dtype}")
            images.append(volume.float())
            annotations.append(
                as_annotations(labels, f"annotations{suffix}", tuple(volume.shape[1:]))
            )
        _check_patch_fits(self.config.patch_size, images)
        channels = {image.shape[0] for image in images}
        if len(channels) > 1:
            raise ValueError(f"every image must have the same channels, got {sorted(channels)}")
        values = sorted(
            {v for labels in annotations for v in torch.unique(labels).tolist() if v > 0}
        )
        if len(values) < 2:
            raise ValueError(
                "annotations must hold at least two classes (values > 0; 0 = not"
                f" annotated), got {values}: paint strokes of each class"
            )
        if not _first and values != self.class_values:
            raise ValueError(
                f"annotations now hold classes {values}, the model was built for"
                f" {self.class_values}; start a new training to change the classes"
            )
        for number, labels in enumerate(annotations, 1):
            if not bool((labels > 0).any()):
                raise ValueError(
                    f"annotations {number} are empty: paint strokes there or leave that image out"
                )
        if _first and self.config.harmonise:
            self.harmonisation, self._inherited = self._intensity_reference(images[0])
        if self.harmonisation is not None:  # the others (all, for a resumed model) mapped onto it
            first = 0 if self._inherited else 1
            images[first:] = [self.harmonisation.apply(image) for image in images[first:]]
        self.images, self.annotations, self.class_values = images, annotations, values

    def _intensity_reference(self, first: torch.Tensor) -> tuple[Harmonisation, bool]:
        """The init model file's intensity reference if it has one, else the first image's."""
        from napari_patchwork.io.models import read_model_metadata

        init = self.config.init
        if init not in INITS and ":" not in init and Path(init).is_file():
            saved = Harmonisation.from_metadata(read_model_metadata(init))
            if saved is not None:
                return saved, True
        return Harmonisation(reference=IntensityField.fit(first)), False

    def _subjects(self) -> list[Subject]:
        """One subject per pair: padded by half a patch (every annotated voxel can be a patch
        centre), then cropped to where patches centred on annotated voxels can reach."""
        patch, half = self.config.patch_size, self.config.patch_size // 2
        subjects = []
        for image, labels in zip(self.images, self.annotations):
            box = annotated_reach(labels[0] > 0, patch)
            padded = nn.functional.pad(image[None], (half,) * 6, mode="replicate")[0]
            strokes = nn.functional.pad(labels, (half,) * 6)
            subjects.append(
                Subject(
                    image=ScalarImage(padded[(slice(None), *box)].clone()),
                    annotations=LabelMap(strokes[(slice(None), *box)].clone()),
                )
            )
        repeats = max(1, math.ceil(4 / len(subjects)))  # several augmented copies per epoch
        return subjects * repeats

    def _initial_model(self) -> nn.Module:
        config, classes = self.config, len(self.class_values)
        channels = self.images[0].shape[0]
        path = Path(config.init)
        if config.init not in INITS and ":" not in config.init:
            if not path.is_file():
                raise FileNotFoundError(f"init: model file does not exist: '{config.init}'")
            model: nn.Module = saved_network(path, self.class_values)
        else:
            everything = torch.cat([image.reshape(channels, -1) for image in self.images], 1)
            std = float(everything.std()) or 1.0
            mean = float(everything.mean())
            network = new_network(config, channels, classes)
            calibrate = getattr(network, "calibrate", None)
            if config.init == "scratch" and callable(calibrate):  # features' z-scoring
                calibrate((self.images[0] - mean) / std)
            model = NormalizedNet(network, mean, std)
        model = model.to(self.device)
        check_output(model, channels, classes, config, self.device)
        if self.device.type == "cpu":  # oneDNN's 3D convolutions run about twice as fast so
            try:
                model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
                self._channels_last = True
            except RuntimeError:  # parameters that are not 5D (a user's model)
                pass
        return model.train()

    # ------------------------------------------------------------------ training
    def stop(self) -> None:
        """End the current (or the next) :meth:`run` after its current step; weights are kept."""
        self._stop.set()

    def clear_stop(self) -> None:
        """Forget a :meth:`stop` no run has taken yet (the next run then trains)."""
        self._stop.clear()

    def run(
        self,
        seconds: float | None = None,
        iterations: int | None = None,
        preview: Region | Callable[[], Region | None] | None = None,
    ) -> Iterator[TrainingStep]:
        """Train, yielding a :class:`TrainingStep` after each step.

        Parameters
        ----------
        seconds, iterations : optional
            Budget of this run (defaults: the config's; neither: until :meth:`stop`).
        preview : region or callable, optional
            A region of the first image (or a callable returning the current one) to predict
            every ``config.preview_every`` seconds.
        """
        seconds = self.config.seconds if seconds is None else seconds
        iterations = self.config.iterations if iterations is None else iterations
        check_positive(seconds, "seconds", float, allow_none=True)
        check_positive(iterations, "iterations", allow_none=True)
        augment = None
        seed = self._seed * 7919 + self._runs  # each run draws its own reproducible stream
        self._runs += 1
        if self.config.augmentation is not None:
            augment = RandomAugmentation(self.config.augmentation, "image", seed)
        generator = torch.Generator().manual_seed(seed)
        patches = Queue(
            self._subjects(),
            BalancedSampler(self.config.patch_size, generator),
            max_length=self.config.queue_length,
            patches_per_volume=self.config.patches_per_volume,
            num_workers=1,
            shuffle_subjects=False,
            shuffle_patches=False,
            transform=augment,
        )
        stream = BatchStream(patches, self.config.batch_size, generator, ahead=64)
        start, waited, done, last_preview = time.perf_counter(), 0.0, 0, time.perf_counter()
        preview_gap = self.config.preview_every
        try:
            while not self._stop.is_set():
                if iterations is not None and done >= iterations:
                    break
                if seconds is not None and time.perf_counter() - start >= seconds:
                    break
                before = time.perf_counter()
                images, annotations = stream.next()
                waited += time.perf_counter() - before
                progress = _progress(done, iterations, before - start, seconds)
                self._set_learning_rate(done, progress)
                loss = self._step(images, annotations)
                done += 1
                elapsed = time.perf_counter() - start
                result = None
                if preview is not None and time.perf_counter() - last_preview >= preview_gap:
                    region = preview() if callable(preview) else preview
                    began = time.perf_counter()
                    result = None if region is None else self.predict(region=region)
                    last_preview = time.perf_counter()
                    # previews take at most a fifth of the time, however large the region
                    preview_gap = max(self.config.preview_every, 4 * (last_preview - began))
                yield TrainingStep(
                    self.iteration,
                    loss,
                    elapsed,
                    done * images.shape[0] / max(elapsed, 1e-9),
                    waited / max(elapsed, 1e-9),
                    result,
                )
        finally:
            stream.close()
            self.seconds += time.perf_counter() - start
            self._stop.clear()  # a stop asked before this run started ends it at once

    def _step(self, images: torch.Tensor, annotations: torch.Tensor) -> float:
        images = images.to(self.device, non_blocking=True).float()
        if self._channels_last:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        annotations = annotations.to(self.device, non_blocking=True)
        values = torch.tensor(self.class_values, dtype=torch.int64, device=self.device)
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.amp):
            logits = self.model(images)
        loss = annotation_loss(logits, annotations, values)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)  # one bad batch cannot derail it
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    def _set_learning_rate(self, done: int, progress: float | None) -> None:
        """Warm up over 20 steps, then (with a budget) cosine decay to 5 % at its end."""
        rate = self.config.learning_rate * min(1.0, (done + 1) / 20)
        if progress is not None and self.config.schedule == "cosine":
            rate *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    # ------------------------------------------------------------------ results
    def predict(self, image: Any = None, region: Region | None = None) -> Prediction:
        """Predict ``image`` (default: the first training image) over ``region`` (default: all).

        The patch is the one a saved model runs with (:func:`fit_patch` to the image, overlap
        :func:`quarter_overlap`), so the whole image's prediction is tiled inference's: what
        the Tiled inference widget and ``infer`` give with the saved model. A region is read
        with half a patch of context on every side, the window kept a patch wide at the
        image's borders; an axis under 4 voxels (no patch fits it) is padded up to the patch,
        replicating its border voxels as training did.
        """
        from napari_patchwork.core.inference.functional import infer

        volume = self.images[0] if image is None else as_volume(image, "image", ScalarImage).float()
        if image is not None and self.harmonisation is not None:  # another volume: its field
            volume = self.harmonisation.apply(volume)
        shape = tuple(volume.shape[1:])
        region = region or (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
        box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, shape))
        if any(b.stop <= b.start for b in box):
            raise ValueError(f"region {region} is empty for an image of shape {shape}")
        patch = fit_patch((self.config.patch_size,) * 3, shape)
        context = [_window(b, n, p) for b, n, p in zip(box, shape, patch)]
        crop = volume[(slice(None), *context)]
        short = [max(0, p - (c.stop - c.start)) for p, c in zip(patch, context)]  # under 4
        before = [need // 2 for need in short]
        if any(short):
            widths = [w for a in (2, 1, 0) for w in (before[a], short[a] - before[a])]
            crop = nn.functional.pad(crop[None], widths, mode="replicate")[0]
        self.model.eval()
        try:
            logits = infer(
                self.model,
                crop,
                patch_size=patch,
                patch_overlap=quarter_overlap(patch),
                batch_size=self.config.batch_size,
                device=self.device,
                amp=self.amp,
            )
        finally:
            self.model.train()
        assert isinstance(logits, torch.Tensor)  # one output: the model returns a tensor
        starts = [b.start - c.start + d for b, c, d in zip(box, context, before)]
        inner = logits[
            (slice(None), *(slice(s, s + b.stop - b.start) for s, b in zip(starts, box)))
        ].float()
        probabilities = torch.softmax(inner, 0)
        labels = torch.tensor(self.class_values)[probabilities.argmax(0).cpu()]
        dtype = np.uint8 if max(self.class_values) < 256 else np.int32
        agreement = None
        if image is None:
            painted = self.annotations[0][0][box]
            if bool((painted > 0).any()):
                agreement = float((labels[painted > 0] == painted[painted > 0]).float().mean())
        return Prediction(
            box,  # type: ignore[arg-type]
            labels.numpy().astype(dtype),
            probabilities.cpu().numpy(),
            agreement,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the model (``torch.export`` archive) with its class values and settings."""
        from napari_patchwork.io.models import save_model
        from napari_patchwork.models import TinyUNet3D
        from napari_patchwork.models.filters import FilterNet3D

        net = self.model.net if isinstance(self.model, NormalizedNet) else self.model
        metadata: dict[str, Any] = {
            "patch_size": [self.config.patch_size] * 3,
            "iterations": self.iteration,
            "training_seconds": round(self.seconds, 1),
        }
        if self.harmonisation is not None:
            metadata["intensity_reference"] = self.harmonisation.reference.to_dict()
        if isinstance(net, TinyUNet3D):
            width = net.encoder[0].out_channels
            metadata["architecture"] = {
                "name": "TinyUNet3D",
                "in_channels": net.encoder[0].in_channels,
                "width": width,
            }
        if isinstance(net, FilterNet3D):
            metadata["architecture"] = {
                "name": "FilterNet3D",
                "in_channels": net.in_channels,
                "width": net.width,
                "sigmas": list(net.bank.sigmas),
            }
        example = torch.zeros(2, self.images[0].shape[0], *(self.config.patch_size,) * 3)
        return save_model(
            self.model,
            path,
            class_values=self.class_values,
            example_input=example,
            metadata=metadata,
        )


def iter_train(
    pairs: Any, config: TrainingConfig | None = None, **settings: Any
) -> Iterator[TrainingStep]:
    """Train on ``pairs`` as a generator of :class:`TrainingStep` (see :class:`Trainer`).

    ``settings`` override fields of ``config``. Closing the generator stops training.

    Examples
    --------
    >>> image, strokes = torch.rand(10, 10, 10), torch.zeros(10, 10, 10, dtype=torch.int64)
    >>> strokes[1:3, 1:3, 1:3], strokes[7:9, 7:9, 7:9] = 1, 2
    >>> steps = list(iter_train((image, strokes), patch_size=8, iterations=3, width=2))
    >>> len(steps), steps[-1].iteration
    (3, 3)
    """
    return Trainer(pairs, merged_config(config, settings)).run()


def train(pairs: Any, config: TrainingConfig | None = None, **settings: Any) -> Trainer:
    """Train on ``pairs`` until the config's ``seconds`` or ``iterations``; return the trainer.

    Examples
    --------
    >>> image, strokes = torch.rand(10, 10, 10), torch.zeros(10, 10, 10, dtype=torch.int64)
    >>> strokes[1:3, 1:3, 1:3], strokes[7:9, 7:9, 7:9] = 3, 7
    >>> trainer = train((image, strokes), patch_size=8, iterations=2, width=2)
    >>> trainer.iteration, set(trainer.predict().labels.ravel().tolist()) <= {3, 7}
    (2, True)
    """
    merged = merged_config(config, settings)
    if merged.seconds is None and merged.iterations is None:
        raise ValueError(
            "train needs seconds or iterations"
            " (use iter_train or Trainer.run to train until stopped)"
        )
    trainer = Trainer(pairs, merged)
    for _ in trainer.run():
        pass
    return trainer


def import_optimiser_modules() -> None:
    """Import what a torch optimiser imports at its first ``zero_grad``.

    torch wraps ``zero_grad`` to import ``torch._dynamo`` (with sympy: about 820 modules,
    1.8–3.5 s here) the first time any optimiser calls it; much of an import holds the
    interpreter lock (unmarshalling bytecode: 100–170 ms at a time), so in a GUI it belongs
    before a run, in a background thread while the user paints, not in a run's first step.
    Calling it again costs nothing.

    Examples
    --------
    >>> import threading
    >>> thread = threading.Thread(target=import_optimiser_modules, daemon=True)
    >>> thread.start(); thread.join()
    """
    parameter = torch.zeros(1, requires_grad=True)
    torch.optim.AdamW([parameter]).zero_grad()
