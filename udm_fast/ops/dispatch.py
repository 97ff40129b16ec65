"""One dispatch table per op: the function that runs IDA, and the one that runs SFT, for each backend.

Every IDA entry takes ``(x, m, w_up, w_map, w_x, w_out, b_out)`` (see ``reference.ida_reference``);
every SFT entry takes ``(layer, x, cond_full, cond_half, noise)``, where ``layer`` is a
``udm_fast.SFT`` (it gives its weights, ``modulation`` and ``activation_slope``).

Fallback rule (the only one): the fused SFT kernels of ``cuda`` and ``triton`` express the gamma /
beta MLPs with a ReLU or LeakyReLU activation only. For another activation the layer runs as
torch MLPs and epilogue around the same backend's IDA kernel, and a ``BackendFallbackWarning``
names the layer's activation. Any other call a backend cannot serve raises and says why.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from . import extension, ida_triton, sft_triton
from .operands import NoiseArg
from .reference import draw_noise, ida_reference, sft_epilogue


class BackendFallbackWarning(UserWarning):
    """A fused backend ran part of a layer as plain torch ops (the rule in ``udm_fast.ops.dispatch``)."""


def _cuda_ops():
    """The cuda backend's op module; raises RuntimeError naming the cause when the extension is missing."""
    if extension.load() is None:
        raise RuntimeError(f"backend 'cuda' cannot run: {extension.error()}")
    from . import ida_cuda

    return ida_cuda


def _ida_cuda(x, m, w_up, w_map, w_x, w_out, b_out):
    return _cuda_ops().ida(x, m, w_up, w_map, w_x, w_out, b_out)


IDA_BACKENDS: dict[str, Callable] = {
    "reference": ida_reference,
    "cuda": _ida_cuda,
    "triton": ida_triton.ida_triton,
}


def _composed(layer, x, cond_full, cond_half, noise: NoiseArg, ida: Callable) -> torch.Tensor:
    """x * (1 + gamma) + beta + IDA with the layer's torch MLPs and the IDA function ``ida``."""
    gamma, beta = layer.modulation(cond_full, draw_noise(noise, x, cond_full.dtype))
    return sft_epilogue(x, gamma, beta, ida(x, cond_half, *layer.spatial_gamma.weights()))


def _sft_reference(layer, x, cond_full, cond_half, noise: NoiseArg = None) -> torch.Tensor:
    return _composed(layer, x, cond_full, cond_half, noise, ida_reference)


def _fused_slope(layer, backend: str):
    """The slope the fused kernels use for ``layer``, or None after warning that it falls back."""
    slope = layer.activation_slope()
    if slope is None:
        warnings.warn(
            f"SFT (backend {backend!r}): the fused kernel supports ReLU / LeakyReLU MLPs only, not "
            f"{type(layer.convs_gamma[1].activation).__name__} / "
            f"{type(layer.convs_beta[1].activation).__name__}; running torch MLPs around the "
            f"{backend} IDA kernel",
            BackendFallbackWarning,
            stacklevel=4,
        )
    return slope


def _sft_cuda(layer, x, cond_full, cond_half, noise: NoiseArg = None) -> torch.Tensor:
    ops = _cuda_ops()
    slope = _fused_slope(layer, "cuda")
    if slope is None:
        return _composed(layer, x, cond_full, cond_half, noise, ops.ida)
    return ops.sft(
        x,
        cond_full,
        cond_half,
        draw_noise(noise, x, cond_full.dtype),
        *layer.mlp_weights(),
        *layer.spatial_gamma.weights(),
        slope,
    )


def _sft_triton(layer, x, cond_full, cond_half, noise: NoiseArg = None) -> torch.Tensor:
    slope = _fused_slope(layer, "triton")
    if slope is None:
        return _composed(layer, x, cond_full, cond_half, noise, ida_triton.ida_triton)
    return sft_triton.sft_triton(
        x, cond_full, cond_half, *layer.mlp_weights(), *layer.spatial_gamma.weights(), slope=slope, noise=noise
    )


SFT_BACKENDS: dict[str, Callable] = {
    "reference": _sft_reference,
    "cuda": _sft_cuda,
    "triton": _sft_triton,
}


def select(table: dict, op: str, backend: str) -> Callable:
    """``table[backend]``; raises ValueError naming the backends that ``op`` has."""
    if backend not in table:
        raise ValueError(f"{op}: backend {backend!r} has no {op} kernel; available: {', '.join(table)}")
    return table[backend]
