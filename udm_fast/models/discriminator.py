"""WGAN-GP critic (reference ``DiscriminatorLinear``): 6 bias-free convs with LeakyReLU(0.2), then a linear head."""

from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Module):
    """Critic scores for images [B, in_channels, H, W] -> [B * n] (n = positions of the last map; 1 for 128x128).

    The first three convs are 4x4 stride 2 when ``in_width`` (the training patch width) is at least
    128 / 64 / 32, else 3x3 stride 1. For inputs whose last map is larger than 1x1, each position gets
    its own score (the reference reshaped channels and positions together there; fixed).
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, in_width: int = 128):
        super().__init__()
        layers = []
        widths = [in_channels, ndf, 2 * ndf, 4 * ndf, 8 * ndf, 16 * ndf, 32 * ndf]
        for i in range(6):
            if i < 3:
                big = in_width >= (128, 64, 32)[i]
                conv = nn.Conv2d(widths[i], widths[i + 1], 4 if big else 3, 2 if big else 1, 1, bias=False)
            elif i < 5:
                conv = nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1, bias=False)
            else:
                conv = nn.Conv2d(widths[i], widths[i + 1], 4, 1, 0, bias=False)
            layers += [conv, nn.LeakyReLU(0.2)]
        self.main = nn.Sequential(*layers)
        self.output = nn.Linear(32 * ndf, 1)
        self.in_channels = in_channels
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Discriminator: expected [B, {self.in_channels}, H, W], got {list(x.shape)}")
        features = self.main(x)
        return self.output(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])).flatten()
