"""Fused likelihood of the factorized-prior EntropyBottleneck (forward and backward), float32.

For values v [C, N] (channel-major, as EntropyBottleneck.forward lays them out), per channel c:
    logits(u) = h_{L-1}(... h_0(u)),  h_l(a) = W_l a + b_l, then a + T_l * tanh(.) for l < L-1
    likelihood = max(sigmoid(logits(v + 1/2)) - sigmoid(logits(v - 1/2)), bound)
with the per-channel density parameters packed and zero-padded to a width F (power of two):
    W [C, L, F, F] = softplus(matrices), B [C, L, F] = biases, T [C, L, F] = tanh(factors) (0 last).
Padding stays zero through every layer, so any ``filters`` work. The caller differentiates the
packing (softplus, tanh, pad) with torch; these kernels give d/dv, d/dW, d/dB, d/dT. The lower
bound's gradient follows compressai's LowerBound: it passes where likelihood >= bound or where the
incoming gradient is negative. One program handles BLOCK values of one channel; parameter
gradients are reduced per program and added atomically (float32, order not deterministic: the
entropy bottleneck uses the torch composition when deterministic algorithms are requested).
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

from ._common import on_device

BLOCK = 128
MAX_GRID_Y = 65535


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _layer(a, w_ptr, b_ptr, base, F: tl.constexpr):
    """W_l a + b_l for a [BLOCK, F]; base = (c * L + l)."""
    o = tl.arange(0, F)
    w = tl.load(w_ptr + (base * F + o[:, None]) * F + o[None, :])  # [F(out), F(in)]
    b = tl.load(b_ptr + base * F + o)
    return tl.sum(a[:, None, :] * w[None, :, :], axis=2) + b[None, :]


@triton.jit
def _activation_in(v, c, w_ptr, b_ptr, t_ptr, upto: tl.constexpr, L: tl.constexpr, F: tl.constexpr):
    """Input of layer ``upto`` for scalar inputs v [BLOCK] (layer 0's input is v in column 0)."""
    o = tl.arange(0, F)
    a = tl.where(o[None, :] == 0, v[:, None], 0.0)
    for l in tl.static_range(upto):
        h = _layer(a, w_ptr, b_ptr, c * L + l, F)
        t = tl.load(t_ptr + (c * L + l) * F + o)
        a = h + t[None, :] * _tanh(h)
    return a


@triton.jit
def _logits(v, c, w_ptr, b_ptr, t_ptr, L: tl.constexpr, F: tl.constexpr):
    o = tl.arange(0, F)
    a = _activation_in(v, c, w_ptr, b_ptr, t_ptr, L - 1, L, F)
    h = _layer(a, w_ptr, b_ptr, c * L + L - 1, F)
    return tl.sum(tl.where(o[None, :] == 0, h, 0.0), axis=1)


@triton.jit
def _forward_kernel(
    v_ptr,
    out_ptr,
    w_ptr,
    b_ptr,
    t_ptr,
    bound_ptr,
    n,
    USE_BOUND: tl.constexpr,
    L: tl.constexpr,
    F: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    c = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < n
    row = c.to(tl.int64) * n  # C * N may pass 2**31
    v = tl.load(v_ptr + row + offs, mask=mask, other=0.0)
    upper = _logits(v + 0.5, c, w_ptr, b_ptr, t_ptr, L, F)
    lower = _logits(v - 0.5, c, w_ptr, b_ptr, t_ptr, L, F)
    likelihood = tl.sigmoid(upper) - tl.sigmoid(lower)
    if USE_BOUND:
        likelihood = tl.maximum(likelihood, tl.load(bound_ptr))
    tl.store(out_ptr + row + offs, likelihood, mask=mask)


@triton.jit
def _backward_path(v, g, c, w_ptr, b_ptr, t_ptr, dw_ptr, db_ptr, dt_ptr, L: tl.constexpr, F: tl.constexpr):
    """Backpropagates g = d/d logits(v) [BLOCK] through the layers; adds the parameter gradients
    and returns d/dv [BLOCK]."""
    o = tl.arange(0, F)
    ga = tl.where(o[None, :] == 0, g[:, None], 0.0)  # gradient of the current layer's output
    for l in tl.static_range(L - 1, -1, -1):  # last layer first
        base = c * L + l
        a = _activation_in(v, c, w_ptr, b_ptr, t_ptr, l, L, F)
        h = _layer(a, w_ptr, b_ptr, base, F)
        if l < L - 1:
            th = _tanh(h)
            t = tl.load(t_ptr + base * F + o)
            tl.atomic_add(dt_ptr + base * F + o, tl.sum(ga * th, axis=0))
            gh = ga * (1.0 + t[None, :] * (1.0 - th * th))
        else:
            gh = ga
        tl.atomic_add(db_ptr + base * F + o, tl.sum(gh, axis=0))
        tl.atomic_add(dw_ptr + (base * F + o[:, None]) * F + o[None, :], tl.sum(gh[:, :, None] * a[:, None, :], axis=0))
        w = tl.load(w_ptr + (base * F + o[:, None]) * F + o[None, :])
        ga = tl.sum(gh[:, :, None] * w[None, :, :], axis=1)
    return tl.sum(tl.where(o[None, :] == 0, ga, 0.0), axis=1)


@triton.jit
def _backward_kernel(
    grad_ptr,
    v_ptr,
    dv_ptr,
    w_ptr,
    b_ptr,
    t_ptr,
    bound_ptr,
    dw_ptr,
    db_ptr,
    dt_ptr,
    n,
    USE_BOUND: tl.constexpr,
    L: tl.constexpr,
    F: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    c = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < n
    row = c.to(tl.int64) * n  # C * N may pass 2**31
    v = tl.load(v_ptr + row + offs, mask=mask, other=0.0)
    g = tl.load(grad_ptr + row + offs, mask=mask, other=0.0)
    s_upper = tl.sigmoid(_logits(v + 0.5, c, w_ptr, b_ptr, t_ptr, L, F))
    s_lower = tl.sigmoid(_logits(v - 0.5, c, w_ptr, b_ptr, t_ptr, L, F))
    if USE_BOUND:
        passes = ((s_upper - s_lower) >= tl.load(bound_ptr)) | (g < 0)
        g = tl.where(passes, g, 0.0)
    dv = _backward_path(v + 0.5, g * s_upper * (1.0 - s_upper), c, w_ptr, b_ptr, t_ptr, dw_ptr, db_ptr, dt_ptr, L, F)
    dv += _backward_path(v - 0.5, -g * s_lower * (1.0 - s_lower), c, w_ptr, b_ptr, t_ptr, dw_ptr, db_ptr, dt_ptr, L, F)
    tl.store(dv_ptr + row + offs, dv, mask=mask)


def _check(values: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor, tanh_factors: torch.Tensor):
    channels, layers, width = biases.shape
    if values.dim() != 2 or values.shape[0] != channels:
        raise ValueError(f"values must be [{channels}, N], got {tuple(values.shape)}")
    if tuple(weights.shape) != (channels, layers, width, width) or tanh_factors.shape != biases.shape:
        raise ValueError("packed density parameters have inconsistent shapes")
    for t in (values, weights, biases, tanh_factors):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device != values.device:
            raise ValueError("the likelihood kernels take contiguous float32 tensors on one device")
    if channels > MAX_GRID_Y:
        raise ValueError(f"the likelihood kernels take at most {MAX_GRID_Y} channels, got {channels}")
    return channels, layers, width


def _grid(channels: int, n: int) -> tuple:
    """Value blocks on grid axis 0 (up to 2**31 - 1 programs), channels on axis 1 (up to 65535)."""
    return triton.cdiv(n, BLOCK), channels


def likelihood_forward(values, weights, biases, tanh_factors, bound):
    """Likelihoods [C, N] of values [C, N]; ``bound`` a 1-element float32 tensor or None."""
    channels, layers, width = _check(values, weights, biases, tanh_factors)
    n = values.shape[1]
    out = torch.empty_like(values)
    if n:
        with on_device(values):
            _forward_kernel[_grid(channels, n)](
                values,
                out,
                weights,
                biases,
                tanh_factors,
                values if bound is None else bound,
                n,
                USE_BOUND=bound is not None,
                L=layers,
                F=width,
                BLOCK_N=BLOCK,
            )
    return out


def likelihood_backward(grad, values, weights, biases, tanh_factors, bound):
    """(d/d values, d/d weights, d/d biases, d/d tanh_factors) for the upstream gradient [C, N]."""
    channels, layers, width = _check(values, weights, biases, tanh_factors)
    n = values.shape[1]
    grad = grad.contiguous().float()
    d_values = torch.empty_like(values)
    d_weights, d_biases, d_tanh = (torch.zeros_like(t) for t in (weights, biases, tanh_factors))
    if n:
        with on_device(values):
            _backward_kernel[_grid(channels, n)](
                grad,
                values,
                d_values,
                weights,
                biases,
                tanh_factors,
                values if bound is None else bound,
                d_weights,
                d_biases,
                d_tanh,
                n,
                USE_BOUND=bound is not None,
                L=layers,
                F=width,
                BLOCK_N=BLOCK,
            )
    return d_values, d_weights, d_biases, d_tanh
