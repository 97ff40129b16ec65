"""The whole SFT layer in Triton: out = x (1 + gamma) + beta + IDA(x, cond_half).

gamma = w_gamma2 act(w_gamma1 cond), beta = w_beta2 act(w_beta1 [cond; z]) are per-high-res-pixel 1x1 MLPs; they run
inside the IDA output kernel (forward) and the IDA dgrad kernel (backward) of ``ida.py``, so
gamma, beta and the hidden layers never reach memory. The noise z is either an explicit
[B, 1, H, W] tensor or Philox N(0, 1) draws keyed by (seed, high-res pixel index), regenerated in
the backward instead of stored; ``noise`` materialises exactly those draws.
"""

from __future__ import annotations

from typing import Optional

import torch

import triton
import triton.language as tl

from . import ida
from ._common import check_runnable, on_device, philox_noise


@triton.jit
def _noise_kernel(seed_ptr, out_ptr, total, H, W, BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    hx = idx % W
    hy = (idx // W) % H
    b = idx // (W * H)
    tl.store(out_ptr + idx, philox_noise(seed_ptr, b, hy, hx, H, W), mask=mask)


def noise(seed: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """The [B, 1, H, W] float32 noise the SFT kernels draw for ``seed`` (int64, 1 element)."""
    out = torch.empty((batch, 1, height, width), device=seed.device, dtype=torch.float32)
    total = out.numel()
    if total:
        check_runnable(seed)
        with on_device(seed):
            _noise_kernel[(triton.cdiv(total, 1024),)](seed, out, total, height, width, BLOCK=1024)
    return out


def _sft_args(cond_full, noise_map, seed, w_gamma1, w_gamma2, w_beta1, w_beta2, slope) -> ida.SftArgs:
    return ida.SftArgs(
        cond=cond_full,
        noise=noise_map,
        seed=seed,
        w_gamma1=w_gamma1.reshape(w_gamma1.shape[0], -1).contiguous(),
        w_gamma2=w_gamma2.reshape(w_gamma2.shape[0], -1).contiguous(),
        w_beta1=w_beta1.reshape(w_beta1.shape[0], -1).contiguous(),
        w_beta2=w_beta2.reshape(w_beta2.shape[0], -1).contiguous(),
        slope=slope,
    )


def forward(
    x,
    cond_full,
    cond_half,
    noise_map: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    w_gamma1,
    w_gamma2,
    w_beta1,
    w_beta2,
    w_up,
    w_map,
    w_x,
    w_out,
    b_out,
    *,
    slope: float,
    compute_dtype: torch.dtype,
    out: torch.Tensor,
    save_mid: bool,
):
    """Writes the SFT layer output into ``out``; returns (a, bx) for the backward, or None."""
    sft = _sft_args(cond_full, noise_map, seed, w_gamma1, w_gamma2, w_beta1, w_beta2, slope)
    return ida.forward(
        x, cond_half, w_up, w_map, w_x, w_out, b_out, compute_dtype=compute_dtype, out=out, save_mid=save_mid, sft=sft
    )


def backward(
    grad_out,
    x,
    cond_full,
    cond_half,
    noise_map: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    w_gamma1,
    w_gamma2,
    w_beta1,
    w_beta2,
    w_up,
    w_map,
    w_x,
    w_out,
    a,
    bx,
    *,
    slope: float,
    compute_dtype: torch.dtype,
    grads: dict,
) -> dict:
    """Fills grads["dx"], grads["dm"] (cond_half), grads["dcond"] (cond_full) and grads["dnoise"] (when
    the noise is explicit); returns the float32 weight gradients keyed w_gamma1, w_gamma2, w_beta1, w_beta2,
    w_up, w_map, w_x, w_out, b_out
    (w_gamma1, w_gamma2, w_beta1, w_beta2 as 2-D [out, in])."""
    sft = _sft_args(cond_full, noise_map, seed, w_gamma1, w_gamma2, w_beta1, w_beta2, slope)
    return ida.backward(
        grad_out, x, cond_half, w_up, w_map, w_x, w_out, a, bx, compute_dtype=compute_dtype, grads=grads, sft=sft
    )
