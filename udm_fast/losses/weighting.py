"""Loss weights of the generator objective and the critic settings (docs/architecture.md §10.2)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Mapping

import torch

from ..utils.dataclass_dict import checked_fields
from .spectral import LOWPASS_SIGMA, SPECTRUM_MARGIN, WEIGHTINGS

# names of the generator-loss terms that ``LossWeights.weighted_sum`` accepts (the other fields are critic settings)
TERMS = (
    "dists",
    "lpips",
    "l1",
    "l1_noise_free",
    "gate_clean",
    "lowpass_l1",
    "spectrum",
    "spectrum_relative",
    "transfer",
    "color",
    "contrastive",
    "bits_global",
    "bits_local",
    "diversity",
    "gan_generator",
    "aux",
)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator loss terms, plus the WGAN-GP critic settings.

    Defaults reproduce the reference film-grain configuration (docs/architecture.md §10.2), with its bugs fixed:

    * ``dists`` 10 on DISTS of [0, 1] images (the reference fed [-1, 1], a bug; docs/architecture.md §14);
    * ``l1`` 20 on mean |y - y_hat| of [0, 1] images = the reference's 10 on its [-1, 1] tensors
      (the same underlying term: the [-1, 1] difference is twice the [0, 1] one);
    * ``l1_noise_free`` 0: L1 against y on the synthesised pairs drawn without noise only (their y is a
      function of x, so pixel-exact reconstruction is learnable; against noise, L1 teaches dropping it),
      averaged over the whole batch (noisy pairs count 0);
    * ``gate_clean`` 0: binary cross-entropy of the identity gate (``model.identity_gate``) against what the
      synthesis plan drew: 0 for the pairs without any op (y is x, or JPEG(x) only), 1 for the others, so
      the gate learns to leave nearly clean images alone and to stay open on degraded ones [ours];
    * ``color`` 10 (rgbn, domain-independent); ``diversity`` 1 (``diversity_loss`` works in the
      reference's [-1, 1] units); ``contrastive`` 1e-4; ``bits_global`` 2e-3 (per image of e_g);
      ``bits_local`` 0.05 (per latent location of e_l); ``aux`` 1 (EntropyBottleneck quantile loss,
      added to the generator loss as in the reference);
    * ``gan_generator`` 10 on ``wgan_generator_loss``, which already carries ``critic_alpha``;
      the reference's alpha (``netP.alpha``) is unknown, 1 here;
    * ``gradient_penalty`` 10 (lambda_dis_gp, unknown in the reference; the WGAN-GP paper's value);
    * ``lpips`` 0 (available, off by default as in the reference);
    * ``lowpass_l1`` and ``spectrum`` 0: content and spectrum terms (``losses.spectral``) that stand in
      for DISTS when its VGG16 weights are unavailable; ``lowpass_sigma`` is the low-pass width (pixels),
      ``spectrum_pool`` 0 compares ring-averaged spectra, N >= 1 2-D spectra pooled in N x N bins;
    * ``spectrum_relative`` 0: ``losses.spectral.relative_spectrum_loss``, the spectrum term of each pair
      divided by the identity's (x against y) plus ``spectrum_margin`` bels, so nearly clean pairs count
      as much as heavily degraded ones;
    * ``transfer`` 0: ``losses.spectral.transfer_loss``, the transfer function from x to ŷ against the one
      from x to y (2-D, pooled in ``spectrum_pool`` x ``spectrum_pool`` bins, 4 when that is 0);
    * ``spectrum_weighting`` "bins": the 2-D spectral terms average their frequency blocks alike (high
      frequencies dominate); "rings": each block weighs 1 / (its radial frequency), so every ring of
      frequencies counts the same (``losses.spectral.block_weights``).

    Not carried over: the silent replacement of a failing loss by mean(y - y_hat), and the disabled
    latent loss (docs/architecture.md §14).
    """

    dists: float = 10.0
    lpips: float = 0.0
    l1: float = 20.0
    l1_noise_free: float = 0.0
    gate_clean: float = 0.0
    lowpass_l1: float = 0.0
    spectrum: float = 0.0
    spectrum_relative: float = 0.0
    transfer: float = 0.0
    color: float = 10.0
    contrastive: float = 1e-4
    bits_global: float = 2e-3
    bits_local: float = 0.05
    diversity: float = 1.0
    gan_generator: float = 10.0
    aux: float = 1.0
    critic_alpha: float = 1.0
    gradient_penalty: float = 10.0
    lowpass_sigma: float = LOWPASS_SIGMA
    spectrum_pool: int = 0
    spectrum_margin: float = SPECTRUM_MARGIN
    spectrum_weighting: str = "bins"

    def __post_init__(self):
        if self.spectrum_weighting not in WEIGHTINGS:
            raise ValueError(
                f"LossWeights.spectrum_weighting must be one of {WEIGHTINGS}, got {self.spectrum_weighting!r}"
            )
        for f in fields(self):
            if f.name == "spectrum_weighting":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"LossWeights.{f.name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.spectrum_pool, int) or self.spectrum_pool < 0:
            raise ValueError(f"LossWeights.spectrum_pool must be an int >= 0, got {self.spectrum_pool!r}")
        if self.spectrum_margin <= 0:
            raise ValueError(f"LossWeights.spectrum_margin must be > 0 (bels), got {self.spectrum_margin!r}")
        if self.lowpass_sigma <= 0:
            raise ValueError(f"LossWeights.lowpass_sigma must be > 0 (pixels), got {self.lowpass_sigma!r}")

    @classmethod
    def from_dict(cls, values: Mapping) -> "LossWeights":
        """Builds weights from a mapping (e.g. YAML); an unknown key is an error."""
        return cls(**checked_fields(cls, values))

    def weighted_sum(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """sum of weight[name] * term over the given terms (scalars). Names: ``TERMS``.

        A term whose weight is 0 is skipped (it may be absent). Raises for unknown names and for a
        term with a non-zero weight that is not a scalar tensor.
        """
        unknown = sorted(set(terms) - set(TERMS))
        if unknown:
            raise ValueError(f"LossWeights.weighted_sum: unknown term(s) {unknown}; valid terms: {list(TERMS)}")
        total = None
        for name in TERMS:
            weight = getattr(self, name)
            if name not in terms or weight == 0:
                continue
            term = terms[name]
            if not isinstance(term, torch.Tensor) or term.dim() != 0:
                raise ValueError(
                    f"LossWeights.weighted_sum: term {name!r} must be a scalar tensor, got "
                    f"{list(term.shape) if isinstance(term, torch.Tensor) else type(term).__name__}"
                )
            total = weight * term if total is None else total + weight * term
        if total is None:
            raise ValueError("LossWeights.weighted_sum: no term with a non-zero weight was given")
        return total
