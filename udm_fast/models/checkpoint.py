"""Checkpoint I/O: the authors' checkpoint layout (docs/architecture.md §13) and our own format.

Official layout: ``{"model": {"netE", "netE_loc", "netG", "netCprs", "netCprs_loc"[, "netP"]}, ...}``
with compressai >= 1.2 EntropyBottleneck names; older ``_matrix0`` / ``_bias0`` / ``_factor0``
names and DataParallel ``module.`` prefixes are converted.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import torch

from ..utils.files import write_atomic

OFFICIAL_PARTS = ("netE", "netE_loc", "netG", "netCprs", "netCprs_loc")
# entropy-bottleneck buffers whose size depends on the learned tables: resized on load
DYNAMIC_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")
_OLD_EB_NAME = re.compile(r"(^|\.)_(matrix|bias|factor)(\d+)$")
_OLD_EB_PLURAL = {"matrix": "matrices", "bias": "biases", "factor": "factors"}


TRAINING_FORMAT = "udm_fast-training"  # the "format" entry of a training checkpoint (train/trainer.py)
LISTED_KEYS = 12  # per kind of key problem in a CheckpointError (one wrong size can shift hundreds)


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: lists every missing, unexpected and mis-shaped key."""


def load_file(path: str | os.PathLike) -> Any:
    """torch.load on CPU with a clear error for missing or unreadable files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(
            f"cannot read checkpoint {path} (not a complete file written by torch.save: {type(exc).__name__}: {exc})"
        ) from exc


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the target folder, then rename: never a half-written file."""
    write_atomic(path, lambda f: torch.save(obj, f))


def normalize_keys(state: Mapping[str, torch.Tensor]) -> dict:
    """Strips DataParallel ``module.`` prefixes and renames pre-1.2 compressai EntropyBottleneck keys."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        key = _OLD_EB_NAME.sub(lambda m: f"{m.group(1)}{_OLD_EB_PLURAL[m.group(2)]}.{m.group(3)}", key)
        out[key] = value
    return out


def official_parts(checkpoint: Any) -> dict:
    """The official sub-dicts {netE, netE_loc, netG, netCprs, netCprs_loc[, netP]} from a path or dict."""
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = load_file(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"official checkpoint must be a dict, got {type(checkpoint).__name__}")
    if isinstance(checkpoint.get("format"), str) and checkpoint["format"].startswith("udm_fast"):
        raise CheckpointError(
            f"this is a udm_fast file ({checkpoint['format']}), not the authors' checkpoint: "
            "load it with UDM.load (on the command line: without --official)"
        )
    parts = checkpoint.get("model", checkpoint)
    if not isinstance(parts, Mapping):
        raise CheckpointError("official checkpoint: 'model' must be a dict of sub-network state dicts")
    missing = [name for name in OFFICIAL_PARTS if name not in parts]
    if missing:
        raise CheckpointError(
            f"official checkpoint lacks the sub-networks {missing} "
            f"(found {sorted(parts)}); expected {list(OFFICIAL_PARTS)} and optionally netP"
        )
    return {name: normalize_keys(parts[name]) for name in parts if name in OFFICIAL_PARTS + ("netP",)}


def check_and_load(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Loads ``state`` strictly into ``module``; raises CheckpointError listing every key problem."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape) and k.rsplit(".", 1)[-1] not in DYNAMIC_BUFFERS
    )
    if missing or extra or shapes:
        lines = [f"{where}: checkpoint does not match the model"]
        for title, items in (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", shapes)):
            if items:
                more = f", ... and {len(items) - LISTED_KEYS} more" if len(items) > LISTED_KEYS else ""
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:LISTED_KEYS]) + more)
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state, strict=True)
