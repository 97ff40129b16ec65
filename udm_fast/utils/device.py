"""Device names given on the command line or in a config: one parsing rule for every caller."""

from __future__ import annotations

from typing import Sequence

import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")


def parse_device(
    name: str,
    *,
    what: str = "device",
    option: str = "--device",
    types: Sequence[str] = DEVICE_TYPES,
    error: type[Exception] = ValueError,
) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked to exist.

    Messages name the value as ``what`` (``device``, ``run.device``) and say how to change it through
    ``option`` (a command-line flag such as ``--device``, or a config key); ``types`` are the device
    types the caller can use; ``error`` is the exception class raised for a bad name.
    """
    fix = f"use {option} cpu" if option.startswith("--") else f"set {option} to cpu or auto"
    choices = ", ".join(["auto"] + [t if t != "cuda" else "cuda, cuda:N" for t in types])
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and "cuda" in types else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise error(f"{what} {name!r} is not a device (unknown device {name!r}); use {choices}") from None
    if device.type not in types:
        raise error(f"{what} {name!r} is not supported here (unsupported device {name!r}); use {choices}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise error(f"{what} {name!r} requested but no CUDA device is available ({fix})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise error(f"{what} {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise error(f"{what} {name!r} requested but MPS is not available ({fix})")
    return device
