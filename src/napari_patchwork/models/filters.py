"""A 3D network over fixed multiscale filters: what a pixel classifier sees, learned end to end.

ilastik-style pixel classifiers win from a few strokes because every voxel is described by
the same smooth, multiscale features (Gaussian, gradient magnitude, Laplacian of Gaussian);
a U-Net trained from scratch must first learn such filters from a few hundred painted voxels.
:class:`FilterNet3D` starts from them: a fixed separable filter bank, z-scored with statistics
of the training volume, followed by learned 1×1×1 layers (a per-voxel classifier) — a
``torch.nn.Module`` like any other, trained by the patch pipeline and saved with
``torch.export``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

SIGMAS = (0.7, 1.6)


def _kernels(sigma: float) -> torch.Tensor:
    """``(3, L)`` sampled Gaussian and its first and second derivatives (truncated at 3.5σ)."""
    radius = int(math.ceil(3.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    gauss = torch.exp(-(x**2) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    first = -x / sigma**2 * gauss
    second = (x**2 / sigma**4 - 1 / sigma**2) * gauss
    return torch.stack([gauss, first, second])


class FilterBank3D(nn.Module):
    """Per channel and scale: Gaussian, gradient magnitude and Laplacian of Gaussian.

    Separable 1D convolutions; the patch is padded by edge replication, so outputs keep the
    input's spatial size. ``(B, C, I, J, K)`` → ``(B, C * (1 + 3 * len(sigmas)), I, J, K)``
    (the input itself first).

    Parameters
    ----------
    sigmas : sequence of float
        Scales in voxels.

    Examples
    --------
    >>> bank = FilterBank3D((1.0,))
    >>> bank(torch.ones(2, 1, 8, 8, 8)).shape
    torch.Size([2, 4, 8, 8, 8])
    """

    def __init__(self, sigmas: Sequence[float] = SIGMAS) -> None:
        super().__init__()
        if not sigmas or any(not float(s) > 0 for s in sigmas):
            raise ValueError(f"sigmas must be positive numbers, got {sigmas!r}")
        self.sigmas = tuple(float(s) for s in sigmas)
        kernels = [_kernels(s) for s in self.sigmas]
        self.radius = max(k.shape[1] // 2 for k in kernels)
        for index, kernel in enumerate(kernels):
            self.register_buffer(f"kernel{index}", kernel)

    def features_per_channel(self) -> int:
        return 1 + 3 * len(self.sigmas)

    @staticmethod
    def _along(x: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        return functional.conv3d(x, kernel.reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[0], x.shape[1]
        flat = x.reshape(batch * channels, 1, *x.shape[2:])
        padded = functional.pad(flat, (self.radius,) * 6, mode="replicate")
        outputs = [flat]
        for index in range(len(self.sigmas)):
            kernel: torch.Tensor = getattr(self, f"kernel{index}")
            cut = self.radius - kernel.shape[1] // 2
            inner = padded[:, :, cut : padded.shape[2] - cut, cut : padded.shape[3] - cut]
            inner = inner[..., cut : padded.shape[4] - cut]
            gauss, first, second = kernel[0], kernel[1], kernel[2]
            along0 = [self._along(inner, k, 0) for k in (gauss, first, second)]
            smooth01 = self._along(along0[0], gauss, 1)
            smooth = self._along(smooth01, gauss, 2)
            d2 = self._along(smooth01, first, 2)
            d22 = self._along(smooth01, second, 2)
            d1 = self._along(self._along(along0[0], first, 1), gauss, 2)
            d11 = self._along(self._along(along0[0], second, 1), gauss, 2)
            d0 = self._along(self._along(along0[1], gauss, 1), gauss, 2)
            d00 = self._along(self._along(along0[2], gauss, 1), gauss, 2)
            gradient = torch.sqrt(d0 * d0 + d1 * d1 + d2 * d2 + 1e-12)
            outputs += [smooth, gradient, d00 + d11 + d22]
        stacked = torch.cat(outputs, 1)
        return stacked.reshape(batch, -1, *x.shape[2:])


class FilterNet3D(nn.Module):
    """Fixed multiscale filters, z-scored, then a learned per-voxel classifier.

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels and classes.
    width : int
        Channels of the two hidden 1×1×1 layers.
    sigmas : sequence of float
        Scales of the filter bank, in voxels.

    Examples
    --------
    >>> net = FilterNet3D(1, 3, width=8)
    >>> net.calibrate(torch.rand(1, 10, 10, 10))
    >>> net(torch.zeros(2, 1, 8, 8, 8)).shape
    torch.Size([2, 3, 8, 8, 8])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        width: int = 32,
        sigmas: Sequence[float] = SIGMAS,
    ) -> None:
        super().__init__()
        self.bank = FilterBank3D(sigmas)
        features = in_channels * self.bank.features_per_channel()
        self.in_channels, self.width = in_channels, width
        self.register_buffer("feature_mean", torch.zeros(1, features, 1, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, features, 1, 1, 1))
        self.classifier = nn.Sequential(
            nn.Conv3d(features, width, 1),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, width, 1),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, out_channels, 1),
        )

    @torch.no_grad()
    def calibrate(self, volume: torch.Tensor, edge: int = 48) -> None:
        """Set the features' z-scoring from a ``(C, I, J, K)`` volume (the training image).

        The statistics come from 8 crops of ``edge`` voxels centred at 30 % and 70 % of each axis
        of a volume larger than those together (else from all of it), so calibrating a large
        volume takes a moment.
        """
        mean, std = self.feature_mean, self.feature_std
        assert isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)
        crops = [volume]
        if volume[0].numel() > 8 * edge**3:
            starts = [
                sorted(
                    {min(max(round(n * q) - edge // 2, 0), max(n - edge, 0)) for q in (0.3, 0.7)}
                )
                for n in volume.shape[1:]
            ]
            crops = [
                volume[:, i : i + edge, j : j + edge, k : k + edge]
                for i in starts[0]
                for j in starts[1]
                for k in starts[2]
            ]
        features = [self.bank(c[None].float().to(mean.device))[0] for c in crops]
        flat = torch.cat([f.reshape(f.shape[0], -1) for f in features], 1)
        mean.copy_(flat.mean(1).reshape(mean.shape))
        std.copy_(flat.std(1).clamp_min(1e-6).reshape(std.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.feature_mean, self.feature_std
        assert isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)
        output: torch.Tensor = self.classifier((self.bank(x) - mean) / std)
        return output
