"""Pixel-domain losses: L1, the colour loss ``rgbn`` and the diversity loss (docs/architecture.md §10.2).

Domains: the reference computed these on its [-1, 1] tensors. Our images are in [0, 1]; the colour
and diversity losses take ``domain="unit"`` ([0, 1], the default) or ``domain="signed"`` ([-1, 1])
and return the reference's number for the same underlying image either way. The statistics are
computed in float32 (float64 for float64 inputs), outside autocast.
"""

from __future__ import annotations

import torch

from .image_ops import check_pair, no_autocast, reduce, separable_filter, stat_dtype

COLOR_KERNEL_SIZE = 45
COLOR_SIGMA = 50.0
DIVERSITY_KERNEL_SIZE = 11
DIVERSITY_SIGMA = 1.5
DIVERSITY_C2 = 0.12  # 0.03 * 2^2: SSIM's (0.03 L)^2 with L = 2, the dynamic range of [-1, 1] images
DOMAINS = ("unit", "signed")


def _check_domain(domain: str, where: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"{where}: domain must be 'unit' ([0, 1] images) or 'signed' ([-1, 1]), got {domain!r}")


def _gaussian_taps(positions: torch.Tensor, sigma: float) -> torch.Tensor:
    g = torch.exp(-(positions**2) / (2.0 * sigma**2))
    return g / g.sum()


def color_kernel1d(dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The colour loss's 1-D Gaussian: 45 taps at -22..22, sigma 50, summing to 1 (nearly a box)."""
    half = COLOR_KERNEL_SIZE // 2
    taps = _gaussian_taps(torch.arange(-half, half + 1, dtype=torch.float64), COLOR_SIGMA)
    return taps.to(device=device, dtype=dtype)


def diversity_kernel1d(dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The diversity loss's 1-D Gaussian, reproducing the reference quirk: 11 taps at -6, -4.9, ..., 5
    (step 1.1, so slightly off-centre), sigma 1.5, summing to 1."""
    return _gaussian_taps(torch.linspace(-6.0, 5.0, DIVERSITY_KERNEL_SIZE, dtype=torch.float64), DIVERSITY_SIGMA).to(
        device=device, dtype=dtype
    )


def l1_loss(a: torch.Tensor, b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """mean |a - b| in the inputs' own units ([B] per sample for reduction='none').

    The reference computed it on [-1, 1] tensors, i.e. twice the value for [0, 1] images; see
    ``LossWeights.l1`` for the matching weight.
    """
    check_pair(a, b, "l1_loss")
    return reduce((a - b).abs(), reduction, "l1_loss")


def color_loss(
    y: torch.Tensor, y_hat: torch.Tensor, *, domain: str = "unit", eps: float = 1e-8, reduction: str = "mean"
) -> torch.Tensor:
    """The reference colour loss ``rgbn``: mean |blur(n(y)) - blur(n(y_hat))|.

    n: per-sample min-max normalisation over all channels and pixels jointly, (t - min) / (max - min);
    blur: depthwise 45x45 Gaussian (sigma 50, separable), reflect padding 22 (H, W >= 23).
    For domain='signed' the images are first mapped by (t + 1) / 2 as the reference did; n is
    invariant to that map, so both domains give the same value for the same image. The reference has
    no epsilon (NaN for a flat image); here max - min is clamped at ``eps``, which changes nothing
    for any image whose range exceeds eps (every non-flat 8-bit image).
    """
    check_pair(y, y_hat, "color_loss", min_size=COLOR_KERNEL_SIZE // 2 + 1)
    _check_domain(domain, "color_loss")
    with no_autocast(y.device.type):
        taps = color_kernel1d(stat_dtype(y), y.device)
        blurred = []
        for t in (y, y_hat):
            t = t.to(taps.dtype)
            if domain == "signed":
                t = (t + 1.0) / 2.0
            low = t.amin(dim=(1, 2, 3), keepdim=True)
            high = t.amax(dim=(1, 2, 3), keepdim=True)
            blurred.append(separable_filter((t - low) / (high - low).clamp_min(eps), taps))
        return reduce((blurred[0] - blurred[1]).abs(), reduction, "color_loss")


def diversity_loss(
    y0: torch.Tensor, y1: torch.Tensor, *, domain: str = "unit", c2: float = DIVERSITY_C2, reduction: str = "mean"
) -> torch.Tensor:
    """The reference diversity loss: mean of cs = (2 |s01| + c2) / (s0^2 + s1^2 + c2).

    Local variances s0^2, s1^2 and covariance s01 use the depthwise window ``diversity_kernel1d``
    (x) itself with reflect padding 5 (H, W >= 6). Minimising it decorrelates two samples.
    c2 is in [-1, 1] units (the reference's 0.12); for domain='unit' the images are mapped by
    2t - 1 first, so the value equals the reference's for the same underlying images.
    """
    check_pair(y0, y1, "diversity_loss", min_size=DIVERSITY_KERNEL_SIZE // 2 + 1)
    _check_domain(domain, "diversity_loss")
    with no_autocast(y0.device.type):
        taps = diversity_kernel1d(stat_dtype(y0), y0.device)
        a, b = y0.to(taps.dtype), y1.to(taps.dtype)
        if domain == "unit":
            a, b = 2.0 * a - 1.0, 2.0 * b - 1.0
        mu_a, mu_b = separable_filter(a, taps), separable_filter(b, taps)
        var_a = separable_filter(a * a, taps) - mu_a**2
        var_b = separable_filter(b * b, taps) - mu_b**2
        cov = separable_filter(a * b, taps) - mu_a * mu_b
        cs = (2.0 * cov.abs() + c2) / (var_a + var_b + c2)
        return reduce(cs, reduction, "diversity_loss")
