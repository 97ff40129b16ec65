"""The fused IDA / SFT ops of the ``cuda`` backend, with fake (meta) kernels and autograd.

``udm_fast::ida_forward`` / ``ida_backward`` / ``sft_forward`` (C++ in ``csrc/ida_*.cpp``,
CUDA in ``kernels/ida.cu``) run on CUDA devices and, with the same tile code, on the CPU.
Per low-res pixel they evaluate the IDA as GEMM -> Hadamard -> GEMM; the SFT op adds the
gamma / beta MLPs, the noise channel and the epilogue x * (1 + gamma) + beta + IDA.
The SFT backward composes ``ida_backward`` with torch ops for the MLP parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .operands import (
    alert_not_deterministic,
    check_ida_shapes,
    check_same_device,
    compute_dtype_for,
    refuse_double_backward,
)


def _layout_of(t: torch.Tensor) -> torch.memory_format:
    """Memory format of the kernels' outputs for input ``t`` (mirrors ``layout_of`` in ida_registration.cpp)."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _empty_like_layout(shape, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=_layout_of(like))


def _fake_ida_shapes(op: str, x, m, w_up, w_out):
    """The shape facts the fake kernels need, as symbolic torch._check (the user-facing checks with
    messages are ``operands.check_ida_shapes``)."""
    torch._check(
        x.dim() == 4 and m.dim() == 4 and w_up.dim() == 4 and w_out.dim() == 4,
        lambda: f"{op}: x, m, w_up and w_out must be 4-D",
    )
    torch._check(x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0, lambda: f"{op}: x height and width must be even")
    torch._check(
        tuple(m.shape) == (x.shape[0], w_up.shape[0], x.shape[2] // 2, x.shape[3] // 2),
        lambda: f"{op}: m must be [B, Cc, H/2, W/2]",
    )


@torch.library.register_fake("udm_fast::ida_forward")
def _ida_forward_fake(x, m, w_up, w_map, w_x, w_out, b_out):
    _fake_ida_shapes("ida_forward", x, m, w_up, w_out)
    return _empty_like_layout((x.shape[0], w_out.shape[1], x.shape[2], x.shape[3]), x)


@torch.library.register_fake("udm_fast::ida_backward")
def _ida_backward_fake(grad_out, x, m, w_up, w_map, w_x, w_out):
    _fake_ida_shapes("ida_backward", x, m, w_up, w_out)
    weights = tuple(torch.empty(w.shape, dtype=w.dtype, device=w.device) for w in (w_up, w_map, w_x, w_out))
    bias = torch.empty((w_out.shape[1],), dtype=x.dtype, device=x.device)
    return (_empty_like_layout(x.shape, x), _empty_like_layout(m.shape, m)) + weights + (bias,)


@torch.library.register_fake("udm_fast::sft_forward")
def _sft_forward_fake(
    x, cond, cond_half, noise, w_gamma1, w_gamma2, w_beta1, w_beta2, w_up, w_map, w_x, w_out, b_out, slope
):
    _fake_ida_shapes("sft_forward", x, cond_half, w_up, w_out)
    torch._check(w_out.shape[1] == x.shape[1], lambda: "sft_forward: the IDA must keep the channel count")
    return _empty_like_layout(x.shape, x)


def _ida_setup_context(ctx, inputs, output):
    x, m, w_up, w_map, w_x, w_out, _ = inputs
    ctx.save_for_backward(x, m, w_up, w_map, w_x, w_out)


def _ida_backward(ctx, grad_out):
    if grad_out.is_cuda:
        alert_not_deterministic("the cuda backend's IDA backward")
    return torch.ops.udm_fast.ida_backward(grad_out, *ctx.saved_tensors)


torch.library.register_autograd("udm_fast::ida_forward", _ida_backward, setup_context=_ida_setup_context)
refuse_double_backward("udm_fast::ida_backward", "IDA / SFT (cuda)")


def _sft_setup_context(ctx, inputs, output):
    *tensors, _, slope = inputs  # b_out is not needed by the backward
    ctx.save_for_backward(*tensors)
    ctx.slope = slope


def _leaky_grad(grad: torch.Tensor, pre: torch.Tensor, slope: float) -> torch.Tensor:
    """grad * LeakyReLU'(pre) with the derivative at 0 taken from the negative side (as torch does)."""
    return torch.where(pre > 0, grad, grad * slope)


def _conv1x1_input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """d/d input of a bias-free 1x1 conv: grad [B, O, H, W], weight [O, I, 1, 1] -> [B, I, H, W]."""
    return torch.einsum("bohw,oi->bihw", grad, weight.flatten(1))


def _conv1x1_weight_grad(grad: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """d/d weight of a bias-free 1x1 conv: grad [B, O, H, W], input [B, I, H, W] -> [O, I, 1, 1]."""
    return torch.einsum("bohw,bihw->oi", grad, inp)[..., None, None]


def _sft_backward(ctx, grad_out):
    x, cond, cond_half, noise, w_gamma1, w_gamma2, w_beta1, w_beta2, w_up, w_map, w_x, w_out = ctx.saved_tensors
    slope = ctx.slope
    if grad_out.is_cuda:
        alert_not_deterministic("the cuda backend's SFT backward")
    dx_ida, d_cond_half, dw_up, dw_map, dw_x, dw_out, db_out = torch.ops.udm_fast.ida_backward(
        grad_out, x, cond_half, w_up, w_map, w_x, w_out
    )
    cond_noise = torch.cat((cond, noise), dim=1)
    h_gamma = F.conv2d(cond, w_gamma1)
    a_gamma = F.leaky_relu(h_gamma, slope)
    gamma = F.conv2d(a_gamma, w_gamma2)
    h_beta = F.conv2d(cond_noise, w_beta1)
    a_beta = F.leaky_relu(h_beta, slope)

    dx = torch.addcmul(dx_ida, grad_out, 1 + gamma)
    d_gamma = grad_out * x
    dw_gamma2 = _conv1x1_weight_grad(d_gamma, a_gamma)
    dh_gamma = _leaky_grad(_conv1x1_input_grad(d_gamma, w_gamma2), h_gamma, slope)
    dw_gamma1 = _conv1x1_weight_grad(dh_gamma, cond)
    dw_beta2 = _conv1x1_weight_grad(grad_out, a_beta)
    dh_beta = _leaky_grad(_conv1x1_input_grad(grad_out, w_beta2), h_beta, slope)
    dw_beta1 = _conv1x1_weight_grad(dh_beta, cond_noise)
    d_cond_noise = _conv1x1_input_grad(dh_beta, w_beta1)
    d_cond = _conv1x1_input_grad(dh_gamma, w_gamma1) + d_cond_noise[:, :-1]
    d_noise = d_cond_noise[:, -1:]
    return (
        dx,
        d_cond,
        d_cond_half,
        d_noise,
        dw_gamma1,
        dw_gamma2,
        dw_beta1,
        dw_beta2,
        dw_up,
        dw_map,
        dw_x,
        dw_out,
        db_out,
        None,
    )


torch.library.register_autograd("udm_fast::sft_forward", _sft_backward, setup_context=_sft_setup_context)


_COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _operand_dtype(where: str, tensors: tuple) -> torch.dtype:
    """The dtype the kernels compute in (see ``operands.compute_dtype_for``); all tensors on one device."""
    check_same_device(where, tensors)
    return compute_dtype_for(where, tensors[0], tensors[1:], _COMPUTE_DTYPES)


def ida(
    x: torch.Tensor,
    m: torch.Tensor,
    w_up: torch.Tensor,
    w_map: torch.Tensor,
    w_x: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
) -> torch.Tensor:
    """Fused IDA forward (same arguments and result as ``udm_fast.ops.reference.ida_reference``).

    x [B, C, H, W] (H, W even), m [B, Cc, H/2, W/2], w_up [Cc, Cm, 2, 2], w_map [Cm, Cm, 3, 3],
    w_x [Cm, C, 3, 3], w_out [Cm, Co, 2, 2], b_out [Co] -> [B, Co, H, W]. Outside autocast all operands
    share x's dtype; under autocast they are cast to the autocast dtype, which the result has (as the
    reference's ConvTranspose2d). The kernels accumulate in float32 (float64 for float64).
    """
    tensors = (x, m, w_up, w_map, w_x, w_out, b_out)
    check_ida_shapes("IDA (cuda)", *tensors)
    dtype = _operand_dtype("IDA (cuda)", tensors)
    return torch.ops.udm_fast.ida_forward(*(t.to(dtype) for t in tensors))


def sft(
    x: torch.Tensor,
    cond: torch.Tensor,
    cond_half: torch.Tensor,
    noise: torch.Tensor,
    w_gamma1: torch.Tensor,
    w_gamma2: torch.Tensor,
    w_beta1: torch.Tensor,
    w_beta2: torch.Tensor,
    w_up: torch.Tensor,
    w_map: torch.Tensor,
    w_x: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    slope: float,
) -> torch.Tensor:
    """Fused SFT layer: x * (1 + gamma) + beta + IDA(x, cond_half).

    gamma = W_gamma2 * act(W_gamma1 * cond), beta = W_beta2 * act(W_beta1 * [cond; noise]) (1x1 convs,
    no bias), act = LeakyReLU(slope) (slope 0: ReLU). x [B, C, H, W], cond [B, Cc, H, W],
    cond_half [B, Cc, H/2, W/2], noise [B, 1, H, W]; w_gamma1 [Rg, Cc, 1, 1], w_gamma2 [C, Rg, 1, 1],
    w_beta1 [Rb, Cc + 1, 1, 1], w_beta2 [C, Rb, 1, 1]; IDA weights as in ``ida``. Returns [B, C, H, W].
    Dtypes as in ``ida``, except that the result has the promoted dtype of x and the compute dtype, as
    the reference's x * (1 + gamma) + beta has (under autocast the kernel reads x rounded to the
    autocast dtype).
    """
    tensors = (x, cond, cond_half, noise, w_gamma1, w_gamma2, w_beta1, w_beta2, w_up, w_map, w_x, w_out, b_out)
    check_ida_shapes("SFT (cuda)", x, cond_half, w_up, w_map, w_x, w_out, b_out)
    dtype = _operand_dtype("SFT (cuda)", tensors)
    out = torch.ops.udm_fast.sft_forward(*(t.to(dtype) for t in tensors), float(slope))
    return out.to(torch.promote_types(x.dtype, dtype))
