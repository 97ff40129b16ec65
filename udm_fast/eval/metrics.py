"""Evaluation metrics: PSNR, MS-SSIM, and the evaluation of a model on paired images.

Images are float tensors [B, 3, H, W] in [0, 1]. ``evaluate_pairs`` re-applies the degradation of
each distorted image y to its clean reference x (ŷ = synthesize(x, compress(encode(y)))) and
compares ŷ with y (DISTS and LPIPS when their weights are present, MS-SSIM, PSNR); it also reports
the coding cost of the quantised codes: bits per image for e_g, bits per pixel of y for e_l.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor, where: str) -> None:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape or a.dim() != 4:
        raise ValueError(
            f"{where}: expected two image batches [B, C, H, W] of the same shape, got "
            f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}"
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise TypeError(f"{where}: expected floating-point images in [0, 1]")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image [B] in dB (inf for identical images)."""
    _check_pair(a, b, "psnr")
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(dtype: torch.dtype, device) -> torch.Tensor:
    coords = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _ssim_terms(a: torch.Tensor, b: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ssim, cs), each [B, C]: spatial means of the SSIM map and of its contrast-structure factor."""
    taps = _gaussian_window(a.dtype, a.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a**2
    var_b = _filter_valid(b * b, taps) - mu_b**2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    cs_map = (2 * cov + c2) / (var_a + var_b + c2)
    ssim_map = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs_map
    return ssim_map.mean(dim=(2, 3)), cs_map.mean(dim=(2, 3))


def ms_ssim_levels(height: int, width: int) -> int:
    """Scales MS-SSIM can use: at most 5, each at least as large as the 11-pixel window."""
    side = min(height, width)
    if side < SSIM_WINDOW:
        raise ValueError(f"ms_ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {height}x{width}")
    return min(len(MS_SSIM_WEIGHTS), 1 + int(math.floor(math.log2(side / SSIM_WINDOW))))


def ms_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Multi-scale SSIM per image [B] (Gaussian window 11, sigma 1.5, valid filtering, 2x2 average
    pooling between scales, negative terms clipped to 0, averaged over channels).

    Images with a shorter side below 176 pixels use fewer scales (as many as fit, see
    ``ms_ssim_levels``) with the first standard weights renormalised to sum to 1.
    """
    _check_pair(a, b, "ms_ssim")
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    levels = ms_ssim_levels(*a.shape[-2:])
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=dtype, device=a.device)
    if levels < len(MS_SSIM_WEIGHTS):
        weights = weights / weights.sum()
    factors = []
    for level in range(levels):
        ssim, cs = _ssim_terms(a, b, data_range)
        if level < levels - 1:
            factors.append(torch.relu(cs))
            padding = [s % 2 for s in a.shape[2:]]
            a, b = F.avg_pool2d(a, 2, padding=padding), F.avg_pool2d(b, 2, padding=padding)
    factors.append(torch.relu(ssim))
    stacked = torch.stack(factors)  # [levels, B, C]
    return torch.prod(stacked ** weights[:, None, None], dim=0).mean(dim=1)


# ----------------------------------------------------------------------------- model evaluation


@torch.no_grad()
def evaluate_pairs(
    model,
    pairs: Iterable[tuple[str, torch.Tensor, torch.Tensor]],
    *,
    perceptual: Optional[dict] = None,
    noise_seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> dict:
    """Per-image and mean metrics of ŷ against y for (name, x, y) pairs ([1, 3, H, W] in [0, 1]).

    ``perceptual`` maps metric names ("dists", "lpips") to distance modules taking ([0, 1] images)
    -> [B]. ŷ is computed by the eval-mode model with its internal noise drawn from a generator
    seeded with ``noise_seed`` for each image, and clamped to [0, 1] for the metrics.
    """
    perceptual = perceptual or {}
    model.eval()
    rows = []
    for name, x, y in pairs:
        e_g, e_l = model.encode(y, quantize=False)
        e_g_hat, _, bits_g = model.global_compressor(e_g)
        e_l_hat, _, bits_l = model.local_compressor(e_l)
        generator = torch.Generator(device=x.device).manual_seed(noise_seed)
        y_hat = model.synthesize(x, e_g_hat, e_l_hat, noise=generator).clamp(0.0, 1.0)
        row = {
            "image": name,
            "psnr": float(psnr(y_hat, y)[0]),
            "ms_ssim": float(ms_ssim(y_hat, y)[0]),
            "bits_global_per_image": float(bits_g[0]),
            "bits_local_per_pixel": float(bits_l[0].sum()) / (y.shape[-2] * y.shape[-1]),
        }
        for metric, module in perceptual.items():
            row[metric] = float(module(y_hat, y, reduction="none")[0])
        rows.append(row)
        if progress is not None:
            progress(name)
    if not rows:
        raise ValueError("evaluate_pairs: no image pairs to evaluate")
    keys = [k for k in rows[0] if k != "image"]
    means = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    return {"count": len(rows), "mean": means, "images": rows}
