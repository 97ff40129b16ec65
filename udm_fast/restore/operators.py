"""Known, differentiable degradation operators for the non-blind inversion (the bound the blind methods
are compared with): Gaussian blur, additive Gaussian noise and JPEG through straight-through rounding.

Each builder returns ``operator(x) -> y_hat`` for x [B, 3, H, W] in [0, 1].
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..synthesis import degrade
from ..synthesis import jpeg as jpeg_codec

Operator = Callable[[torch.Tensor], torch.Tensor]


def blur(sigma: float) -> Operator:
    """Gaussian blur of width ``sigma`` pixels (``udm_fast.degrade.gaussian_blur``, differentiable)."""
    return lambda x: degrade.gaussian_blur(x, sigma)


def noise(sigma: float, generator: Optional[torch.Generator] = None) -> Operator:
    """x + sigma * n with one fixed draw n ~ N(0, I) (drawn at the first call, then reused), unclipped so the
    gradient passes everywhere."""
    state = {}

    def apply(x: torch.Tensor) -> torch.Tensor:
        if "n" not in state or state["n"].shape != x.shape:
            state["n"] = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x + sigma * state["n"]

    return apply


def jpeg(quality: int) -> Operator:
    """JPEG round trip at ``quality`` (``udm_fast.jpeg``, libjpeg's integer arithmetic) with the
    straight-through estimator: the forward value is the codec's output, the gradient that of the identity."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg quality must be in 1..100, got {quality}")

    def apply(x: torch.Tensor) -> torch.Tensor:
        pixels = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8)
        q = torch.full((x.shape[0],), int(quality), dtype=torch.int64, device=x.device)
        coded = jpeg_codec.round_trip(pixels, q).to(x.dtype) / 255
        return x + (coded - x).detach()

    return apply


def chain(operators: Sequence[Operator]) -> Operator:
    """The operators applied in order."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        for op in operators:
            x = op(x)
        return x

    return apply
