"""A small 3D U-Net and the bundled demo model trained on the synthetic sample data."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

DEMO_WEIGHTS = Path(__file__).with_name("demo_unet.pt")
DEMO_CLASSES = ("background", "blob", "tube")


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv3d(out_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
    )


class TinyUNet3D(nn.Module):
    """A two-level 3D U-Net without normalisation layers (so patches agree at their seams).

    Input spatial sizes must be even. Maps ``(B, in_channels, P, P, P)`` to
    ``(B, out_channels, P, P, P)`` logits.

    Examples
    --------
    >>> net = TinyUNet3D(1, 3, width=4)
    >>> net(torch.zeros(2, 1, 8, 8, 8)).shape
    torch.Size([2, 3, 8, 8, 8])
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.encoder = _block(in_channels, width)
        self.bottom = _block(width, 2 * width)
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.decoder = _block(2 * width, width)
        self.head = nn.Conv3d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.encoder(x)
        deep = self.bottom(nn.functional.max_pool3d(skip, 2))
        return self.head(self.decoder(torch.cat([skip, self.up(deep)], 1)))


def demo_model() -> TinyUNet3D:
    """The bundled demo network (blob / tube segmentation), weights loaded safely.

    Examples
    --------
    >>> demo_model()(torch.zeros(1, 1, 16, 16, 16)).shape
    torch.Size([1, 3, 16, 16, 16])
    """
    model = TinyUNet3D(1, len(DEMO_CLASSES), width=8)
    model.load_state_dict(torch.load(DEMO_WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


from napari_patchwork.models.filters import FilterBank3D, FilterNet3D  # noqa: E402

__all__ = [
    "DEMO_CLASSES",
    "DEMO_WEIGHTS",
    "FilterBank3D",
    "FilterNet3D",
    "TinyUNet3D",
    "demo_model",
]
