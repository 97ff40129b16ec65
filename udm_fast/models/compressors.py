"""Entropy regularisers of the degradation codes (reference ``CompressorWraper`` / ``CompressorHeadMLP``).

Pipeline: optional head MLP -> EntropyBottleneck -> optional tail MLP. Bits are
-sum over channels of log2(likelihood): per image for the global code [B, C],
per latent location for the local map [B, C, h, w].
"""

from __future__ import annotations

import torch
from torch import nn

from ..entropy.bottleneck import EntropyBottleneck


class ResidualMLPBlock(nn.Module):
    """v + Linear(mid -> C)(ReLU(Linear(C -> mid)(v))); acts on the last axis."""

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(channels, mid), nn.ReLU(), nn.Linear(mid, channels))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v + self.block(v)


class CompressorHeadMLP(nn.Module):
    """``layers`` residual MLP blocks with hidden width ``mid`` (default channels // 4)."""

    def __init__(self, channels: int, layers: int = 2, mid: int | None = None):
        super().__init__()
        mid = channels // 4 if mid is None else mid
        self.layers = nn.ModuleList([ResidualMLPBlock(channels, mid) for _ in range(layers)])

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            v = layer(v)
        return v


def bits_from_likelihoods(likelihoods: torch.Tensor) -> torch.Tensor:
    """-sum_c log2(likelihood): [B, C] -> [B] bits per image; [B, C, h, w] -> [B, h, w] bits per location."""
    return -torch.log2(likelihoods.float()).sum(dim=1)


class Compressor(nn.Module):
    """head -> EntropyBottleneck(channels) -> tail. forward(e) -> (e_hat, likelihoods, bits).

    ``head_layers`` / ``tail_layers`` = 0 disables the MLPs; they act on the last axis, so they are
    only allowed for 2-D codes [B, C] (docs/architecture.md §6).
    """

    def __init__(self, channels: int, head_layers: int = 0, tail_layers: int = 0):
        super().__init__()
        self.channels = channels
        self.model = EntropyBottleneck(channels)
        self.head = CompressorHeadMLP(channels, head_layers) if head_layers else None
        self.tail = CompressorHeadMLP(channels, tail_layers) if tail_layers else None

    def _check(self, e: torch.Tensor) -> None:
        if e.dim() < 2 or e.shape[1] != self.channels:
            raise ValueError(f"Compressor: expected a code [B, {self.channels}, ...], got {list(e.shape)}")
        if e.dim() != 2 and (self.head is not None or self.tail is not None):
            raise ValueError("Compressor: head/tail MLPs act on the last axis and only accept 2-D codes [B, C]")

    def latent(self, e: torch.Tensor) -> torch.Tensor:
        """The head applied to e (e itself without one): what the entropy model quantises and codes."""
        self._check(e)
        return e if self.head is None else self.head(e)

    def forward_modifiable(self, e: torch.Tensor, straight_through: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """head + entropy model: (quantised latent before the tail, likelihoods). For latent editing.

        ``straight_through``: see ``EntropyBottleneck.forward`` (the rounded latent, identity gradient).
        """
        return self.model(self.latent(e), straight_through=straight_through)

    def forward_finish(self, latent: torch.Tensor) -> torch.Tensor:
        """Applies the tail to a (possibly edited) latent from ``forward_modifiable``."""
        return latent if self.tail is None else self.tail(latent)

    def continuous(self, e: torch.Tensor) -> torch.Tensor:
        """head -> tail with the entropy model's rounding left out: the code whose noisy draws the tail saw in
        training (their mean), for inference that does not go through a bitstream."""
        return self.forward_finish(self.latent(e))

    def forward(
        self, e: torch.Tensor, straight_through: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent, likelihoods = self.forward_modifiable(e, straight_through)
        return self.forward_finish(latent), likelihoods, bits_from_likelihoods(likelihoods)
