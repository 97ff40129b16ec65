"""The SFT layer (spatial feature transform with IDA) and the SFT residual block of the generator.

Parameter names follow the reference implementation (``model/blindsrlocal.py``, ``model/modules.py``)
so its state dicts load with ``strict=True``. ``SFT`` runs on the backend chosen per call through the
SFT dispatch table (``udm_fast.ops.dispatch``, which also states the one fallback rule).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import backend as backend_choice
from ..ops.dispatch import SFT_BACKENDS, select
from ..ops.operands import NoiseArg
from .conv import PreActConv2d
from .ida import IDA


def resize_cond(cond: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (align_corners=True) resize of a condition map, skipped when the size already matches."""
    if tuple(cond.shape[-2:]) == tuple(size):
        return cond
    return F.interpolate(cond, size=tuple(size), mode="bilinear", align_corners=True)


class SFT(nn.Module):
    """Spatial feature transform layer with IDA (reference ``SFTLayer``).

    out = x * (1 + gamma(cond)) + beta([cond; z]) + IDA(x, cond at H/2), with z ~ N(0, 1) [B, 1, H, W].
    forward(x [B, C, H, W], cond [B, cond_dim, h, w] (any h, w; resized bilinearly), noise=None)
    ``noise``: None (fresh draw), a torch.Generator, or the explicit map [B, 1, H, W].
    """

    def __init__(
        self,
        cond_dim: int,
        n_in_out: int,
        activation: Optional[nn.Module] = None,
        sn: bool = False,
        reduction_ratio: int = 4,
        backend: Optional[str] = None,
    ):
        super().__init__()
        if sn:
            raise ValueError("SFT: spectral norm (sn=True) is not supported; the reference model does not use it")
        activation = nn.LeakyReLU(0.01) if activation is None else activation
        reduce_dim = (cond_dim + n_in_out) // reduction_ratio
        self.cond_dim, self.n_in_out = cond_dim, n_in_out
        self.convs_gamma = nn.ModuleList(
            [
                PreActConv2d(cond_dim, reduce_dim, 1, activation=None),
                PreActConv2d(reduce_dim, n_in_out, 1, activation=activation),
            ]
        )
        self.convs_beta = nn.ModuleList(
            [
                PreActConv2d(cond_dim + 1, reduce_dim, 1, activation=None),
                PreActConv2d(reduce_dim, n_in_out, 1, activation=activation),
            ]
        )
        self.spatial_gamma = IDA(n_in_out, cond_dim, (n_in_out + cond_dim) // 2, n_in_out)
        self.backend = None if backend is None else backend_choice.check_name(backend, "SFT")

    def forward(self, x: torch.Tensor, cond: torch.Tensor, noise: NoiseArg = None) -> torch.Tensor:
        if x.dim() != 4 or cond.dim() != 4:
            raise ValueError(f"SFT: x and cond must be 4-D, got {tuple(x.shape)} and {tuple(cond.shape)}")
        if cond.shape[1] != self.cond_dim or x.shape[1] != self.n_in_out:
            raise ValueError(
                f"SFT: expected {self.n_in_out} feature and {self.cond_dim} cond channels, "
                f"got {x.shape[1]} and {cond.shape[1]}"
            )
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            raise ValueError(f"SFT: feature height and width must be even, got {h}x{w}")
        return self.forward_resized(x, resize_cond(cond, (h, w)), resize_cond(cond, (h // 2, w // 2)), noise)

    def forward_resized(
        self, x: torch.Tensor, cond_full: torch.Tensor, cond_half: torch.Tensor, noise: NoiseArg = None
    ) -> torch.Tensor:
        """forward() with the condition already resized to H x W and H/2 x W/2 (the generator hoists it)."""
        name = backend_choice.resolve(self.backend, x.device)
        return select(SFT_BACKENDS, "SFT", name)(self, x, cond_full, cond_half, noise)

    def modulation(self, cond_full: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, beta) [B, C, H, W] of the torch MLPs: gamma from cond_full, beta from [cond_full; z]."""
        gamma = self.convs_gamma[1](self.convs_gamma[0](cond_full))
        beta = self.convs_beta[1](self.convs_beta[0](torch.cat((cond_full, z), dim=1)))
        return gamma, beta

    def mlp_weights(self) -> tuple:
        """(w_gamma1, w_gamma2, w_beta1, w_beta2): the 1x1 weights of the gamma and beta MLPs, the names
        and order every SFT kernel uses; the IDA weights follow from ``spatial_gamma.weights()``."""
        return (
            self.convs_gamma[0].conv2d.weight,
            self.convs_gamma[1].conv2d.weight,
            self.convs_beta[0].conv2d.weight,
            self.convs_beta[1].conv2d.weight,
        )

    def activation_slope(self) -> Optional[float]:
        """Negative slope of the MLP activation (0.0 for ReLU), or None when the fused kernels cannot
        express this layer (another activation, or gamma and beta MLPs that differ)."""
        if self.convs_gamma[0].activation is not None or self.convs_beta[0].activation is not None:
            return None
        slopes = set()
        for act in (self.convs_gamma[1].activation, self.convs_beta[1].activation):
            if type(act) is nn.LeakyReLU:
                slopes.add(float(act.negative_slope))
            elif type(act) is nn.ReLU:
                slopes.add(0.0)
            else:
                return None
        return slopes.pop() if len(slopes) == 1 else None


def set_layer_backend(root: nn.Module, name: Optional[str]) -> nn.Module:
    """Sets the backend (reference / cuda / triton / auto, or None to follow the global choice) of every
    IDA and SFT layer inside ``root``; returns ``root``."""
    checked = None if name is None else backend_choice.check_name(name, "set_layer_backend")
    for module in root.modules():
        if isinstance(module, (IDA, SFT)):
            module.backend = checked
    return root


class SFTResBlock(nn.Module):
    """x + Conv_b(SFT_2(Conv_a(SFT_1(x, cond)), cond)); convs are pre-activation 3x3 (reference ``SFTResBlock``)."""

    def __init__(
        self,
        n_in_out: int,
        kernel_size: int,
        cond_dim: int,
        activation: Optional[nn.Module] = None,
        sn: bool = False,
        backend: Optional[str] = None,
    ):
        super().__init__()
        activation = nn.LeakyReLU(0.01) if activation is None else activation
        self.sft1 = SFT(cond_dim, n_in_out, activation, sn, backend=backend)
        self.conv1 = PreActConv2d(n_in_out, n_in_out, kernel_size, activation=activation)
        self.sft2 = SFT(cond_dim, n_in_out, activation, sn, backend=backend)
        self.conv2 = PreActConv2d(n_in_out, n_in_out, kernel_size, activation=activation)

    def forward_resized(self, x, cond_full, cond_half, noise1: NoiseArg = None, noise2: NoiseArg = None):
        y = self.sft1.forward_resized(x, cond_full, cond_half, noise1)
        y = self.sft2.forward_resized(self.conv1(y), cond_full, cond_half, noise2)
        return self.conv2(y) + x

    def forward(self, x: torch.Tensor, cond: torch.Tensor, noise1: NoiseArg = None, noise2: NoiseArg = None):
        h, w = x.shape[-2:]
        return self.forward_resized(x, resize_cond(cond, (h, w)), resize_cond(cond, (h // 2, w // 2)), noise1, noise2)
