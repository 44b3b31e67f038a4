"""Interactive training from sparse annotations: a few painted strokes per class, a 3D network.

Built from the patch pipeline: each image/annotation pair becomes a ``Subject``; a
:class:`LabelSampler` draws patch centres balanced over the annotated classes; a
:class:`Queue` loads and augments (:mod:`.augmentation`) the subjects in a background thread;
a loss over annotated voxels only (0 = not annotated) trains the network. :class:`Trainer`
keeps the weights between runs, so *Continue* after painting corrections resumes from them.
"""

from __future__ import annotations

import math
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_patchwork.core.batching.collate import collate_subjects
from napari_patchwork.core.batching.queue import Queue
from napari_patchwork.core.data.image import Image, LabelMap, ScalarImage
from napari_patchwork.core.data.subject import Subject
from napari_patchwork.core.samplers.label import LabelSampler
from napari_patchwork.core.training.augmentation import AugmentationConfig, RandomAugmentation

INITS = ("scratch", "demo")  # or a saved model file, or 'module:factory'
SCHEDULES = ("constant", "cosine")
NETWORKS = ("filters", "unet")  # what init='scratch' builds
Region = tuple[slice, slice, slice]


def _positive(value: Any, name: str, kind: type = int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    number = isinstance(value, (int, float) if kind is float else int)
    if isinstance(value, bool) or not number or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Every setting of a training run; the API, the CLI and the widget all build one.

    Parameters
    ----------
    patch_size : int
        Edge of the cubic training patches (even, >= 4).
    batch_size : int
        Patches per step.
    seconds, iterations : float or int, optional
        Time budget and step count of a run; it stops at whichever comes first (neither:
        until stopped).
    network : {'filters', 'unet'}
        What ``init='scratch'`` builds: ``'filters'``, fixed multiscale filters and a learned
        per-voxel classifier (:class:`~napari_patchwork.models.FilterNet3D`; learns from a few
        strokes in seconds), or ``'unet'``, a small U-Net learning its own filters (needs
        more strokes and time).
    init : str
        ``'scratch'``, ``'demo'`` (the bundled network, new output layer if the class count
        differs), a model file saved by :meth:`Trainer.save` or ``'module:factory'``.
    weights : str, optional
        State dict for a ``module:factory`` model.
    width : int, optional
        Channels of a new network (hidden layers of ``'filters'``, first level of
        ``'unet'``); default 32 and 8.
    learning_rate : float
        Peak AdamW learning rate.
    schedule : {'constant', 'cosine'}
        After 20 warm-up steps, ``'cosine'`` decays the rate to 5 % at the end of the run's
        budget (seconds or iterations; constant for a run without one). Gradients are
        clipped to norm 5.
    seed : int, optional
        Makes the run reproducible (initialisation, patches, augmentation).
    device : str, optional
        ``'cpu'``, ``'cuda'``…; default CUDA when available, else CPU.
    amp : bool, optional
        Mixed precision; default on CUDA only.
    augmentation : AugmentationConfig or None
        Ranges of the random augmentation; None turns it off.
    patches_per_volume, queue_length : int
        Patches drawn per loaded (augmented) volume, and the Queue's buffer.
    preview_every : float
        Seconds between previews when a preview region is requested.

    Examples
    --------
    >>> TrainingConfig(patch_size=16, iterations=5).batch_size
    4
    """

    patch_size: int = 32
    batch_size: int = 4
    seconds: float | None = None
    iterations: int | None = None
    network: str = "filters"
    init: str = "scratch"
    weights: str | None = None
    width: int | None = None
    learning_rate: float = 3e-3
    seed: int | None = 0
    device: str | None = None
    amp: bool | None = None
    augmentation: AugmentationConfig | None = field(default_factory=AugmentationConfig)
    patches_per_volume: int = 16
    queue_length: int = 64
    preview_every: float = 3.0
    schedule: str = "constant"

    def _check_network(self) -> None:
        _positive(self.width, "width", allow_none=True)
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {NETWORKS}, got {self.network!r}")
        if self.width is None:
            object.__setattr__(self, "width", 32 if self.network == "filters" else 8)

    def __post_init__(self) -> None:
        _positive(self.patch_size, "patch_size")
        if self.patch_size % 2 or self.patch_size < 4:
            raise ValueError(f"patch_size must be even and >= 4, got {self.patch_size}")
        for name in ("batch_size", "patches_per_volume", "queue_length"):
            _positive(getattr(self, name), name)
        self._check_network()
        _positive(self.iterations, "iterations", allow_none=True)
        for name in ("seconds", "learning_rate", "preview_every"):
            _positive(getattr(self, name), name, float, allow_none=name == "seconds")
        if not isinstance(self.init, str) or not self.init:
            raise TypeError(
                f"init must be 'scratch', 'demo', a model file or module:factory, got {self.init!r}"
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ValueError(f"seed must be an int >= 0 or None, got {self.seed!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp is not None and not isinstance(self.amp, bool):
            raise TypeError(f"amp must be True, False or None, got {self.amp!r}")
        if self.augmentation is not None and not isinstance(self.augmentation, AugmentationConfig):
            raise TypeError(
                f"augmentation must be an AugmentationConfig or None, got {self.augmentation!r}"
            )
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            object.__setattr__(self, "device", str(torch.device(device)))
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device must be 'cpu', 'cuda', 'cuda:1'…, got {self.device!r}"
            ) from None


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


class NormalizedNet(nn.Module):
    """A network behind a fixed intensity normalisation ``(x - mean) / std`` (saved with it).

    Examples
    --------
    >>> from napari_patchwork.models import TinyUNet3D
    >>> NormalizedNet(TinyUNet3D(1, 2, width=2), 10.0, 2.0)(torch.zeros(1, 1, 8, 8, 8)).shape
    torch.Size([1, 2, 8, 8, 8])
    """

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean, self.std
        assert isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)
        output: torch.Tensor = self.net((x - mean) / std)
        return output


def annotation_loss(
    logits: torch.Tensor, annotations: torch.Tensor, class_values: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over the annotated voxels only (0 = not annotated).

    Unannotated voxels contribute nothing: their gradient is exactly zero. Class balance
    comes from the sampler (patch centres equally often on every painted class); within a
    batch every annotated voxel counts alike, as in ilastik's pixel classifier.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, C, I, J, K)`` network outputs.
    annotations : torch.Tensor
        ``(B, 1, I, J, K)`` or ``(B, I, J, K)`` integer values; 0 = not annotated.
    class_values : torch.Tensor
        Sorted 1D int64 tensor of the ``C`` annotation values, one per channel.

    Returns
    -------
    torch.Tensor
        A scalar (0, with zero gradient, when nothing in the batch is annotated).

    Examples
    --------
    >>> logits = torch.zeros(1, 2, 2, 2, 2)
    >>> annotations = torch.zeros(1, 1, 2, 2, 2, dtype=torch.int64); annotations[0, 0, 0] = 1
    >>> round(float(annotation_loss(logits, annotations, torch.tensor([1, 2]))), 4)
    0.6931
    """
    target = annotations.reshape(logits.shape[0], *logits.shape[2:]).long()
    annotated = target > 0
    if not bool(annotated.any()):
        return (logits.float() * 0).sum()
    values = class_values.to(target.device)
    index = torch.searchsorted(values, target).clamp(max=logits.shape[1] - 1)
    index = torch.where(annotated, index, torch.full_like(index, -100))
    return nn.functional.cross_entropy(logits.float(), index, ignore_index=-100)


# ---------------------------------------------------------------------- data
def _volume(value: Any, what: str, kind: type[Image]) -> torch.Tensor:
    if isinstance(value, (str, os.PathLike)):
        if not Path(value).exists():
            raise FileNotFoundError(f"{what}: file does not exist: '{value}'")
        value = kind(value)
    if isinstance(value, Image):
        value = value.data
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} must be an array, a tensor, an Image or a file, got {type(value)}")
    if value.ndim == 3:
        value = value[None]
    if value.ndim != 4 or value.numel() == 0:
        raise ValueError(
            f"{what} must be a 3D (I, J, K) or 4D (C, I, J, K) volume,"
            f" got shape {tuple(value.shape)}"
        )
    volume: torch.Tensor = value
    return volume


def _annotations(value: Any, what: str, shape: tuple[int, ...]) -> torch.Tensor:
    labels = _volume(value, what, LabelMap)
    if labels.shape[0] != 1 or tuple(labels.shape[1:]) != shape:
        raise ValueError(
            f"{what} must have the image's shape {shape} (one channel), got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        if (
            labels.dtype == torch.bool
            or labels.is_complex()
            or bool((labels != labels.round()).any())
        ):
            raise ValueError(f"{what} must hold integer label values, got dtype {labels.dtype}")
    labels = labels.to(torch.int64)
    if bool((labels < 0).any()):
        raise ValueError(
            f"{what} holds negative values (min {int(labels.min())}); 0 means not annotated"
        )
    return labels


def _pairs(pairs: Any) -> list[tuple[Any, Any]]:
    if isinstance(pairs, tuple) and len(pairs) == 2 and not isinstance(pairs[0], tuple):
        pairs = [pairs]
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise TypeError(
            f"pairs must be (image, annotations) or a list of such pairs, got {type(pairs)}"
        )
    for number, pair in enumerate(pairs, 1):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"pair {number} must be (image, annotations), got {type(pair)}")
    return [(image, labels) for image, labels in pairs]


def _reach(annotated: torch.Tensor, patch: int) -> tuple[slice, ...]:
    """The box of a volume padded by ``patch // 2`` that patches centred on annotated voxels
    can touch: annotated voxels span ``[low, high]``, so padded ``[low, high + patch)``."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        where = torch.nonzero(annotated.any(dim=other))[:, 0]
        box.append(slice(int(where[0]), int(where[-1]) + patch))
    return tuple(box)


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


class _BalancedSampler:
    """A LabelSampler over the annotated classes present in each subject, equally weighted."""

    def __init__(self, patch_size: int, generator: torch.Generator) -> None:
        self.patch_size = (patch_size,) * 3
        self.generator = generator

    def __call__(self, subject: Subject) -> Iterator[Subject]:
        present = [v for v in torch.unique(subject["annotations"].data).tolist() if v > 0]
        sampler = LabelSampler(
            None,
            self.patch_size,
            "annotations",
            dict.fromkeys(present, 1.0),
            generator=self.generator,
        )
        return sampler(subject)


class _BatchStream:
    """Shuffled batches from a Queue, assembled ahead of the training loop in a thread.

    The Queue does not shuffle (it would use torch's global generator, shared with the
    caller); patches are shuffled here with the trainer's own generator instead.
    """

    def __init__(
        self, patches: Queue, batch_size: int, generator: torch.Generator, ahead: int
    ) -> None:
        self._batches: queue.Queue[Any] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._batch_size, self._generator = batch_size, generator
        self._thread = threading.Thread(
            target=self._fill, args=(patches,), daemon=True, name="patchwork-train-batches"
        )
        self._thread.start()

    def _fill(self, patches: Queue) -> None:
        try:
            buffer: list[Subject] = []
            while not self._stop.is_set():
                for patch in patches:
                    buffer.append(patch)
                    if len(buffer) == patches.max_length and not self._emit(buffer):
                        return
        except BaseException as error:  # re-raised in the training loop
            self._batches.put(error)

    def _emit(self, buffer: list[Subject]) -> bool:
        order = torch.randperm(len(buffer), generator=self._generator).tolist()
        size = self._batch_size
        for first in range(0, len(order) - size + 1, size):
            batch = collate_subjects([buffer[i] for i in order[first : first + size]])
            item = (batch.image.data, batch.annotations.data)
            while True:
                if self._stop.is_set():
                    return False
                try:
                    self._batches.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
        buffer.clear()
        return True

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        item = self._batches.get()
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._batches.get(timeout=0.05)
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)


# ---------------------------------------------------------------------- models
def _new_network(config: TrainingConfig, in_channels: int, classes: int) -> nn.Module:
    from napari_patchwork.models import DEMO_CLASSES, TinyUNet3D, demo_model
    from napari_patchwork.models.filters import FilterNet3D

    assert config.width is not None  # set by TrainingConfig
    if config.init == "scratch" and config.network == "filters":
        return FilterNet3D(in_channels, classes, width=config.width)
    if config.init == "scratch":
        return TinyUNet3D(in_channels, classes, width=config.width)
    if config.init == "demo":
        if in_channels != 1:
            raise ValueError(f"init='demo' takes one image channel, the image has {in_channels}")
        net = demo_model()
        if classes != len(DEMO_CLASSES):  # keep the features, learn a new output layer
            net.head = nn.Conv3d(net.head.in_channels, classes, 1)
        return net
    from napari_patchwork.io.models import load_model

    if ":" not in config.init or Path(config.init).exists():
        raise ValueError(
            f"init={config.init!r} is not 'scratch', 'demo', a model file saved by"
            " training or module:factory"
        )
    network = load_model(config.init, weights=config.weights)
    if not isinstance(network, nn.Module):
        raise TypeError(f"init={config.init!r} must give a torch.nn.Module, got {type(network)}")
    return network


def _saved_network(path: Path, class_values: list[int]) -> NormalizedNet:
    from napari_patchwork.io.models import read_model_metadata
    from napari_patchwork.models import TinyUNet3D
    from napari_patchwork.models.filters import FilterNet3D

    info = read_model_metadata(path)
    architecture = (info or {}).get("architecture") or {}
    if architecture.get("name") not in ("TinyUNet3D", "FilterNet3D"):
        raise ValueError(
            f"init='{path}' is not a model saved by napari-patchwork training;"
            " use module:factory with weights"
        )
    if info["class_values"] != class_values:  # type: ignore[index]
        raise ValueError(
            f"init='{path}' was trained for classes {info['class_values']},"  # type: ignore[index]
            f" the annotations hold {class_values}"
        )
    net: nn.Module
    if architecture["name"] == "FilterNet3D":
        net = FilterNet3D(
            architecture["in_channels"],
            len(class_values),
            width=architecture["width"],
            sigmas=architecture["sigmas"],
        )
    else:
        net = TinyUNet3D(
            architecture["in_channels"], len(class_values), width=architecture["width"]
        )
    model = NormalizedNet(net, 0.0, 1.0)
    state = torch.export.load(str(path)).state_dict
    model.load_state_dict({k: v for k, v in state.items()}, strict=True)
    return model


def _check_output(
    model: nn.Module, in_channels: int, classes: int, config: TrainingConfig, device: torch.device
) -> None:
    probe = torch.zeros(1, in_channels, *(config.patch_size,) * 3, device=device)
    with torch.no_grad():
        output = model(probe)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (
        1,
        classes,
        *probe.shape[2:],
    ):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
        raise ValueError(
            f"init={config.init!r}: the model maps {tuple(probe.shape)} to {shape}, but"
            f" training needs {classes} output channels (one per annotated class) of the"
            " input's spatial size"
        )


# ---------------------------------------------------------------------- trainer
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
        for number, (image, labels) in enumerate(_pairs(pairs), 1):
            suffix = f" {number}" if number > 1 or len(_pairs(pairs)) > 1 else ""
            volume = _volume(image, f"image{suffix}", ScalarImage)
            if volume.is_complex() or volume.dtype == torch.bool:
                raise TypeError(f"image{suffix} must hold real numbers, got dtype {volume.dtype}")
            images.append(volume.float())
            annotations.append(
                _annotations(labels, f"annotations{suffix}", tuple(volume.shape[1:]))
            )
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
        self.images, self.annotations, self.class_values = images, annotations, values

    def _subjects(self) -> list[Subject]:
        """One subject per pair: padded by half a patch (every annotated voxel can be a patch
        centre), then cropped to where patches centred on annotated voxels can reach."""
        patch, half = self.config.patch_size, self.config.patch_size // 2
        subjects = []
        for image, labels in zip(self.images, self.annotations):
            box = _reach(labels[0] > 0, patch)
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
            model: nn.Module = _saved_network(path, self.class_values)
        else:
            everything = torch.cat([image.reshape(channels, -1) for image in self.images], 1)
            std = float(everything.std()) or 1.0
            mean = float(everything.mean())
            network = _new_network(config, channels, classes)
            calibrate = getattr(network, "calibrate", None)
            if config.init == "scratch" and callable(calibrate):  # features' z-scoring
                calibrate((self.images[0] - mean) / std)
            model = NormalizedNet(network, mean, std)
        model = model.to(self.device)
        _check_output(model, channels, classes, config, self.device)
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
        _positive(seconds, "seconds", float, allow_none=True)
        _positive(iterations, "iterations", allow_none=True)
        augment = None
        seed = self._seed * 7919 + self._runs  # each run draws its own reproducible stream
        self._runs += 1
        if self.config.augmentation is not None:
            augment = RandomAugmentation(self.config.augmentation, "image", seed)
        generator = torch.Generator().manual_seed(seed)
        patches = Queue(
            self._subjects(),
            _BalancedSampler(self.config.patch_size, generator),
            max_length=self.config.queue_length,
            patches_per_volume=self.config.patches_per_volume,
            num_workers=1,
            shuffle_subjects=False,
            shuffle_patches=False,
            transform=augment,
        )
        stream = _BatchStream(patches, self.config.batch_size, generator, ahead=64)
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

        The region is read with half a patch of context on every side.
        """
        from napari_patchwork.core.inference.functional import infer

        volume = self.images[0] if image is None else _volume(image, "image", ScalarImage).float()
        shape = tuple(volume.shape[1:])
        region = region or (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
        box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, shape))
        if any(b.stop <= b.start for b in box):
            raise ValueError(f"region {region} is empty for an image of shape {shape}")
        half = self.config.patch_size // 2
        padded = nn.functional.pad(volume[None], (half,) * 6, mode="replicate")[0]
        crop = padded[(slice(None), *(slice(b.start, b.stop + 2 * half) for b in box))]
        overlap = (self.config.patch_size // 4) // 2 * 2
        self.model.eval()
        try:
            logits = infer(
                self.model,
                crop,
                patch_size=self.config.patch_size,
                patch_overlap=overlap,
                batch_size=self.config.batch_size,
                device=self.device,
                amp=self.amp,
            )
        finally:
            self.model.train()
        assert isinstance(logits, torch.Tensor)  # one output: the model returns a tensor
        inner = logits[(slice(None), *(slice(half, half + b.stop - b.start) for b in box))].float()
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
    return Trainer(pairs, _merged(config, settings)).run()


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
    merged = _merged(config, settings)
    if merged.seconds is None and merged.iterations is None:
        raise ValueError(
            "train needs seconds or iterations"
            " (use iter_train or Trainer.run to train until stopped)"
        )
    trainer = Trainer(pairs, merged)
    for _ in trainer.run():
        pass
    return trainer


def _merged(config: TrainingConfig | None, settings: dict[str, Any]) -> TrainingConfig:
    import dataclasses

    if config is not None and not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config)}")
    names = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"unexpected settings {unknown}; TrainingConfig has {sorted(names)}")
    return (
        dataclasses.replace(config, **settings)
        if config is not None
        else TrainingConfig(**settings)
    )


def scribbles_from_labels(
    labels: np.ndarray,
    *,
    slices: int = 3,
    disks: int = 3,
    radius: int = 2,
    background: int | None = 0,
    seed: int = 0,
) -> np.ndarray:
    """A scripted annotator: small disks on a few slices inside each class of ``labels``.

    Every label value becomes class ``value + 1`` (so background 0 becomes 1 and 0 is left
    for "not annotated"), unless ``background`` is None, when label 0 stays unannotated.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(I, J, K)`` ground truth.
    slices : int
        Slices (along the first axis) annotated per class, spread over where it occurs.
    disks : int
        Disks per class and slice, centred on random voxels of the class.
    radius : int
        Disk radius in voxels; a disk covers only voxels of its class.
    background : int or None
        The ground truth's background value, annotated like the other classes (None: not).
    seed : int
        Seed of the disk positions.

    Returns
    -------
    numpy.ndarray
        ``(I, J, K)`` int64 annotations: 0 = not annotated.

    Examples
    --------
    >>> truth = np.zeros((20, 20, 20), np.uint8); truth[5:15, 5:15, 5:15] = 1
    >>> strokes = scribbles_from_labels(truth, seed=0)
    >>> sorted(np.unique(strokes).tolist()), bool((strokes[truth == 1] != 1).all())
    ([0, 1, 2], True)
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (I, J, K), got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    strokes = np.zeros(labels.shape, np.int64)
    offsets = np.arange(-radius, radius + 1)
    disk = (offsets[:, None] ** 2 + offsets[None] ** 2) <= radius**2
    for value in np.unique(labels).tolist():
        if background is None and value == 0:
            continue
        mask = labels == value
        occupied = np.flatnonzero(mask.any((1, 2)))
        chosen = occupied[
            np.linspace(0, len(occupied) - 1, min(slices, len(occupied))).round().astype(int)
        ]
        for index in np.unique(chosen):
            plane = mask[index]
            candidates = np.argwhere(plane)
            for j, k in candidates[
                rng.choice(len(candidates), min(disks, len(candidates)), replace=False)
            ]:
                box = (
                    slice(max(j - radius, 0), j + radius + 1),
                    slice(max(k - radius, 0), k + radius + 1),
                )
                cut = disk[box[0].start - j + radius :, box[1].start - k + radius :][
                    : plane[box].shape[0], : plane[box].shape[1]
                ]
                strokes[index][box][cut & plane[box]] = value + 1
    return strokes
