"""Shared by the backends: the IDA operand shapes, one device, one compute dtype, the noise argument of
SFT, and the guard that makes double backward through a fused backward op fail by name."""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

# the SFT noise: None (a fresh draw), a torch.Generator to draw from, or the map [B, 1, H, W] itself
NoiseArg = Union[None, Tensor, torch.Generator]


# Device types autocast knows (``meta`` is not one), found once here: torch.compile in torch 2.11
# cannot trace torch.amp.is_autocast_available itself.
_AUTOCAST_DEVICE_TYPES = frozenset(
    d for d in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "maia", "xla") if torch.amp.is_autocast_available(d)
)


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype when autocast is on for ``device_type``, else None (also for device types
    autocast does not know, such as ``meta``)."""
    if device_type in _AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def compute_dtype_for(where: str, x: Tensor, others: Sequence[Tensor], allowed: Sequence[torch.dtype]) -> torch.dtype:
    """The dtype the kernels compute in: the autocast dtype when autocast is on for x's device, else
    x's dtype (then every tensor of ``others`` must have it too, as the reference's convolutions demand)."""
    dtype = autocast_dtype(x.device.type)
    if dtype is None:
        dtype = x.dtype
        for t in others:
            if t.dtype != dtype:
                raise TypeError(f"{where}: all tensors must have x's dtype {dtype} outside autocast, got {t.dtype}")
    if dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{where}: computes in {names}, not {dtype}")
    return dtype


def check_same_device(where: str, tensors: Sequence[Tensor]) -> None:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{where}: all tensors must be on one device, got {sorted(map(str, devices))}")


def refuse_double_backward(op: str, where: str) -> None:
    """Registers autograd for the backward op ``op`` that raises a clear error when its result is
    differentiated again (otherwise torch would warn and return wrong gradients)."""

    def backward(ctx, *grads):
        raise NotImplementedError(
            f"{where}: double backward (a gradient of a gradient, such as a gradient penalty through this "
            "layer) is not implemented by the fused kernels; use backend='reference' for such layers"
        )

    torch.library.register_autograd(op, backward)


def alert_not_deterministic(where: str) -> None:
    """Under ``torch.use_deterministic_algorithms(True)``, does what torch does for its own
    nondeterministic CUDA kernels: raises (or warns, with ``warn_only=True``)."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        f"{where} has no deterministic implementation (its weight gradients are summed with float32 "
        "atomic adds), but torch.use_deterministic_algorithms(True) is set; use backend='triton' or "
        "'reference' for such layers"
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
    else:
        raise RuntimeError(message)


def check_ida_shapes(
    where: str, x: Tensor, m: Tensor, w_up: Tensor, w_map: Tensor, w_x: Tensor, w_out: Tensor, b_out: Tensor
) -> None:
    """Raises ValueError unless x [B, C, H, W] (H, W even), m [B, Cc, H/2, W/2] and the weights
    w_up [Cc, Cm, 2, 2], w_map [Cm, Cm, 3, 3], w_x [Cm, C, 3, 3], w_out [Cm, C_out, 2, 2], b_out [C_out] fit."""
    if x.dim() != 4 or m.dim() != 4:
        raise ValueError(f"{where}: x and m must be 4-D, got {tuple(x.shape)} and {tuple(m.shape)}")
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"{where}: feature height and width must be even, got {h}x{w}")
    cc = m.shape[1]
    if m.shape[0] != b or tuple(m.shape[2:]) != (h // 2, w // 2):
        raise ValueError(
            f"{where}: map must be [B, Cc, H/2, W/2] = [{b}, {cc}, {h // 2}, {w // 2}], got {list(m.shape)}"
        )
    cm = w_x.shape[0] if w_x.dim() == 4 else -1
    c_out = w_out.shape[1] if w_out.dim() == 4 else -1
    expected = {
        "w_up": (w_up, (cc, cm, 2, 2)),
        "w_map": (w_map, (cm, cm, 3, 3)),
        "w_x": (w_x, (cm, c, 3, 3)),
        "w_out": (w_out, (cm, c_out, 2, 2)),
        "b_out": (b_out, (c_out,)),
    }
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{where}: {name} must have shape {list(shape)} for x {list(x.shape)} and m "
                f"{list(m.shape)} ({c} feature and {cc} map channels), got {list(t.shape)}"
            )
