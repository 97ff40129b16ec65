"""A short training run of a small Generator on one backend: shared by the fused-backend tests.

The run fits the generator's output for one fixed (x, e_g, e_l, noise) to a fixed target with Adam,
so with the same seed every backend starts from the same weights and sees the same data: its loss
curve must fall, and it must follow the reference backend's curve.
"""

import torch
import torch.nn.functional as F

from udm_fast import set_layer_backend
from udm_fast.models.generator import Generator


def generator_loss_curve(
    backend: str, device: torch.device, steps: int = 10, filters: int = 16, size: int = 16, autocast_dtype=None
) -> list:
    """L1 losses of ``steps`` Adam steps (lr 1e-3) of a Generator(filters, e_g 16) on a batch of 2 images
    size x size, every IDA / SFT layer on ``backend``; channels_last inputs; explicit noise maps; float32
    matmuls and convolutions in IEEE precision (no TF32), ``autocast_dtype`` (e.g. bfloat16) under autocast."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32 means IEEE here
    try:
        return _loss_curve(backend, device, steps, filters, size, autocast_dtype)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _loss_curve(backend, device, steps, filters, size, autocast_dtype) -> list:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Generator(filters, loc_emb_dim=4, emb_dim=16)
    set_layer_backend(model, backend).to(device)
    x = torch.rand(2, 3, size, size, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    e_g = torch.randn(2, 16, generator=gen).to(device)
    e_l = torch.randn(2, 4, size // 4, size // 4, generator=gen).to(device)
    noise = [torch.randn(s, generator=gen).to(device) for s in model.net.noise_shapes(2, size, size)]
    target = (F.avg_pool2d(x, 3, 1, 1) * 1.6 - 0.8).detach()  # a blurred, contrast-changed x in [-1, 1]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out = model(x, e_g, e_l, noise)
        loss = (out.float() - target).abs().mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def check_trains_like_reference(
    losses: list, reference: list, tolerance: float, *, compared_steps=None, min_drop: float = 0.25
) -> None:
    """The loss falls by ``min_drop`` (the best of the last three steps against the first), and each of the
    first ``compared_steps`` (default: all) losses is within ``tolerance`` (relative) of the reference's.
    In bfloat16 two correct implementations round differently and Adam amplifies that over the steps
    (7 % apart after 10 steps on the CPU), so there only the first steps are compared."""
    best_late = min(losses[-3:])
    assert best_late < (1 - min_drop) * losses[0], f"loss did not fall by {min_drop:.0%}: {losses}"
    for step, (got, expected) in enumerate(list(zip(losses, reference))[:compared_steps]):
        assert abs(got - expected) <= tolerance * expected, f"step {step}: {got} vs reference {expected}"
