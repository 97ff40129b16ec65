"""Training terms that are not image distances (docs/architecture.md §4, §6, §10.2).

* ``info_nce_loss``: MoCo's cross-entropy over the logits with the positive at index 0;
* ``rate_loss``: lambda_g * mean(bits_g) + lambda_l * mean(bits_l);
* ``entropy_aux_loss``: the EntropyBottleneck quantile losses, summed;
* ``wgan_critic_loss`` / ``wgan_generator_loss``: WGAN-GP as in the reference trainer.
"""

from __future__ import annotations

import sys
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..entropy.bottleneck import EntropyBottleneck
from ..models.compressors import bits_from_likelihoods

__all__ = [
    "bits_from_likelihoods",
    "info_nce_loss",
    "rate_loss",
    "entropy_aux_loss",
    "gradient_penalty",
    "CriticLoss",
    "wgan_critic_loss",
    "wgan_generator_loss",
]


def info_nce_loss(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits [B, 1 + K] (positive first, already divided by the temperature) with target 0."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"info_nce_loss: expected logits [B, 1 + K] with K >= 1, got "
            f"{list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}"
        )
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(
        logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, target, reduction=reduction
    )


def rate_loss(
    bits_global: Optional[torch.Tensor] = None,
    bits_local: Optional[torch.Tensor] = None,
    *,
    weight_global: float,
    weight_local: float,
) -> torch.Tensor:
    """weight_global * mean(bits_global) + weight_local * mean(bits_local); an absent code adds nothing.

    bits_global [B]: bits per image of e_g; bits_local [B, h, w]: bits per latent location of e_l
    (see ``bits_from_likelihoods``; bits per image pixel would be bits_local / 4).
    """
    if bits_global is None and bits_local is None:
        raise ValueError("rate_loss: give bits_global and/or bits_local")
    total = None
    for name, bits, weight, dims in (
        ("bits_global", bits_global, weight_global, 1),
        ("bits_local", bits_local, weight_local, 3),
    ):
        if bits is None:
            continue
        if not isinstance(bits, torch.Tensor) or bits.dim() != dims:
            raise ValueError(
                f"rate_loss: {name} must be a tensor with {dims} dims "
                f"({'[B]' if dims == 1 else '[B, h, w]'}), got "
                f"{list(bits.shape) if isinstance(bits, torch.Tensor) else type(bits).__name__}"
            )
        term = weight * bits.float().mean()
        total = term if total is None else total + term
    return total


def entropy_aux_loss(*modules: nn.Module) -> torch.Tensor:
    """Sum of ``loss()`` (the quantile/auxiliary loss) of every EntropyBottleneck inside the modules.

    Accepts udm_fast's and compressai's EntropyBottleneck. Raises if none is found.
    """
    kinds: tuple = (EntropyBottleneck,)
    # a compressai bottleneck can only be in the modules if compressai is already imported: look it up
    # instead of importing it (an import per call, and compressai's optional imports warn)
    compressai_models = sys.modules.get("compressai.entropy_models")
    if compressai_models is not None:
        kinds += (compressai_models.EntropyBottleneck,)
    losses = [m.loss() for module in modules for m in module.modules() if isinstance(m, kinds)]
    if not losses:
        raise ValueError("entropy_aux_loss: no EntropyBottleneck found in the given modules")
    return torch.stack([loss.reshape(()) for loss in losses]).sum()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """WGAN-GP penalty: mean over samples of (sqrt(sum g^2 + 1e-12) - 1)^2, g = d critic / d x_mix.

    x_mix = a real + (1 - a) fake with a ~ U(0, 1) drawn per sample (from ``generator`` if given, on
    its device). The gradient keeps its graph (create_graph) so the penalty trains the critic.
    """
    if real.shape != fake.shape or real.dim() < 2:
        raise ValueError(
            f"gradient_penalty: real and fake must have the same shape [B, ...], got "
            f"{list(real.shape)} and {list(fake.shape)}"
        )
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    device = generator.device if generator is not None else real.device
    a = torch.rand(shape, generator=generator, device=device, dtype=real.dtype).to(real.device)
    mixed = (a * real.detach() + (1.0 - a) * fake.detach()).requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    norm = torch.sqrt((grad * grad).flatten(1).sum(dim=1) + 1e-12)
    return ((norm - 1.0) ** 2).mean()


class CriticLoss(NamedTuple):
    """total = alpha * (mean D(fake) - mean D(real)) + alpha * gp_weight * gp (the one to minimise)."""

    total: torch.Tensor
    wasserstein: torch.Tensor  # mean D(real) - mean D(fake), detached, for logging
    gp: torch.Tensor  # the gradient penalty, detached


def wgan_critic_loss(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    alpha: float = 1.0,
    gp_weight: float = 10.0,
    generator: Optional[torch.Generator] = None,
) -> CriticLoss:
    """The critic step (docs/architecture.md §10.2) on critic inputs real/fake [B, ...] (both detached here).

    Scores may have any shape per sample (e.g. [B] or [B, n] patch scores); means run over all of them.
    """
    real, fake = real.detach(), fake.detach()
    d_real = critic(real).mean()
    d_fake = critic(fake).mean()
    gp = gradient_penalty(critic, real, fake, generator=generator)
    total = alpha * (d_fake - d_real) + alpha * gp_weight * gp
    return CriticLoss(total, (d_real - d_fake).detach(), gp.detach())


def wgan_generator_loss(
    critic: Callable[[torch.Tensor], torch.Tensor], fake: torch.Tensor, *, alpha: float = 1.0
) -> torch.Tensor:
    """-alpha * mean D(fake): the generator's adversarial term (fake keeps its graph)."""
    return -alpha * critic(fake).mean()
