"""``udm_fast::sft_combine``: out = x * (1 + gamma) + beta + ida in one pass, with autograd."""
import torch


@torch.library.register_fake("udm_fast::sft_combine")
def _sft_combine_fake(x, gamma, beta, ida):
    torch._check(x.shape == gamma.shape == beta.shape == ida.shape,
                 lambda: "sft_combine: operands must have the same shape")
    return torch.empty_like(x)


@torch.library.register_fake("udm_fast::sft_combine_backward")
def _sft_combine_backward_fake(grad_out, x, gamma):
    return torch.empty_like(x), torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, gamma, _, _ = inputs
    ctx.save_for_backward(x, gamma)


def _backward(ctx, grad_out):
    x, gamma = ctx.saved_tensors
    grad_x, grad_gamma = torch.ops.udm_fast.sft_combine_backward(grad_out, x, gamma)
    return grad_x, grad_gamma, grad_out, grad_out


torch.library.register_autograd("udm_fast::sft_combine", _backward, setup_context=_setup_context)


def sft_combine(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, ida: torch.Tensor) -> torch.Tensor:
    """x * (1 + gamma) + beta + ida for four tensors of one shape/dtype/device ([B, C, H, W])."""
    return torch.ops.udm_fast.sft_combine(x, gamma, beta, ida)
