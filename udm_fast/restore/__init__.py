"""Blind image restoration by inversion with the degradation model as re-degrader (docs/restore.md)."""

from .dps import diffusers_denoiser, dps_sample, redegrader_measurement
from .invert import (
    DEFAULT_STEPS,
    Identity,
    KnownOperator,
    LearnedRedegrader,
    Phase,
    PhaseRecord,
    PyramidL1,
    Redegrader,
    Restoration,
    default_distance,
    default_phases,
    invert,
    restore,
)
from .prior import DeepImagePrior, Prior

__all__ = [
    "DEFAULT_STEPS",
    "DeepImagePrior",
    "Identity",
    "KnownOperator",
    "LearnedRedegrader",
    "Phase",
    "PhaseRecord",
    "Prior",
    "PyramidL1",
    "Redegrader",
    "Restoration",
    "default_distance",
    "default_phases",
    "diffusers_denoiser",
    "dps_sample",
    "invert",
    "redegrader_measurement",
    "restore",
]
