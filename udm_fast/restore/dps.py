"""Diffusion posterior sampling (DPS, Chung et al. 2023) with a measurement operator, e.g. the degradation
model as a learned re-degrader (docs/restore.md).

The sampler runs DDPM ancestral steps of a user-supplied noise predictor ``denoiser(x_t, t) -> eps`` under
the schedule ``alphas_cumprod`` [T] and, after each step, moves x_{t-1} against the gradient with respect to
x_t of the measurement error ``|y - A(x0_hat(x_t))|``, where x0_hat is Tweedie's estimate
(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t). ``diffusers`` models plug in through ``DiffusersDenoiser``
(the library is optional; nothing here imports it).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .invert import LearnedRedegrader, frozen

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dps_sample(
    y: torch.Tensor,
    denoiser: Denoiser,
    alphas_cumprod: torch.Tensor,
    measurement: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple,
    *,
    zeta: float = 1.0,
    sigma_y: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """A sample x_0 [shape] of p(x | y) by DPS over all T steps of ``alphas_cumprod`` (decreasing, in (0, 1]).

    Guidance: with ``sigma_y`` (the measurement noise's standard deviation) the Gaussian likelihood
    |y - A(x0_hat)|^2 / (2 sigma_y^2) enters as a score, scaled by the step's beta_t / sqrt(alpha_t) as the
    prior score is; without it, DPS's normalised step: ``zeta`` times the gradient of |y - A(x0_hat)|.
    Per sample of the batch: the guidance of each sample depends on its own residual only.
    ``progress(i)`` is called after step i (0-based). The parameters of ``denoiser`` and ``measurement``
    (where they are modules) have requires_grad off while sampling and get their flags back after.
    A measurement whose output differs in shape from y raises ValueError.
    """
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if (
        abar.dim() != 1
        or len(abar) < 2
        or not bool(((abar > 0) & (abar <= 1)).all())
        or not bool((abar[1:] <= abar[:-1]).all())
    ):
        raise ValueError("alphas_cumprod must be a decreasing 1-D schedule in (0, 1] with at least 2 entries")
    if sigma_y is not None and sigma_y <= 0:
        raise ValueError(f"sigma_y must be positive, got {sigma_y}")
    dtype, device = y.dtype, y.device
    x = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    steps = len(abar)
    with frozen(denoiser, measurement):
        for i, t in enumerate(range(steps - 1, -1, -1)):
            a_t = float(abar[t])
            a_prev = float(abar[t - 1]) if t > 0 else 1.0
            alpha = a_t / a_prev
            beta = 1.0 - alpha
            x = x.detach().requires_grad_(True)
            eps = denoiser(x, torch.full((shape[0],), t, device=device, dtype=torch.long))
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            measured = measurement(x0)
            if measured.shape != y.shape:
                raise ValueError(f"dps_sample: measurement(x0) has shape {list(measured.shape)}, y has {list(y.shape)}")
            residual = (y - measured).flatten(1)
            if sigma_y is not None:
                objective = residual.pow(2).sum() / (2 * sigma_y**2)
                scale = beta / alpha**0.5
            else:
                objective = residual.norm(dim=1).sum()
                scale = zeta
            (grad,) = torch.autograd.grad(objective, x)
            with torch.no_grad():
                # DDPM posterior q(x_{t-1} | x_t, x0_hat): mean and variance
                mean = (a_prev**0.5 * beta / (1 - a_t)) * x0 + (alpha**0.5 * (1 - a_prev) / (1 - a_t)) * x
                var = beta * (1 - a_prev) / (1 - a_t)
                z = torch.randn(shape, generator=generator, dtype=dtype).to(device) if t > 0 else torch.zeros_like(x)
                x = mean + var**0.5 * z - scale * grad
            if progress is not None:
                progress(i)
    return x.detach()


class SignedMeasurement(nn.Module):
    """x0 in [-1, 1] -> 2 inner((x0 + 1) / 2) - 1 (x0 clamped first): an operator on [0, 1] images in the
    diffusion domain."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return self.inner((x0.clamp(-1, 1) + 1) / 2) * 2 - 1


def redegrader_measurement(
    model, y: torch.Tensor, generator: Optional[torch.Generator] = None, signed: bool = True
) -> nn.Module:
    """The degradation model as DPS measurement operator for y [B, 3, H, W] in [0, 1]: x0 ->
    synthesize(x0, encode(y), n) with fixed noise maps n ~ N(0, I) (a module holding the model; its code
    is fixed, and ``dps_sample`` turns the model's requires_grad off only while it samples). With
    ``signed`` (the usual diffusion domain) x0 is in [-1, 1] and the output is mapped to [-1, 1] too, so
    pass y as 2 y - 1 to the sampler."""
    redegrader = LearnedRedegrader(model, y, generator)
    for v in redegrader.variables():
        v.requires_grad_(False)
    return SignedMeasurement(redegrader) if signed else redegrader


class DiffusersDenoiser(nn.Module):
    """A ``diffusers`` UNet2DModel as ``denoiser``: (x_t [B, C, H, W], t [B]) -> eps = unet(x_t, t).sample;
    use it with the scheduler's ``alphas_cumprod`` (e.g. ``DDPMScheduler.from_pretrained(...)``)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample
