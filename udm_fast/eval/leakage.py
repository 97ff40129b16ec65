"""Content leakage of a degradation transfer: how much of the *source* photo (the one behind the degraded
image y whose code was used) shows up in what the transfer adds to the clean target x.

A model that transfers only the degradation adds to x something that depends on x and on the
degradation (noise, a blur of x's own edges, JPEG blocks), not on the layout of the source photo. A
model whose code carries content prints the source's shapes into the result. ``content_leakage``
measures that as a correlation of edge maps after a low-pass:

    added   = low-pass(ŷ - x)          (what the transfer adds; the low-pass removes noise grain)
    edges_a = |∇ grey(added)|,   edges_s = |∇ grey(low-pass(source))|,   edges_x = |∇ grey(low-pass(x))|
    leakage = partial correlation of edges_a and edges_s over the pixels, given edges_x

Controlling for x's own edges keeps a correctly transferred blur (which changes x where x has edges)
from counting as leakage when the two photos happen to share structure. About 0: nothing of the
source (the reference is the true degraded pair, y_x - x against the source); 1: the added signal is
the source's edge map. Images are float tensors [B, 3, H, W] in [0, 1]; the statistics use float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..degrade import gaussian_kernel1d

LEAKAGE_SIGMA = 2.0  # pixels: the low-pass that removes noise grain but keeps the shapes of a photo


def _check(images: torch.Tensor, where: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"content_leakage: {where} must be a float image batch [B, C, H, W], got "
            f"{getattr(images, 'shape', type(images).__name__)}"
        )
    if min(images.shape[-2:]) < 8:
        raise ValueError(f"content_leakage: {where} must be at least 8x8, got {tuple(images.shape[-2:])}")
    return images.double()


def edge_map(images: torch.Tensor, sigma: float = LEAKAGE_SIGMA, eps: float = 0.0) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H-2)*(W-2)]: gradient magnitude (central differences) of the channel mean
    after a Gaussian low-pass of ``sigma`` pixels, at the interior pixels; ``eps`` is added under the
    square root (> 0 keeps the gradient finite where the image is flat, for a training loss)."""
    kernel = gaussian_kernel1d(sigma, dtype=images.dtype, device=images.device)[0]
    radius = kernel.numel() // 2
    if radius >= min(images.shape[-2:]):
        raise ValueError(f"content_leakage: images of {tuple(images.shape[-2:])} are too small for sigma {sigma}")
    grey = F.pad(images.mean(dim=1, keepdim=True), (radius,) * 4, mode="reflect")
    grey = F.conv2d(F.conv2d(grey, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))[:, 0]
    gy = (grey[:, 2:, 1:-1] - grey[:, :-2, 1:-1]) / 2
    gx = (grey[:, 1:-1, 2:] - grey[:, 1:-1, :-2]) / 2
    return torch.sqrt(gx * gx + gy * gy + eps).flatten(1)


def _residual(values: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """values [B, N] minus their least-squares fit a + b * control, per row (centred values when the
    control is constant)."""
    v = values - values.mean(dim=1, keepdim=True)
    c = control - control.mean(dim=1, keepdim=True)
    scale = (v * c).sum(dim=1, keepdim=True) / (c * c).sum(dim=1, keepdim=True).clamp_min(1e-300)
    return v - scale * c


def content_leakage(
    y_hat: torch.Tensor, x: torch.Tensor, source: torch.Tensor, sigma: float = LEAKAGE_SIGMA
) -> torch.Tensor:
    """Leakage [B] of the source photo into the transfer ŷ = transfer(x, code of a degradation of source).

    y_hat, x, source [B, 3, H, W] in [0, 1] (source: the clean photo behind the code's image, cut at the
    same place). Partial correlation (in [-1, 1], about 0 for no leakage) of the edge maps of
    low-pass(ŷ - x) and low-pass(source), given the edge map of low-pass(x). 0 when ŷ adds nothing
    with any structure (e.g. ŷ = x)."""
    y_hat, x, source = _check(y_hat, "y_hat"), _check(x, "x"), _check(source, "source")
    if not y_hat.shape == x.shape == source.shape:
        raise ValueError(
            f"content_leakage: y_hat, x and source differ in shape: {tuple(y_hat.shape)}, "
            f"{tuple(x.shape)}, {tuple(source.shape)}"
        )
    if sigma <= 0:
        raise ValueError(f"content_leakage: sigma must be > 0 pixels, got {sigma}")
    return _partial_correlation(y_hat, x, source, sigma, eps=0.0, tiny=1e-300, flat=1e-24)


def _partial_correlation(y_hat, x, source, sigma: float, eps: float, tiny: float, flat: float) -> torch.Tensor:
    edges_x = edge_map(x, sigma, eps)
    added = _residual(edge_map(y_hat - x, sigma, eps), edges_x)
    shapes = _residual(edge_map(source, sigma, eps), edges_x)
    norm = torch.sqrt((added * added).sum(dim=1) * (shapes * shapes).sum(dim=1) + tiny)
    correlation = (added * shapes).sum(dim=1) / norm
    return torch.where(norm > flat, correlation, torch.zeros_like(correlation))


def leakage_loss(
    y_hat: torch.Tensor, x: torch.Tensor, source: torch.Tensor, sigma: float = LEAKAGE_SIGMA
) -> torch.Tensor:
    """Differentiable training term: mean |``content_leakage``| [scalar] in float32 (y_hat [B, 3, H, W]
    is the transfer to x of the code of a degraded ``source``; no range or shape checks beyond torch's)."""
    y_hat, x, source = (t.float() for t in (y_hat, x, source))
    return _partial_correlation(y_hat, x, source, sigma, eps=1e-10, tiny=1e-20, flat=1e-12).abs().mean()


def content_leakage_resized(
    y_hat: torch.Tensor, x: torch.Tensor, source: torch.Tensor, sigma: float = LEAKAGE_SIGMA
) -> torch.Tensor:
    """``content_leakage`` of a source photo of another size (y_hat and x [B, 3, H, W], source
    [B, 3, H', W']): the source is resized (bilinear, antialiased) to H x W first, as the model resizes
    the spatial code of y to x's size."""
    if source.dim() == 4 and source.shape[-2:] != x.shape[-2:]:
        source = F.interpolate(
            source.double(), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False, antialias=True
        ).clamp(0.0, 1.0)
    return content_leakage(y_hat, x, source, sigma=sigma)
