"""Training losses of the degradation model (docs/architecture.md §10.2).

Images are [B, 3, H, W] in [0, 1] unless a function says otherwise (``domain=``).

* perceptual: ``DISTS``, ``LPIPS`` (VGG16; pretrained files located by ``pretrained``);
* pixel: ``l1_loss``, ``color_loss`` (rgbn), ``diversity_loss``;
* spectral: ``lowpass_l1_loss``, ``spectrum_loss``, ``relative_spectrum_loss``, ``transfer_loss``
  (content / degradation split, a DISTS stand-in);
* terms: ``info_nce_loss``, ``bits_from_likelihoods``, ``rate_loss``, ``entropy_aux_loss``,
  ``gradient_penalty``, ``wgan_critic_loss``, ``wgan_generator_loss``;
* ``LossWeights``: the weights of the generator objective (film-grain defaults).
"""

from .perceptual import DISTS, LPIPS, VGG16Features, l2_pool
from .pixel import DIVERSITY_C2, color_loss, diversity_loss, l1_loss
from .pretrained import (
    MissingWeightsError,
    dists_alpha_beta,
    lpips_linear_weights,
    vgg16_cache_path,
    vgg16_features_state_dict,
)
from .spectral import (
    SPECTRUM_FLOOR,
    block_weights,
    lowpass_l1_loss,
    planar_power_spectrum,
    radial_power_spectrum,
    relative_spectrum_loss,
    spectrum_loss,
    transfer_function,
    transfer_loss,
)
from .terms import (
    CriticLoss,
    bits_from_likelihoods,
    entropy_aux_loss,
    gradient_penalty,
    info_nce_loss,
    rate_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)
from .weighting import TERMS, LossWeights

__all__ = [
    "DISTS",
    "LPIPS",
    "VGG16Features",
    "l2_pool",
    "DIVERSITY_C2",
    "color_loss",
    "diversity_loss",
    "l1_loss",
    "MissingWeightsError",
    "dists_alpha_beta",
    "lpips_linear_weights",
    "vgg16_cache_path",
    "vgg16_features_state_dict",
    "lowpass_l1_loss",
    "planar_power_spectrum",
    "block_weights",
    "SPECTRUM_FLOOR",
    "radial_power_spectrum",
    "relative_spectrum_loss",
    "spectrum_loss",
    "transfer_function",
    "transfer_loss",
    "CriticLoss",
    "bits_from_likelihoods",
    "entropy_aux_loss",
    "gradient_penalty",
    "info_nce_loss",
    "rate_loss",
    "wgan_critic_loss",
    "wgan_generator_loss",
    "TERMS",
    "LossWeights",
]
