"""The default model and the bundled sample images.

``default_model`` loads ``assets/default_model.pt`` (a ``UDM.save`` file) when the package ships
one. Until trained weights exist it returns a deterministic, untrained placeholder so that the
command-line tools and the demo run end to end; a ``PlaceholderModelWarning`` says so.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .model import UDM

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_WEIGHTS = ASSETS / "default_model.pt"
SAMPLES = ASSETS / "samples"
SAMPLE_EXTENSIONS = (".jpg", ".jpeg", ".png")
PLACEHOLDER_FILTERS = 16
PLACEHOLDER_SEED = 0


class PlaceholderModelWarning(UserWarning):
    """The default model is the untrained placeholder: its outputs show the pipeline, not real transfers."""


def default_model(device: str | torch.device = "cpu") -> UDM:
    """The packaged model in eval mode on ``device``: ``DEFAULT_WEIGHTS`` if present, else the placeholder."""
    if DEFAULT_WEIGHTS.is_file():
        return UDM.load(DEFAULT_WEIGHTS, map_location=device)
    warnings.warn("no trained weights are bundled yet: using an untrained placeholder model "
                  f"(UDM(filters={PLACEHOLDER_FILTERS}), random weights), so outputs are not real transfers",
                  PlaceholderModelWarning, stacklevel=2)
    return placeholder_model().to(device)


def default_model_source() -> str:
    """Where ``default_model`` gets its weights: the weights file, or the placeholder."""
    if DEFAULT_WEIGHTS.is_file():
        return str(DEFAULT_WEIGHTS)
    return f"untrained placeholder, UDM(filters={PLACEHOLDER_FILTERS}) initialised with seed {PLACEHOLDER_SEED}"


def placeholder_model() -> UDM:
    """UDM(filters=16) with seed-0 random weights (global RNG untouched), eval mode, entropy tables built."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PLACEHOLDER_SEED)
        model = UDM(filters=PLACEHOLDER_FILTERS)
    model.eval()
    for compressor in (model.global_compressor, model.local_compressor):
        compressor.model.update(force=True)
    return model


def sample_paths() -> list[Path]:
    """The bundled sample photographs (see assets/samples/README.md), sorted by name."""
    paths = sorted(p for p in SAMPLES.glob("*") if p.suffix.lower() in SAMPLE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f"no sample images in {SAMPLES}: the package data were not installed")
    return paths
