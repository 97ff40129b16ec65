"""Blind image restoration by inversion with the degradation model as re-degrader (docs/restore.md)."""

from .dps import DiffusersDenoiser, dps_sample, redegrader_measurement
from .invert import (
    DEFAULT_LOW_BAND_SIGMA,
    DEFAULT_NOISE_LR,
    DEFAULT_STEPS,
    Identity,
    KnownOperator,
    LearnedRedegrader,
    LowBandCorrected,
    Phase,
    PhaseRecord,
    PyramidL1,
    Redegrader,
    Restoration,
    default_distance,
    default_phases,
    gaussian_lowpass,
    invert,
    restore,
)
from .prior import DeepImagePrior, Prior

__all__ = [
    "DEFAULT_LOW_BAND_SIGMA",
    "DEFAULT_NOISE_LR",
    "DEFAULT_STEPS",
    "DeepImagePrior",
    "DiffusersDenoiser",
    "Identity",
    "KnownOperator",
    "LearnedRedegrader",
    "LowBandCorrected",
    "Phase",
    "PhaseRecord",
    "Prior",
    "PyramidL1",
    "Redegrader",
    "Restoration",
    "default_distance",
    "default_phases",
    "dps_sample",
    "gaussian_lowpass",
    "invert",
    "redegrader_measurement",
    "restore",
]
