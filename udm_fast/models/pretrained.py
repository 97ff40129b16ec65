"""The default model and the bundled sample images.

``default_model`` loads ``assets/default_model.pt`` (a ``UDM.save`` file) when the package ships
one; ``assets/default_model.json`` describes how it was trained (config, log summary, commit) and
``assets/default_model_eval.json`` holds its held-out evaluation (``udm-fast eval --clean``).
Without the weights file it returns a deterministic, untrained placeholder so that the command-line
tools and the demo still run end to end; a ``PlaceholderModelWarning`` says so.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import torch

from .udm import UDM

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_WEIGHTS = ASSETS / "default_model.pt"
DEFAULT_METADATA = ASSETS / "default_model.json"
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
    warnings.warn(
        "no trained weights are bundled yet: using an untrained placeholder model "
        f"(UDM(filters={PLACEHOLDER_FILTERS}), random weights), so outputs are not real transfers",
        PlaceholderModelWarning,
        stacklevel=2,
    )
    return placeholder_model().to(device)


def default_model_metadata() -> Optional[dict]:
    """The training record of the bundled weights (``DEFAULT_METADATA``), or None when absent."""
    if not (DEFAULT_WEIGHTS.is_file() and DEFAULT_METADATA.is_file()):
        return None
    with open(DEFAULT_METADATA, encoding="utf-8") as f:
        return json.load(f)


def default_model_source() -> str:
    """Where ``default_model`` gets its weights: the weights file (with its training record), or the placeholder."""
    if DEFAULT_WEIGHTS.is_file():
        meta = default_model_metadata()
        if meta is None:
            return str(DEFAULT_WEIGHTS)
        log = meta["training_log"]
        return (
            f"{DEFAULT_WEIGHTS} (trained {log['steps']} steps on {meta['config']['run']['device']}, "
            f"commit {meta['commit'][:12]}; record in {DEFAULT_METADATA.name})"
        )
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
