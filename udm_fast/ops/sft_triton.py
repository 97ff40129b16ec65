"""``udm_fast::sft_triton_fwd`` / ``sft_triton_bwd`` / ``sft_triton_noise``: the fused SFT layer as torch ops.

out = x (1 + w_gamma2 act(w_gamma1 cond_full)) + w_beta2 act(w_beta1 [cond_full; z]) + IDA(x, cond_half) in one forward
and one backward pass of Triton kernels (``udm_fast.triton_kernels.sft``). Fake kernels and
autograd are registered, as for the IDA ops (see ``ida_triton``).

Noise: an explicit [B, 1, H, W] tensor (then the result equals the reference given the same
noise, and the noise gets a gradient), or a Philox seed (int64 tensor of 1 element) from which
the kernels draw N(0, 1) per pixel in the forward and draw the same values again in the
backward; ``sft_triton_noise`` materialises those draws.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .ida_triton import TRITON_DTYPES, new_mid, new_output, weight_grads
from .operands import NoiseArg, check_ida_shapes, check_same_device, compute_dtype_for, refuse_double_backward
from .triton_loader import kernels

_SEED_HIGH = 2**62


def _out_dtype(x: Tensor, compute_dtype: torch.dtype) -> torch.dtype:
    # x (1 + gamma) + beta + ida with gamma, beta, ida in compute dtype promotes like the reference
    return torch.promote_types(x.dtype, compute_dtype)


def _noise_shape_ok(noise: Tensor, x: Tensor) -> bool:
    return tuple(noise.shape) == (x.shape[0], 1, x.shape[2], x.shape[3])


@torch.library.custom_op("udm_fast::sft_triton_noise", mutates_args=())
def sft_triton_noise(seed: Tensor, batch: int, height: int, width: int) -> Tensor:
    """The [batch, 1, height, width] float32 N(0, 1) map the SFT kernels draw for ``seed``."""
    return kernels("sft").noise(seed, batch, height, width)


@sft_triton_noise.register_fake
def _sft_triton_noise_fake(seed, batch, height, width):
    return seed.new_empty((batch, 1, height, width), dtype=torch.float32)


@torch.library.custom_op("udm_fast::sft_triton_fwd", mutates_args=())
def sft_triton_fwd(
    x: Tensor,
    cond_full: Tensor,
    cond_half: Tensor,
    noise: Optional[Tensor],
    seed: Optional[Tensor],
    w_gamma1: Tensor,
    w_gamma2: Tensor,
    w_beta1: Tensor,
    w_beta2: Tensor,
    w_up: Tensor,
    w_map: Tensor,
    w_x: Tensor,
    w_out: Tensor,
    b_out: Tensor,
    slope: float,
    compute_dtype: torch.dtype,
    save_mid: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """SFT forward. Exactly one of ``noise`` / ``seed`` is given. Returns (out like x, A, Bx), A / Bx
    being the IDA mid tensors the backward needs (empty when ``save_mid`` is False)."""
    out = new_output(x, _out_dtype(x, compute_dtype))
    mids = kernels("sft").forward(
        x,
        cond_full,
        cond_half,
        noise,
        seed,
        w_gamma1,
        w_gamma2,
        w_beta1,
        w_beta2,
        w_up,
        w_map,
        w_x,
        w_out,
        b_out,
        slope=slope,
        compute_dtype=compute_dtype,
        out=out,
        save_mid=save_mid,
    )
    a, bx = mids if save_mid else new_mid(x, w_x, compute_dtype, False)
    return out, a, bx


@sft_triton_fwd.register_fake
def _sft_triton_fwd_fake(
    x,
    cond_full,
    cond_half,
    noise,
    seed,
    w_gamma1,
    w_gamma2,
    w_beta1,
    w_beta2,
    w_up,
    w_map,
    w_x,
    w_out,
    b_out,
    slope,
    compute_dtype,
    save_mid,
):
    return (new_output(x, _out_dtype(x, compute_dtype)),) + new_mid(x, w_x, compute_dtype, save_mid)


_SFT_WEIGHTS = ("w_gamma1", "w_gamma2", "w_beta1", "w_beta2", "w_up", "w_map", "w_x", "w_out", "b_out")


@torch.library.custom_op("udm_fast::sft_triton_bwd", mutates_args=())
def sft_triton_bwd(
    grad_out: Tensor,
    x: Tensor,
    cond_full: Tensor,
    cond_half: Tensor,
    noise: Optional[Tensor],
    seed: Optional[Tensor],
    w_gamma1: Tensor,
    w_gamma2: Tensor,
    w_beta1: Tensor,
    w_beta2: Tensor,
    w_up: Tensor,
    w_map: Tensor,
    w_x: Tensor,
    w_out: Tensor,
    b_out: Tensor,
    a: Tensor,
    bx: Tensor,
    slope: float,
    compute_dtype: torch.dtype,
) -> list[Tensor]:
    """SFT backward: [dx, dcond_full, dcond_half, dnoise (empty without explicit noise), dw_gamma1, dw_gamma2, dw_beta1,
    dw_beta2, dw_up, dw_map, dw_x, dw_out, db_out], each like its input."""
    grads = {"dx": torch.empty_like(x), "dm": torch.empty_like(cond_half), "dcond": torch.empty_like(cond_full)}
    if noise is not None:
        grads["dnoise"] = torch.empty_like(noise)
    raw = kernels("sft").backward(
        grad_out,
        x,
        cond_full,
        cond_half,
        noise,
        seed,
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
        slope=slope,
        compute_dtype=compute_dtype,
        grads=grads,
    )
    weights = dict(zip(_SFT_WEIGHTS, (w_gamma1, w_gamma2, w_beta1, w_beta2, w_up, w_map, w_x, w_out, b_out)))
    dnoise = grads["dnoise"] if noise is not None else x.new_empty((0,))
    return [grads["dx"], grads["dcond"], grads["dm"], dnoise, *weight_grads(raw, weights)]


@sft_triton_bwd.register_fake
def _sft_triton_bwd_fake(
    grad_out,
    x,
    cond_full,
    cond_half,
    noise,
    seed,
    w_gamma1,
    w_gamma2,
    w_beta1,
    w_beta2,
    w_up,
    w_map,
    w_x,
    w_out,
    b_out,
    a,
    bx,
    slope,
    compute_dtype,
):
    dnoise = torch.empty_like(noise) if noise is not None else x.new_empty((0,))
    return [
        torch.empty_like(x),
        torch.empty_like(cond_full),
        torch.empty_like(cond_half),
        dnoise,
        *(w.new_empty(w.shape) for w in (w_gamma1, w_gamma2, w_beta1, w_beta2, w_up, w_map, w_x, w_out, b_out)),
    ]


def _sft_setup_context(ctx, inputs, output):
    x, cond_full, cond_half, noise, seed, *weights, slope, compute_dtype, save_mid = inputs
    _, a, bx = output
    ctx.slope, ctx.compute_dtype, ctx.save_mid = slope, compute_dtype, save_mid
    ctx.has_noise, ctx.has_seed = noise is not None, seed is not None
    ctx.mark_non_differentiable(a, bx)
    optional = tuple(t for t in (noise, seed) if t is not None)
    ctx.save_for_backward(x, cond_full, cond_half, *weights, a, bx, *optional)


def _sft_backward(ctx, grad_out, _grad_a, _grad_bx):
    if not ctx.save_mid:
        raise RuntimeError("udm_fast::sft_triton_fwd was called with save_mid=False; it cannot be differentiated")
    x, cond_full, cond_half, *rest = ctx.saved_tensors
    weights, (a, bx), optional = rest[:9], rest[9:11], list(rest[11:])
    noise = optional.pop(0) if ctx.has_noise else None
    seed = optional.pop(0) if ctx.has_seed else None
    dx, dcond_full, dcond_half, dnoise, *dweights = torch.ops.udm_fast.sft_triton_bwd(
        grad_out, x, cond_full, cond_half, noise, seed, *weights, a, bx, ctx.slope, ctx.compute_dtype
    )
    return (dx, dcond_full, dcond_half, dnoise if ctx.has_noise else None, None, *dweights, None, None, None)


torch.library.register_autograd("udm_fast::sft_triton_fwd", _sft_backward, setup_context=_sft_setup_context)
refuse_double_backward("udm_fast::sft_triton_bwd", "SFT (triton)")


def draw_seed(noise: NoiseArg, device: torch.device) -> Tensor:
    """A Philox seed (int64, 1 element, on ``device``) from the default generator or ``noise``."""
    if isinstance(noise, torch.Generator):
        seed = torch.randint(0, _SEED_HIGH, (1,), generator=noise, device=noise.device, dtype=torch.int64)
        return seed.to(device)
    return torch.randint(0, _SEED_HIGH, (1,), device=device, dtype=torch.int64)


def sft_triton(
    x: Tensor,
    cond_full: Tensor,
    cond_half: Tensor,
    w_gamma1: Tensor,
    w_gamma2: Tensor,
    w_beta1: Tensor,
    w_beta2: Tensor,
    w_up: Tensor,
    w_map: Tensor,
    w_x: Tensor,
    w_out: Tensor,
    b_out: Tensor,
    *,
    slope: float,
    noise: NoiseArg = None,
) -> Tensor:
    """The SFT layer with the Triton kernels.

    x [B, C, H, W] (H, W even); cond_full [B, Cc, H, W]; cond_half [B, Cc, H/2, W/2]; 1x1 weights
    w_gamma1 [rd, Cc, 1, 1], w_gamma2 [C, rd, 1, 1], w_beta1 [rd, Cc + 1, 1, 1], w_beta2 [C, rd, 1, 1]; IDA
    weights as in
    ``ida_triton``; ``slope`` of the MLP activation (0.0 for ReLU). ``noise``: an explicit [B, 1, H, W]
    map, or None / a torch.Generator to draw the Philox seed from."""
    where = "SFT (triton)"
    ida_weights = (w_up, w_map, w_x, w_out, b_out)
    check_ida_shapes(where, x, cond_half, *ida_weights)
    b, c, h, w = x.shape
    cc = cond_half.shape[1]
    if tuple(cond_full.shape) != (b, cc, h, w):
        raise ValueError(f"{where}: cond_full must be [{b}, {cc}, {h}, {w}], got {list(cond_full.shape)}")
    rd = w_gamma1.shape[0]
    for name, t, shape in (
        ("w_gamma1", w_gamma1, (rd, cc, 1, 1)),
        ("w_gamma2", w_gamma2, (c, rd, 1, 1)),
        ("w_beta1", w_beta1, (rd, cc + 1, 1, 1)),
        ("w_beta2", w_beta2, (c, rd, 1, 1)),
    ):
        if tuple(t.shape) != shape:
            raise ValueError(f"{where}: {name} must have shape {list(shape)}, got {list(t.shape)}")
    if w_out.shape[1] != c:
        raise ValueError(f"{where}: the IDA must map back to the {c} feature channels, got {w_out.shape[1]}")
    seed = None
    if isinstance(noise, Tensor):
        if not _noise_shape_ok(noise, x):
            raise ValueError(f"{where}: noise must have shape [{b}, 1, {h}, {w}], got {list(noise.shape)}")
        explicit = (noise,)
    elif noise is None or isinstance(noise, torch.Generator):
        seed = draw_seed(noise, x.device)
        noise, explicit = None, ()
    else:
        raise TypeError(f"{where}: noise must be None, a tensor or a torch.Generator, got {type(noise).__name__}")
    weights = (w_gamma1, w_gamma2, w_beta1, w_beta2) + ida_weights
    tensors = (x, cond_full, cond_half) + weights
    check_same_device(where, tensors + explicit)
    dtype = compute_dtype_for(where, x, tensors[1:], TRITON_DTYPES)
    save_mid = torch.is_grad_enabled() and any(t.requires_grad for t in tensors + explicit)
    return torch.ops.udm_fast.sft_triton_fwd(
        x, cond_full, cond_half, noise, seed, *weights, float(slope), dtype, save_mid
    )[0]
