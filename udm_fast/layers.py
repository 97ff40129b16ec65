"""Generator building blocks: pre-activation convs, IDA, SFT and the SFT residual block.

Parameter names follow the reference implementation (``model/vunet_conv.py``,
``model/blindsrlocal.py``, ``model/modules.py``) so its state dicts load with
``strict=True``.  ``IDA`` and ``SFT`` take a ``backend=`` argument (see
``udm_fast.backend``); the reference backend composes torch ops.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import backend as _backend
from . import ops as _ops
from .ops import ida_triton as _ida_triton
from .ops import sft_triton as _sft_triton

NoiseArg = Union[None, torch.Tensor, torch.Generator]


def _conv_padding(kernel_size: int, stride: int, dilation: int = 1) -> int:
    """Padding rule of the reference ``Conv2d`` wrapper (k4 s2 -> 1, k3 s1 -> 1, k1 -> 0)."""
    if stride == 2 and kernel_size % 2 == 0:
        return kernel_size // 2 - 1
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


class PreActConv2d(nn.Module):
    """activation -> Conv2d (no bias): the reference ``Conv2d`` wrapper. Weight at ``conv2d.weight``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 activation: Optional[nn.Module] = nn.ReLU()):
        super().__init__()
        self.activation = activation
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                _conv_padding(kernel_size, stride), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation is not None:
            x = self.activation(x)
        return self.conv2d(x)


class PreActConvTranspose2d(nn.Module):
    """activation -> ConvTranspose2d (no bias), padding (k - stride) // 2. Weight at ``tconv2d.weight``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 2,
                 activation: Optional[nn.Module] = None):
        super().__init__()
        self.activation = activation
        self.tconv2d = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride,
                                          (kernel_size - stride) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation is not None:
            x = self.activation(x)
        return self.tconv2d(x)


# ----------------------------------------------------------------------------- IDA

def ida_reference(x: torch.Tensor, m: torch.Tensor, w_up: torch.Tensor, w_map: torch.Tensor,
                  w_x: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor) -> torch.Tensor:
    """IDA(x, m) = ConvT2x2( Conv3x3s2(LReLU_0.1(ConvT2x2(m))) * Conv3x3s2(x) ) + b.

    x: [B, C, H, W] (H, W even), m: [B, Cc, H/2, W/2]; weights as in ``IDA``. Returns [B, C_out, H, W].
    """
    a = F.conv_transpose2d(m, w_up, stride=2)
    a = F.conv2d(F.leaky_relu(a, 0.1), w_map, stride=2, padding=1)
    b = F.conv2d(x, w_x, stride=2, padding=1)
    return F.conv_transpose2d(a * b, w_out, b_out, stride=2)


class IDA(nn.Module):
    """Inhomogeneous degradation-aware layer (reference ``IDADepthwiseConv``; additive, not depthwise).

    forward(x [B, C, H, W], m [B, Cc, H/2, W/2]) -> [B, C_out, H, W]; also accepts ``forward([x, m])``.
    H and W must be even.
    """

    def __init__(self, channels_in_x: int, channels_in_map: int, channels_mid: Optional[int] = None,
                 channels_out: Optional[int] = None, ds_factor: int = 2, backend: Optional[str] = None):
        super().__init__()
        if ds_factor != 2:
            raise ValueError(f"IDA: only ds_factor=2 is supported (the reference's MAP_RATIO), got {ds_factor}")
        channels_mid = (channels_in_x + channels_in_map) // 2 if channels_mid is None else channels_mid
        channels_out = channels_in_x if channels_out is None else channels_out
        self.channels_in_x, self.channels_in_map = channels_in_x, channels_in_map
        self.channels_mid, self.channels_out = channels_mid, channels_out
        self.transform_map = nn.Sequential(
            nn.ConvTranspose2d(channels_in_map, channels_mid, 2, stride=2, bias=False),
            nn.LeakyReLU(0.1),
            nn.Conv2d(channels_mid, channels_mid, 3, stride=2, padding=1, bias=False),
        )
        self.transform_x = nn.Conv2d(channels_in_x, channels_mid, 3, stride=2, padding=1, bias=False)
        self.deconv = nn.ConvTranspose2d(channels_mid, channels_out, 2, stride=2)
        self.backend = None if backend is None else _backend._check_name(backend, "IDA")

    def weights(self) -> tuple:
        """(w_up, w_map, w_x, w_out, b_out) in the order ``ida_reference`` takes them."""
        return (self.transform_map[0].weight, self.transform_map[2].weight, self.transform_x.weight,
                self.deconv.weight, self.deconv.bias)

    def forward(self, x, m: Optional[torch.Tensor] = None) -> torch.Tensor:
        if m is None:
            if not isinstance(x, (list, tuple)) or len(x) != 2:
                raise TypeError("IDA.forward takes (x, m) or the reference's list form ([x, m])")
            x, m = x
        _check_ida_inputs(x, m, self.channels_in_x, self.channels_in_map)
        name = _backend.resolve(self.backend, x.device)
        return _ida_impl(name)(x, m, *self.weights())


def _check_ida_inputs(x: torch.Tensor, m: torch.Tensor, c_x: int, c_m: int) -> None:
    if x.dim() != 4 or m.dim() != 4:
        raise ValueError(f"IDA: x and m must be 4-D [B, C, H, W], got {tuple(x.shape)} and {tuple(m.shape)}")
    b, c, h, w = x.shape
    if c != c_x or m.shape[1] != c_m:
        raise ValueError(f"IDA: expected {c_x} feature and {c_m} map channels, got {c} and {m.shape[1]}")
    if h % 2 or w % 2:
        raise ValueError(f"IDA: feature height and width must be even, got {h}x{w}")
    if m.shape[0] != b or tuple(m.shape[2:]) != (h // 2, w // 2):
        raise ValueError(f"IDA: map must be [B, {c_m}, H/2, W/2] = [{b}, {c_m}, {h // 2}, {w // 2}], "
                         f"got {list(m.shape)}")


_IDA_IMPLS: dict = {"reference": ida_reference, "triton": _ida_triton.ida_triton}
if _ops.FUSED_IDA:
    _IDA_IMPLS["cuda"] = _ops.ida_cuda.ida


def _ida_impl(name: str) -> Callable:
    if name not in _IDA_IMPLS:
        raise ValueError(f"IDA: backend {name!r} has no IDA kernel here; available: {', '.join(_IDA_IMPLS)}")
    return _IDA_IMPLS[name]


# ----------------------------------------------------------------------------- SFT

def resize_cond(cond: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (align_corners=True) resize of a condition map, skipped when the size already matches."""
    if tuple(cond.shape[-2:]) == tuple(size):
        return cond
    return F.interpolate(cond, size=tuple(size), mode="bilinear", align_corners=True)


def draw_noise(noise: NoiseArg, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The SFT noise map [B, 1, H, W] for features ``like``: the given tensor, or N(0, 1) draws."""
    b, _, h, w = like.shape
    if isinstance(noise, torch.Tensor):
        if tuple(noise.shape) != (b, 1, h, w):
            raise ValueError(f"SFT noise must have shape [{b}, 1, {h}, {w}], got {list(noise.shape)}")
        return noise.to(device=like.device, dtype=dtype)
    if noise is None:
        return torch.randn(b, 1, h, w, device=like.device, dtype=dtype)
    if isinstance(noise, torch.Generator):
        z = torch.randn(b, 1, h, w, generator=noise, device=noise.device, dtype=torch.float32)
        return z.to(device=like.device, dtype=dtype)
    raise TypeError(f"SFT noise must be None, a tensor or a torch.Generator, got {type(noise).__name__}")


def _sft_epilogue_reference(x, gamma, beta, ida):
    return x * (1 + gamma) + beta + ida


def _sft_epilogue_compiled(x, gamma, beta, ida):
    if torch.compiler.is_compiling():
        # Inductor fuses the plain expression into one pass itself; it also lays out gamma / beta
        # differently from the traced graph, which the op's layout-dependent output would contradict.
        return _sft_epilogue_reference(x, gamma, beta, ida)
    dtype = torch.promote_types(torch.promote_types(x.dtype, gamma.dtype), torch.promote_types(beta.dtype, ida.dtype))
    return _ops.sft_combine.sft_combine(x.to(dtype), gamma.to(dtype), beta.to(dtype), ida.to(dtype))


def _sft_epilogue(name: str) -> Callable:
    if name in ("reference", "triton"):  # triton: layers whose activation the fused kernel lacks
        return _sft_epilogue_reference
    if name == "cuda":
        if not _ops.AVAILABLE:
            raise RuntimeError(f"SFT: backend 'cuda' needs the compiled extension: {_ops._ext.error()}")
        return _sft_epilogue_compiled
    raise ValueError(f"SFT: backend {name!r} has no SFT kernel here; available: reference, cuda")


class SFT(nn.Module):
    """Spatial feature transform layer with IDA (reference ``SFTLayer``).

    out = x * (1 + gamma(cond)) + beta([cond; z]) + IDA(x, cond at H/2), with z ~ N(0, 1) [B, 1, H, W].
    forward(x [B, C, H, W], cond [B, cond_dim, h, w] (any h, w; resized bilinearly), noise=None)
    ``noise``: None (fresh draw), a torch.Generator, or the explicit map [B, 1, H, W].
    """

    def __init__(self, cond_dim: int, n_in_out: int, activation: Optional[nn.Module] = None, sn: bool = False,
                 reduction_ratio: int = 4, backend: Optional[str] = None):
        super().__init__()
        if sn:
            raise ValueError("SFT: spectral norm (sn=True) is not supported; the reference model does not use it")
        activation = nn.LeakyReLU(0.01) if activation is None else activation
        reduce_dim = (cond_dim + n_in_out) // reduction_ratio
        self.cond_dim, self.n_in_out = cond_dim, n_in_out
        self.convs_gamma = nn.ModuleList([PreActConv2d(cond_dim, reduce_dim, 1, activation=None),
                                          PreActConv2d(reduce_dim, n_in_out, 1, activation=activation)])
        self.convs_beta = nn.ModuleList([PreActConv2d(cond_dim + 1, reduce_dim, 1, activation=None),
                                         PreActConv2d(reduce_dim, n_in_out, 1, activation=activation)])
        self.spatial_gamma = IDA(n_in_out, cond_dim, (n_in_out + cond_dim) // 2, n_in_out)
        self.backend = None if backend is None else _backend._check_name(backend, "SFT")

    def forward(self, x: torch.Tensor, cond: torch.Tensor, noise: NoiseArg = None) -> torch.Tensor:
        if x.dim() != 4 or cond.dim() != 4:
            raise ValueError(f"SFT: x and cond must be 4-D, got {tuple(x.shape)} and {tuple(cond.shape)}")
        if cond.shape[1] != self.cond_dim or x.shape[1] != self.n_in_out:
            raise ValueError(f"SFT: expected {self.n_in_out} feature and {self.cond_dim} cond channels, "
                             f"got {x.shape[1]} and {cond.shape[1]}")
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            raise ValueError(f"SFT: feature height and width must be even, got {h}x{w}")
        return self.forward_resized(x, resize_cond(cond, (h, w)), resize_cond(cond, (h // 2, w // 2)), noise)

    def forward_resized(self, x: torch.Tensor, cond_full: torch.Tensor, cond_half: torch.Tensor,
                        noise: NoiseArg = None) -> torch.Tensor:
        """forward() with the condition already resized to H x W and H/2 x W/2 (the generator hoists it)."""
        name = _backend.resolve(self.backend, x.device)
        if name == "triton" and _sft_triton.activation_slope(self) is not None:
            return _sft_triton.sft_layer_forward(self, x, cond_full, cond_half, noise)
        if name == "cuda" and _ops.FUSED_IDA and (slope := _sft_triton.activation_slope(self)) is not None:
            return _ops.ida_cuda.sft(x, cond_full, cond_half, draw_noise(noise, x, cond_full.dtype),
                                     self.convs_gamma[0].conv2d.weight, self.convs_gamma[1].conv2d.weight,
                                     self.convs_beta[0].conv2d.weight, self.convs_beta[1].conv2d.weight,
                                     *self.spatial_gamma.weights(), slope)
        gamma = self.convs_gamma[1](self.convs_gamma[0](cond_full))
        z = draw_noise(noise, x, cond_full.dtype)
        beta = self.convs_beta[1](self.convs_beta[0](torch.cat((cond_full, z), dim=1)))
        ida = _ida_impl("reference" if name not in _IDA_IMPLS else name)(x, cond_half, *self.spatial_gamma.weights())
        return _sft_epilogue(name)(x, gamma, beta, ida)


def set_layer_backend(root: nn.Module, name: Optional[str]) -> nn.Module:
    """Sets the backend (reference / cuda / triton / auto, or None to follow the global choice) of every
    IDA and SFT layer inside ``root``; returns ``root``."""
    checked = None if name is None else _backend._check_name(name, "set_layer_backend")
    for module in root.modules():
        if isinstance(module, (IDA, SFT)):
            module.backend = checked
    return root


class SFTResBlock(nn.Module):
    """x + Conv_b(SFT_2(Conv_a(SFT_1(x, cond)), cond)); convs are pre-activation 3x3 (reference ``SFTResBlock``)."""

    def __init__(self, n_in_out: int, kernel_size: int, cond_dim: int, activation: Optional[nn.Module] = None,
                 sn: bool = False, backend: Optional[str] = None):
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
        return self.forward_resized(x, resize_cond(cond, (h, w)), resize_cond(cond, (h // 2, w // 2)),
                                    noise1, noise2)
