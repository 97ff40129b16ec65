"""The ``reference`` backend: IDA and SFT composed of torch ops (runs everywhere; the ground truth)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .operands import NoiseArg


def ida_reference(
    x: torch.Tensor,
    m: torch.Tensor,
    w_up: torch.Tensor,
    w_map: torch.Tensor,
    w_x: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
) -> torch.Tensor:
    """IDA(x, m) = ConvT2x2( Conv3x3s2(LReLU_0.1(ConvT2x2(m))) * Conv3x3s2(x) ) + b.

    x: [B, C, H, W] (H, W even), m: [B, Cc, H/2, W/2]; weights as in ``udm_fast.IDA``. Returns [B, C_out, H, W].
    """
    a = F.conv_transpose2d(m, w_up, stride=2)
    a = F.conv2d(F.leaky_relu(a, 0.1), w_map, stride=2, padding=1)
    b = F.conv2d(x, w_x, stride=2, padding=1)
    return F.conv_transpose2d(a * b, w_out, b_out, stride=2)


def draw_noise(noise: NoiseArg, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The SFT noise map [B, 1, H, W] for features ``like``: the given tensor, or N(0, 1) draws."""
    b, _, h, w = like.shape
    if isinstance(noise, torch.Tensor):
        if tuple(noise.shape) != (b, 1, h, w):
            raise ValueError(f"SFT noise must have shape [{b}, 1, {h}, {w}], got {list(noise.shape)}")
        return noise.to(device=like.device, dtype=dtype)
    if noise is None:
        return torch.randn(b, 1, h, w, device=like.device, dtype=dtype)
    if isinstance(noise, torch.Generator):
        z = torch.randn(b, 1, h, w, generator=noise, device=noise.device, dtype=torch.float32)
        return z.to(device=like.device, dtype=dtype)
    raise TypeError(f"SFT noise must be None, a tensor or a torch.Generator, got {type(noise).__name__}")


def sft_epilogue(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, ida: torch.Tensor) -> torch.Tensor:
    """x * (1 + gamma) + beta + ida, all [B, C, H, W] (torch.compile fuses it into one pass)."""
    return x * (1 + gamma) + beta + ida
