"""``udm_fast::ida_triton_fwd`` / ``udm_fast::ida_triton_bwd``: the Triton IDA kernels as torch ops.

Both ops have fake (meta) kernels, and autograd is registered on the forward, so
``torch.compile(fullgraph=True)`` traces them without graph breaks. The kernels themselves
(``udm_fast.triton_kernels``) are imported on first execution, so importing this module needs
neither triton nor a GPU. ``ida_triton`` is the user-facing function (the ``triton`` entry of
``udm_fast.ops.dispatch.IDA_BACKENDS``).

Dtypes: float32, bfloat16, float16. Under ``torch.autocast`` the GEMM operands are cast to the
autocast dtype inside the kernels (float32 accumulation) and the output has the autocast dtype,
as the reference's ConvTranspose2d would; outside autocast every tensor must share x's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .operands import check_ida_shapes, check_same_device, compute_dtype_for, refuse_double_backward
from .triton_loader import kernels

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def new_output(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Output buffer shaped and laid out like x (channels_last stays channels_last)."""
    return torch.empty_like(x, dtype=dtype)


def new_mid(x: Tensor, w_x: Tensor, dtype: torch.dtype, save_mid: bool) -> tuple:
    """The saved [N_lo, Cm] tensors A and Bx (empty placeholders when nothing is saved)."""
    if not save_mid:
        return x.new_empty((0,), dtype=dtype), x.new_empty((0,), dtype=dtype)
    rows = x.shape[0] * (x.shape[2] // 2) * (x.shape[3] // 2)
    return x.new_empty((rows, w_x.shape[0]), dtype=dtype), x.new_empty((rows, w_x.shape[0]), dtype=dtype)


def weight_grads(raw: dict, weights: dict) -> list:
    """Kernel weight gradients (float32) in each weight's shape and dtype, in ``weights``' order."""
    return [raw[name].reshape(w.shape).to(w.dtype) for name, w in weights.items()]


@torch.library.custom_op("udm_fast::ida_triton_fwd", mutates_args=())
def ida_triton_fwd(
    x: Tensor,
    m: Tensor,
    w_up: Tensor,
    w_map: Tensor,
    w_x: Tensor,
    w_out: Tensor,
    b_out: Tensor,
    compute_dtype: torch.dtype,
    save_mid: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """IDA forward. Returns (out [B, C_out, H, W] in compute_dtype, A, Bx), A / Bx being the
    [N_lo, Cm] mid tensors the backward needs (empty when ``save_mid`` is False)."""
    out = new_output(x, compute_dtype)
    mids = kernels("ida").forward(
        x, m, w_up, w_map, w_x, w_out, b_out, compute_dtype=compute_dtype, out=out, save_mid=save_mid
    )
    a, bx = mids if save_mid else new_mid(x, w_x, compute_dtype, False)
    return out, a, bx


@ida_triton_fwd.register_fake
def _ida_triton_fwd_fake(x, m, w_up, w_map, w_x, w_out, b_out, compute_dtype, save_mid):
    return (new_output(x, compute_dtype),) + new_mid(x, w_x, compute_dtype, save_mid)


@torch.library.custom_op("udm_fast::ida_triton_bwd", mutates_args=())
def ida_triton_bwd(
    grad_out: Tensor,
    x: Tensor,
    m: Tensor,
    w_up: Tensor,
    w_map: Tensor,
    w_x: Tensor,
    w_out: Tensor,
    b_out: Tensor,
    a: Tensor,
    bx: Tensor,
    compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """IDA backward: (dx, dm, dw_up, dw_map, dw_x, dw_out, db_out), each like its input."""
    grads = {"dx": torch.empty_like(x), "dm": torch.empty_like(m)}
    raw = kernels("ida").backward(
        grad_out, x, m, w_up, w_map, w_x, w_out, a, bx, compute_dtype=compute_dtype, grads=grads
    )
    weights = {"w_up": w_up, "w_map": w_map, "w_x": w_x, "w_out": w_out, "b_out": b_out}
    return (grads["dx"], grads["dm"], *weight_grads(raw, weights))


@ida_triton_bwd.register_fake
def _ida_triton_bwd_fake(grad_out, x, m, w_up, w_map, w_x, w_out, b_out, a, bx, compute_dtype):
    return (torch.empty_like(x), torch.empty_like(m), *(w.new_empty(w.shape) for w in (w_up, w_map, w_x, w_out, b_out)))


def _ida_setup_context(ctx, inputs, output):
    *tensors, compute_dtype, save_mid = inputs
    _, a, bx = output
    ctx.compute_dtype, ctx.save_mid = compute_dtype, save_mid
    ctx.mark_non_differentiable(a, bx)
    ctx.save_for_backward(*tensors, a, bx)


def _ida_backward(ctx, grad_out, _grad_a, _grad_bx):
    if not ctx.save_mid:
        raise RuntimeError("udm_fast::ida_triton_fwd was called with save_mid=False; it cannot be differentiated")
    grads = torch.ops.udm_fast.ida_triton_bwd(grad_out, *ctx.saved_tensors, ctx.compute_dtype)
    return (*grads, None, None)


torch.library.register_autograd("udm_fast::ida_triton_fwd", _ida_backward, setup_context=_ida_setup_context)
refuse_double_backward("udm_fast::ida_triton_bwd", "IDA (triton)")


def ida_triton(x: Tensor, m: Tensor, w_up: Tensor, w_map: Tensor, w_x: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """IDA(x, m) with the Triton kernels; same signature and result as ``layers.ida_reference``."""
    tensors = (x, m, w_up, w_map, w_x, w_out, b_out)
    check_ida_shapes("IDA (triton)", *tensors)
    check_same_device("IDA (triton)", tensors)
    dtype = compute_dtype_for("IDA (triton)", x, tensors[1:], TRITON_DTYPES)
    save_mid = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return torch.ops.udm_fast.ida_triton_fwd(*tensors, dtype, save_mid)[0]
