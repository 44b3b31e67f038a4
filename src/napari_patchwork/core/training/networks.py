"""The networks training builds or resumes, and the loss over annotated voxels."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from napari_patchwork.core.training.config import TrainingConfig


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


def new_network(config: TrainingConfig, in_channels: int, classes: int) -> nn.Module:
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


def saved_network(path: Path, class_values: list[int]) -> NormalizedNet:
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


def check_output(
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
