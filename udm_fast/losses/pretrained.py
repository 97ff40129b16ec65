"""Locating and reading the pretrained weight files of the perceptual losses.

* VGG16 ImageNet weights: torchvision's ``vgg16-397923af.pth`` (only its ``features.*`` entries are
  used), from an explicit path, the torch hub cache (``$TORCH_HOME/hub/checkpoints``) or a download.
* DISTS alpha/beta: the ``weights.pt`` shipped in the PyPI package ``dists-pytorch`` (module
  ``DISTS_pytorch``), or an explicit path.
* LPIPS linear layers: ``weights/v0.1/vgg.pth`` shipped in the PyPI package ``lpips``, or a path.

The packages are located without importing them (both import torchvision at import time).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
STAGE_CHANNELS = (64, 128, 256, 512, 512)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3

PathArg = Optional[os.PathLike | str]


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file is not available: ``problem`` says which and why, ``how`` (in Python
    terms) how to provide it; the message is both."""

    def __init__(self, problem: str, how: str = ""):
        super().__init__(f"{problem}; {how}" if how else problem)
        self.problem, self.how = problem, how


class MissingVGG16Error(MissingWeightsError):
    """The VGG16 file, which DISTS and LPIPS both need, is not available."""


def _load(path, what: str) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingWeightsError(f"{what}: no file at {path!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a torch file
        raise ValueError(f"{what}: could not read {path!r} as a torch state dict ({exc})") from exc


def _package_file(package: str, *parts: str) -> Optional[str]:
    """Path of a data file inside an installed package, or None (the package is not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, *parts)
        if os.path.isfile(candidate):
            return candidate
    return None


def vgg16_cache_path() -> str:
    """Where torchvision caches the VGG16 file: ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILENAME)


def _how_to_get_vgg16() -> str:
    return (
        f"provide torchvision's ImageNet VGG16 file {VGG16_FILENAME!r} (from {VGG16_URL}): pass its path "
        f"(vgg_weights=...), or put it at {vgg16_cache_path()!r} (the torch hub cache, set by TORCH_HOME), "
        f"or allow a download (download=True) on a machine that is online. For smoke tests without "
        f"weights use pretrained=False (random weights, meaningless values)."
    )


def vgg16_features_state_dict(path: PathArg = None, *, download: bool = True) -> dict:
    """{"features.N.weight"/"features.N.bias": tensor} of torchvision's ImageNet VGG16.

    Order: ``path`` if given; else the torch hub cache; else a download (when ``download``).
    Accepts a full torchvision state dict or one holding only the features (with or without the
    ``features.`` prefix). Raises MissingWeightsError saying how to provide the file.
    """
    what = "VGG16 weights"
    if path is not None:
        if not os.path.isfile(os.fspath(path)):
            raise MissingVGG16Error(f"{what}: no file at {os.fspath(path)!r}", _how_to_get_vgg16())
        state = _load(path, what)
    elif os.path.isfile(vgg16_cache_path()):
        state = _load(vgg16_cache_path(), what)
    elif download:
        try:
            state = torch.hub.load_state_dict_from_url(VGG16_URL, map_location="cpu", check_hash=True)
        except Exception as exc:
            raise MissingVGG16Error(
                f"{what}: the download from {VGG16_URL} failed ({exc})", _how_to_get_vgg16()
            ) from exc
    else:
        raise MissingVGG16Error(f"{what}: not found in the torch hub cache and download=False", _how_to_get_vgg16())
    return _features_only(state, what)


def _features_only(state, what: str) -> dict:
    if not isinstance(state, dict):
        raise ValueError(f"{what}: expected a state dict, got {type(state).__name__}")
    features = {}
    for key, value in state.items():
        name = key[len("features.") :] if key.startswith("features.") else key
        if name.split(".")[0].isdigit():
            features["features." + name] = value
    for index, channels in zip(VGG16_CONV_INDICES, VGG16_CONV_CHANNELS):
        weight = features.get(f"features.{index}.weight")
        if weight is None or f"features.{index}.bias" not in features:
            raise ValueError(
                f"{what}: the state dict has no features.{index}.weight/bias; is it VGG16 (torchvision naming)?"
            )
        if weight.shape[0] != channels or weight.shape[2:] != (3, 3):
            raise ValueError(
                f"{what}: features.{index}.weight has shape {list(weight.shape)}, expected "
                f"[{channels}, *, 3, 3]; is it VGG16 without batch norm?"
            )
    return features


def dists_alpha_beta(path: PathArg = None) -> tuple:
    """(alpha, beta), each [1475] = 3 + 64 + 128 + 256 + 512 + 512 channel weights of DISTS.

    From ``path`` or the ``weights.pt`` of the installed ``dists-pytorch`` package.
    """
    how = (
        "`pip install dists-pytorch` (it ships weights.pt with the published DISTS alpha/beta) or pass "
        "dists_weights=PATH to that file; for smoke tests use pretrained=False"
    )
    if path is None:
        path = _package_file("DISTS_pytorch", "weights.pt")
        if path is None:
            raise MissingWeightsError("DISTS alpha/beta weights not found", how)
    elif not os.path.isfile(os.fspath(path)):
        raise MissingWeightsError(f"DISTS alpha/beta weights: no file at {os.fspath(path)!r}", how)
    state = _load(path, "DISTS alpha/beta weights")
    total = 3 + sum(STAGE_CHANNELS)
    try:
        alpha, beta = state["alpha"].reshape(-1), state["beta"].reshape(-1)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"DISTS alpha/beta weights: {os.fspath(path)!r} has no 'alpha'/'beta' tensors") from exc
    if alpha.numel() != total or beta.numel() != total:
        raise ValueError(
            f"DISTS alpha/beta weights: expected {total} values each, got {alpha.numel()} and {beta.numel()}"
        )
    return alpha.float(), beta.float()


def lpips_linear_weights(path: PathArg = None) -> list:
    """The five LPIPS-VGG linear-layer weight vectors [64], [128], [256], [512], [512].

    From ``path`` or ``weights/v0.1/vgg.pth`` of the installed ``lpips`` package (keys
    ``lin{k}.model.1.weight`` of shape [1, C, 1, 1]).
    """
    how = (
        "`pip install lpips` (it ships weights/v0.1/vgg.pth) or pass lpips_weights=PATH to that file; "
        "for smoke tests use pretrained=False"
    )
    if path is None:
        path = _package_file("lpips", "weights", "v0.1", "vgg.pth")
        if path is None:
            raise MissingWeightsError("LPIPS linear-layer weights not found", how)
    elif not os.path.isfile(os.fspath(path)):
        raise MissingWeightsError(f"LPIPS linear-layer weights: no file at {os.fspath(path)!r}", how)
    state = _load(path, "LPIPS linear-layer weights")
    weights = []
    for k, channels in enumerate(STAGE_CHANNELS):
        w = state.get(f"lin{k}.model.1.weight") if isinstance(state, dict) else None
        if w is None or w.numel() != channels:
            raise ValueError(
                f"LPIPS linear-layer weights: {os.fspath(path)!r} lacks lin{k}.model.1.weight "
                f"with {channels} values (is it the VGG variant, lpips v0.1?)"
            )
        weights.append(w.reshape(-1).float())
    return weights
