"""Pre-activation convolutions of the reference (activation, then a bias-free conv)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def _conv_padding(kernel_size: int, stride: int, dilation: int = 1) -> int:
    """Padding rule of the reference ``Conv2d`` wrapper (k4 s2 -> 1, k3 s1 -> 1, k1 -> 0)."""
    if stride == 2 and kernel_size % 2 == 0:
        return kernel_size // 2 - 1
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


class PreActConv2d(nn.Module):
    """activation -> Conv2d (no bias): the reference ``Conv2d`` wrapper. Weight at ``conv2d.weight``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        activation: Optional[nn.Module] = nn.ReLU(),  # noqa: B008 (stateless, safe to share)
    ):
        super().__init__()
        self.activation = activation
        self.conv2d = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, _conv_padding(kernel_size, stride), bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation is not None:
            x = self.activation(x)
        return self.conv2d(x)


class PreActConvTranspose2d(nn.Module):
    """activation -> ConvTranspose2d (no bias), padding (k - stride) // 2. Weight at ``tconv2d.weight``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 2,
        activation: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.activation = activation
        self.tconv2d = nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size, stride, (kernel_size - stride) // 2, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation is not None:
            x = self.activation(x)
        return self.tconv2d(x)
