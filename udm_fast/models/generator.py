"""The degradation synthesiser: ``Generator`` (reference ``BasicWrapper``) around ``VUNet``.

Both work in the model's internal [-1, 1] image domain and keep the reference's
quirk of mapping the input through 2x - 1 again (docs/architecture.md §7.2), for checkpoint
parity.  Every SFT layer draws a noise map; ``noise`` controls it:

* ``None``: fresh N(0, 1) draws (the reference's behaviour);
* a ``torch.Generator``: reproducible draws;
* a list of the 32 per-layer maps [B, 1, h, w] in execution order
  (blocks1[0].sft1, blocks1[0].sft2, blocks1[1].sft1, ..., blocks1_[3].sft2):
  the generator is then deterministic and differentiable w.r.t. the noise.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn

from ..layers import NoiseArg, PreActConv2d, PreActConvTranspose2d, SFTResBlock, resize_cond

Noise = Union[None, torch.Generator, Sequence[torch.Tensor]]
CondAt = Callable[[int, int], torch.Tensor]

N_BLOCKS = (4, 3, 2, 3, 4)  # blocks1, blocks2, blocks3, blocks2_, blocks1_
DOWNSCALE = (1, 2, 4, 2, 1)  # feature resolution of each group relative to the input
N_SFT_LAYERS = 2 * sum(N_BLOCKS)


class NoiseStream:
    """Hands each SFT layer its noise argument, in execution order.

    ``window`` = (row, col) full-resolution offset of a tile inside the full image: explicit
    full-image noise maps are then cropped to the tile at each layer's resolution.
    """

    def __init__(self, noise: Noise, window: Optional[tuple[int, int]] = None):
        if noise is None or isinstance(noise, torch.Generator):
            self._maps = None
        elif isinstance(noise, (list, tuple)):
            if len(noise) != N_SFT_LAYERS or not all(isinstance(n, torch.Tensor) for n in noise):
                raise ValueError(
                    f"noise must be a list of {N_SFT_LAYERS} tensors [B, 1, h, w] (one per SFT layer), "
                    f"got {len(noise)} items"
                )
            self._maps = list(noise)
        else:
            raise TypeError(
                f"noise must be None, a torch.Generator or a list of {N_SFT_LAYERS} tensors, got {type(noise).__name__}"
            )
        self._noise = noise
        self._window = window
        self._index = 0

    def next(self, like: torch.Tensor, full_res_height: int) -> NoiseArg:
        """Noise argument for the next SFT layer whose features are ``like`` (tile height ``full_res_height``)."""
        if self._maps is None:
            return self._noise
        if self._index >= len(self._maps):
            raise ValueError(f"noise list exhausted after {len(self._maps)} SFT layers")
        z = self._maps[self._index]
        self._index += 1
        if self._window is None:
            return z
        scale = full_res_height // like.shape[-2]
        r, c = self._window[0] // scale, self._window[1] // scale
        return z[..., r : r + like.shape[-2], c : c + like.shape[-1]]


class VUNet(nn.Module):
    """Three-level U-Net of SFT residual blocks (K = filters, 2*filters, 4*filters).

    forward(clean [B, 3, H, W] (H, W multiples of 8), cond [B, cond_dim, h, w], noise) -> [B, 3, H, W].
    ``residual``: the output is clean + the network's (the reference has no such skip).
    """

    def __init__(self, filters: int = 64, proj_dim_noise: int = 8, residual: bool = False):
        super().__init__()
        self.residual = residual
        k1, k2, k3 = filters, 2 * filters, 4 * filters
        lrelu, relu = nn.LeakyReLU(0.01), nn.ReLU()
        cond_dim = proj_dim_noise
        self.filters, self.cond_dim = filters, cond_dim

        def blocks(channels: int, count: int) -> nn.ModuleList:
            return nn.ModuleList([SFTResBlock(channels, 3, cond_dim, activation=lrelu) for _ in range(count)])

        self.map_head = PreActConv2d(cond_dim, cond_dim, 3)  # default pre-activation: ReLU
        self.conv_first = PreActConv2d(3, k1, 3, activation=None)
        self.blocks1 = blocks(k1, N_BLOCKS[0])
        self.conv_down1 = PreActConv2d(k1, k2, 4, stride=2, activation=None)
        self.blocks2 = blocks(k2, N_BLOCKS[1])
        self.conv_down2 = PreActConv2d(k2, k3, 4, stride=2, activation=None)
        self.blocks3 = blocks(k3, N_BLOCKS[2])
        self.conv_up2 = PreActConvTranspose2d(k3, k2, 4, stride=2)
        self.conv_skip2 = PreActConv2d(2 * k2, k2, 3, activation=lrelu)
        self.blocks2_ = blocks(k2, N_BLOCKS[3])
        self.conv_up1 = PreActConvTranspose2d(k2, k1, 4, stride=2)
        self.conv_skip1 = PreActConv2d(2 * k1, k1, 3, activation=lrelu)
        self.blocks1_ = blocks(k1, N_BLOCKS[4] - 1)
        self.blocks1_.append(SFTResBlock(k1, 3, cond_dim, activation=relu))  # the report's modified last block
        self.conv_last = PreActConv2d(k1, 3, 1, activation=lrelu)

    def sft_layers(self) -> List[nn.Module]:
        """The 32 SFT layers in execution order (the order of the explicit noise list)."""
        groups = (self.blocks1, self.blocks2, self.blocks3, self.blocks2_, self.blocks1_)
        return [sft for group in groups for block in group for sft in (block.sft1, block.sft2)]

    def noise_shapes(self, batch: int, height: int, width: int) -> List[tuple]:
        """Shapes [B, 1, h, w] of the 32 per-layer noise maps for an input of height x width."""
        sizes = [scale for scale, n in zip(DOWNSCALE, N_BLOCKS) for _ in range(2 * n)]
        return [(batch, 1, height // s, width // s) for s in sizes]

    def forward(
        self,
        clean: torch.Tensor,
        cond: torch.Tensor,
        noise: Noise = None,
        cond_at: Optional[CondAt] = None,
        noise_window: Optional[tuple[int, int]] = None,
    ) -> torch.Tensor:
        """``cond_at(h, w)`` overrides how the mapped condition is resampled to a level (tiling, padded
        images); each level size is resampled once per call either way."""
        h, w = clean.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"VUNet: input height and width must be multiples of 8, got {h}x{w}")
        stream = noise if isinstance(noise, NoiseStream) else NoiseStream(noise, noise_window)
        if cond_at is None:
            mapped = self.map_head(cond)

            def cond_at(hh: int, ww: int) -> torch.Tensor:
                return resize_cond(mapped, (hh, ww))

        resample, cache = cond_at, {}

        def cond_at(hh: int, ww: int) -> torch.Tensor:
            if (hh, ww) not in cache:
                cache[(hh, ww)] = resample(hh, ww)
            return cache[(hh, ww)]

        def run(group: nn.ModuleList, y: torch.Tensor) -> torch.Tensor:
            hh, ww = y.shape[-2:]
            full, half = cond_at(hh, ww), cond_at(hh // 2, ww // 2)
            for block in group:
                n1 = stream.next(y, h)
                n2 = stream.next(y, h)
                y = block.forward_resized(y, full, half, n1, n2)
            return y

        y = self.conv_first(clean * 2 - 1)
        skip1 = y = run(self.blocks1, y)
        skip2 = y = run(self.blocks2, self.conv_down1(y))
        y = run(self.blocks3, self.conv_down2(y))
        y = self.conv_skip2(torch.cat((self.conv_up2(y), skip2), dim=1))
        y = run(self.blocks2_, y)
        y = self.conv_skip1(torch.cat((self.conv_up1(y), skip1), dim=1))
        y = run(self.blocks1_, y)
        out = self.conv_last(y)
        return out + clean.to(out.dtype) if self.residual else out


class IdentityGate(nn.Module):
    """g(e_g) in (0, 1), one per image: how much of the network's change the generator keeps [ours].

    forward(e_g [B, emb_dim]) -> [B, 1, 1, 1]. Starts open (g = sigmoid(OPEN_BIAS) ~ 0.98 for every code), so a
    model fine-tuned with a new gate starts where it was; g -> 0 returns the clean image unchanged, for every
    photo, which the network alone cannot (bench/RESULTS.md, sessions 11 and 13).
    """

    OPEN_BIAS = 4.0

    def __init__(self, emb_dim: int, hidden: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(emb_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.constant_(self.mlp[2].bias, self.OPEN_BIAS)

    def logits(self, e_g: torch.Tensor) -> torch.Tensor:
        """The gate before its sigmoid, [B]."""
        return self.mlp(e_g.to(self.mlp[0].weight.dtype))[:, 0]

    def forward(self, e_g: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(e_g))[:, None, None, None]


class Generator(nn.Module):
    """ŷ = VUNet(x, conv3x3([e_l ; tile(e_g)])) — reference ``BasicWrapper`` (internal [-1, 1] domain).

    forward(x [B, 3 (or 4), H, W], e_g [B, emb_dim], e_l [B, loc_emb_dim, h, w], noise=None) -> [B, 3, H, W].
    A 4th input channel (the reference's random state) is dropped, as in the reference. With
    ``identity_gate`` the output is x + g(e_g) (VUNet(...) - x) (``IdentityGate``; the reference has none).
    """

    def __init__(
        self,
        n_filter: int = 64,
        proj_dim_noise: int = 8,
        loc_emb_dim: int = 4,
        emb_dim: int = 256,
        residual: bool = False,
        identity_gate: bool = False,
    ):
        super().__init__()
        self.net = VUNet(n_filter, proj_dim_noise, residual)
        self.conv = nn.Conv2d(loc_emb_dim + emb_dim, proj_dim_noise, 3, padding=1)
        self.gate = IdentityGate(emb_dim) if identity_gate else None
        self.detach_gate = False  # training: the gate's value passes no gradient back (loss.gate_from_plan)
        self.loc_emb_dim, self.emb_dim = loc_emb_dim, emb_dim

    def gated(self, out: torch.Tensor, x: torch.Tensor, e_g: torch.Tensor) -> torch.Tensor:
        """x + g(e_g) (out - x) with the identity gate, else out (x, out [B, 3, H, W] in the [-1, 1] domain)."""
        if self.gate is None:
            return out
        x = x[:, :3].to(out.dtype)
        gate = self.gate(e_g)
        return x + (gate.detach() if self.detach_gate else gate).to(out.dtype) * (out - x)

    def condition(self, e_g: torch.Tensor, e_l: torch.Tensor) -> torch.Tensor:
        """The condition map [B, cond_dim, h, w] at e_l's resolution (before map_head)."""
        if e_g.dim() != 2 or e_g.shape[1] != self.emb_dim:
            raise ValueError(f"Generator: e_g must be [B, {self.emb_dim}], got {list(e_g.shape)}")
        if e_l.dim() != 4 or e_l.shape[1] != self.loc_emb_dim:
            raise ValueError(f"Generator: e_l must be [B, {self.loc_emb_dim}, h, w], got {list(e_l.shape)}")
        if e_g.shape[0] != e_l.shape[0]:
            raise ValueError(f"Generator: e_g and e_l batch sizes differ ({e_g.shape[0]} vs {e_l.shape[0]})")
        tiled = e_g[:, :, None, None].expand(-1, -1, e_l.shape[2], e_l.shape[3])
        return self.conv(torch.cat((e_l, tiled.to(e_l.dtype)), dim=1))

    def forward(self, x: torch.Tensor, e_g: torch.Tensor, e_l: torch.Tensor, noise: Noise = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (3, 4):
            raise ValueError(
                f"Generator: x must be [B, 3, H, W] (or 4 channels with a random state), got {list(x.shape)}"
            )
        x = x[:, :3]
        cond = self.condition(e_g, e_l)
        if cond.shape[0] != x.shape[0]:
            raise ValueError(f"Generator: x has batch {x.shape[0]} but the codes have batch {cond.shape[0]}")
        return self.gated(self.net(x, cond, noise), x, e_g)
