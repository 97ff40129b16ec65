"""``udm_fast::sft_combine``: out = x * (1 + gamma) + beta + ida in one pass, with autograd."""
import torch

from .operands import refuse_double_backward


def _dense(t: torch.Tensor) -> bool:
    """Tensor::is_non_overlapping_and_dense: the strides of the dims of size >= 2, sorted, are the
    running products of their sizes."""
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz >= 2):
        if stride != expected:
            return False
        expected *= size
    return True


def _empty_result(first: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    """The kernels' output layout (``same_dense_layout`` in csrc/elementwise.h): the operands' shared
    strides when all are dense and strided alike, else NCHW-contiguous."""
    if all(_dense(t) and t.stride() == first.stride() for t in (first, *others)):
        return torch.empty_like(first)
    return torch.empty(first.shape, dtype=first.dtype, device=first.device)


@torch.library.register_fake("udm_fast::sft_combine")
def _sft_combine_fake(x, gamma, beta, ida):
    torch._check(x.shape == gamma.shape == beta.shape == ida.shape,
                 lambda: "sft_combine: operands must have the same shape")
    return _empty_result(x, gamma, beta, ida)


@torch.library.register_fake("udm_fast::sft_combine_backward")
def _sft_combine_backward_fake(grad_out, x, gamma):
    return _empty_result(x, grad_out, gamma), _empty_result(x, grad_out, gamma)


def _setup_context(ctx, inputs, output):
    x, gamma, _, _ = inputs
    ctx.save_for_backward(x, gamma)


def _backward(ctx, grad_out):
    x, gamma = ctx.saved_tensors
    grad_x, grad_gamma = torch.ops.udm_fast.sft_combine_backward(grad_out, x, gamma)
    return grad_x, grad_gamma, grad_out, grad_out


torch.library.register_autograd("udm_fast::sft_combine", _backward, setup_context=_setup_context)
refuse_double_backward("udm_fast::sft_combine_backward", "SFT epilogue (cuda)")


def sft_combine(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, ida: torch.Tensor) -> torch.Tensor:
    """x * (1 + gamma) + beta + ida for four tensors of one shape/dtype/device ([B, C, H, W])."""
    return torch.ops.udm_fast.sft_combine(x, gamma, beta, ida)
