"""Known, differentiable degradation operators for the non-blind inversion (the bound the blind methods
are compared with): Gaussian blur, additive Gaussian noise and JPEG (the exact codec forward, the
gradient of a float JPEG approximation).

Each builder returns ``operator(x) -> y_hat`` for x [B, 3, H, W] in [0, 1].
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch.nn import functional as F

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


def straight_through_round(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, the identity's gradient backward."""
    return x + (x.round() - x).detach()


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The orthonormal 8-point DCT-II [8, 8] (row k: c_k cos((2n + 1) k pi / 16)); JPEG's 2-D DCT is
    D block D^T."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None]
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(dtype=dtype, device=device)


def _lossy_plane_float(plane: torch.Tensor, table: torch.Tensor, rounding) -> torch.Tensor:
    """Samples [B, H, W] (multiples of 8, 0..255) after the 8x8 DCT, quantisation by ``table`` [B, 8, 8]
    with ``rounding``, dequantisation and the inverse DCT."""
    b, h, w = plane.shape
    d = _dct_matrix(plane.dtype, plane.device)
    blocks = (plane - 128).reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3)
    table = table.to(plane.dtype)[:, None, None]
    coefficients = d @ blocks @ d.T
    blocks = d.T @ (rounding(coefficients / table) * table) @ d
    return blocks.transpose(2, 3).reshape(b, h, w) + 128


def jpeg_float(
    x: torch.Tensor, quality: int, rounding: Callable[[torch.Tensor], torch.Tensor] = straight_through_round
) -> torch.Tensor:
    """A float, differentiable approximation of the JPEG round trip of x [B, 3, H, W] in [0, 1] at
    ``quality`` (libjpeg's tables, ``udm_fast.synthesis.jpeg.quant_tables``): RGB -> YCbCr (JFIF), the
    planes padded to whole 16x16 MCUs by edge replication, 4:2:0 chroma by 2x2 averages, the
    orthonormal 8x8 DCT, division by the quantisation table and ``rounding``, dequantisation, the
    inverse DCT, chroma upsampling of the visible area by the triangle filter (bilinear, half-pixel
    centres, as libjpeg's fancy upsampling), YCbCr -> RGB. No pixel rounding or clamping. -> [B, 3, H, W].

    With ``rounding`` the identity the whole map is linear (the chroma subsampling is all that is left)."""
    b, _, h, w = x.shape
    r, g, bl = (255 * x).unbind(1)
    luma = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl + 128
    mcu_h, mcu_w = -(-h // 16) * 16, -(-w // 16) * 16
    padded = F.pad(torch.stack((luma, cb, cr), 1), (0, mcu_w - w, 0, mcu_h - h), mode="replicate")
    tables = jpeg_codec.quant_tables(torch.full((b,), int(quality), dtype=torch.int64)).to(x.device)
    luma = _lossy_plane_float(padded[:, 0], tables[:, 0], rounding)[:, :h, :w]
    chroma = F.avg_pool2d(padded[:, 1:], 2).flatten(0, 1)  # [2B] as Cb, Cr of each image
    chroma = _lossy_plane_float(chroma, tables[:, 1].repeat_interleave(2, 0), rounding)
    chroma = chroma.unflatten(0, (b, 2))[..., : -(-h // 2), : -(-w // 2)]
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
    cb, cr = chroma[:, 0] - 128, chroma[:, 1] - 128
    rgb = torch.stack((luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb), 1)
    return rgb / 255


def jpeg(quality: int) -> Operator:
    """JPEG round trip at ``quality``: the forward value is the exact codec's output (``udm_fast.jpeg``,
    libjpeg's integer arithmetic), the gradient that of ``jpeg_float`` (straight-through only at the
    quantiser's rounding): exact + (approx - approx.detach())."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg quality must be in 1..100, got {quality}")

    def apply(x: torch.Tensor) -> torch.Tensor:
        pixels = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8)
        q = torch.full((x.shape[0],), int(quality), dtype=torch.int64, device=x.device)
        exact = jpeg_codec.round_trip(pixels, q).to(x.dtype) / 255
        approx = jpeg_float(x, quality)
        return exact + (approx - approx.detach())

    return apply


def chain(operators: Sequence[Operator]) -> Operator:
    """The operators applied in order."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        for op in operators:
            x = op(x)
        return x

    return apply
