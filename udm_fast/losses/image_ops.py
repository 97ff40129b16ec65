"""Helpers the pixel and spectral losses share: input checks, reductions, the statistics dtype,
autocast off, and the reflect-padded separable filter."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def check_pair(a: torch.Tensor, b: torch.Tensor, where: str, min_size: int = 1) -> None:
    """Raises TypeError / ValueError unless a and b are float image batches [B, C, H, W] of one shape,
    B >= 1, each side at least ``min_size``; ``where`` names the caller in the message."""
    for name, t in (("first", a), ("second", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: the {name} input must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{where}: expected images [B, C, H, W], got shape {list(t.shape)} for the {name} input")
        if not t.is_floating_point():
            raise TypeError(f"{where}: expected floating-point images, got {t.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"{where}: the inputs must have the same shape, got {list(a.shape)} and {list(b.shape)}")
    if min(a.shape[2:]) < min_size:
        raise ValueError(f"{where}: images must be at least {min_size}x{min_size}, got {list(a.shape[2:])}")
    if a.shape[0] == 0:
        raise ValueError(f"{where}: the batch is empty")


def reduce(per_element: torch.Tensor, reduction: str, where: str) -> torch.Tensor:
    """'mean' over everything, or 'none': the mean per sample [B]."""
    if reduction == "mean":
        return per_element.mean()
    if reduction == "none":
        return per_element.flatten(1).mean(dim=1)
    raise ValueError(f"{where}: reduction must be 'mean' or 'none', got {reduction!r}")


def stat_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def no_autocast(device_type: str):
    return (
        torch.autocast(device_type=device_type, enabled=False)
        if device_type in ("cuda", "cpu")
        else contextlib.nullcontext()
    )


def separable_filter(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Depthwise correlation with taps (x) taps, reflect padding len(taps) // 2: [B, C, H, W] -> same."""
    c = x.shape[1]
    pad = taps.numel() // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    w = taps.to(device=x.device, dtype=x.dtype)
    x = F.conv2d(x, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
