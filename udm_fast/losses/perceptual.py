"""DISTS and LPIPS distances on VGG16 features, for images in [0, 1].

``VGG16Features`` rebuilds torchvision's VGG16 ``features`` stack with its parameter names
(``features.N.weight``), so torchvision's ImageNet file loads directly. Both distances are frozen
(no trainable parameters) but differentiable with respect to their inputs, so they serve as
training losses. Their VGG convolutions follow autocast; the statistics that suffer from low
precision (DISTS means/variances, LPIPS normalisation) are computed in float32.

Domain note: the reference trainer fed DISTS its [-1, 1] tensors (docs/architecture.md §14), a bug;
these modules take [0, 1] images, as DISTS and LPIPS were defined.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.checks import check_image_batch
from .pretrained import (
    STAGE_CHANNELS,
    VGG16_CONV_CHANNELS,
    VGG16_CONV_INDICES,
    PathArg,
    dists_alpha_beta,
    lpips_linear_weights,
    vgg16_features_state_dict,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS input scaling, applied to [-1, 1] images
LPIPS_SCALE = (0.458, 0.448, 0.450)
STAGE_ENDS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in ``features``
POOL_INDICES = (4, 9, 16, 23)  # the max-pools between the stages


def _check_pair(x: torch.Tensor, y: torch.Tensor, where: str) -> None:
    for name, t in (("x", x), ("y", y)):
        check_image_batch(t, f"{where}: {name}")
    if x.shape != y.shape:
        raise ValueError(f"{where}: x and y must have the same shape, got {list(x.shape)} and {list(y.shape)}")
    if min(x.shape[2:]) < 16:
        raise ValueError(f"{where}: images must be at least 16x16 (four 2x poolings), got {list(x.shape[2:])}")
    if x.shape[0] == 0:
        raise ValueError(f"{where}: the batch is empty")


def _reduce(per_image: torch.Tensor, reduction: str, where: str) -> torch.Tensor:
    if reduction == "mean":
        return per_image.mean()
    if reduction == "none":
        return per_image
    raise ValueError(f"{where}: reduction must be 'mean' or 'none', got {reduction!r}")


def _no_autocast(device_type: str):
    return (
        torch.autocast(device_type=device_type, enabled=False)
        if device_type in ("cuda", "cpu")
        else contextlib.nullcontext()
    )


class VGG16Features(nn.Module):
    """torchvision's VGG16 ``features``: 13 3x3 convs with ReLU and 5 max-pools, same parameter names.

    ``stages(x, pool)`` returns the five stage outputs relu1_2 .. relu5_3 ([B, 64|128|256|512|512, ...]);
    ``pool`` replaces the max-pools between stages (DISTS uses L2 pooling).
    """

    def __init__(self):
        super().__init__()
        layers: list = []
        in_channels = 3
        for index in range(max(STAGE_ENDS) + 1):
            if index in VGG16_CONV_INDICES:
                out_channels = VGG16_CONV_CHANNELS[VGG16_CONV_INDICES.index(index)]
                layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
                in_channels = out_channels
            elif index in POOL_INDICES:
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)

    def load_torchvision(self, state: dict) -> None:
        """Loads ``features.*`` entries (torchvision naming), strictly."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise ValueError(f"VGG16Features: the state dict lacks {missing[:4]}{'...' if len(missing) > 4 else ''}")
        self.load_state_dict({k: state[k] for k in own})

    def stages(self, x: torch.Tensor, pool: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> list:
        outputs = []
        h = x
        for index, layer in enumerate(self.features):
            h = pool(h) if pool is not None and index in POOL_INDICES else layer(h)
            if index in STAGE_ENDS:
                outputs.append(h)
        return outputs


def l2_pool(x: torch.Tensor) -> torch.Tensor:
    """DISTS L2 pooling: sqrt(conv(x^2, h) + 1e-12), h = [1, 2, 1]^T [1, 2, 1] / 16, stride 2, padding 1.

    ([1, 2, 1] / 4 is the 5-point Hann window without its zero ends.) [B, C, H, W] -> [B, C, ~H/2, ~W/2].
    """
    taps = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype)
    kernel = (taps[:, None] * taps[None, :] / 16.0).expand(x.shape[1], 1, 3, 3)
    return torch.sqrt(F.conv2d(x * x, kernel, stride=2, padding=1, groups=x.shape[1]) + 1e-12)


def _frozen(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class DISTS(nn.Module):
    """DISTS distance (Ding et al., TPAMI 2020): x, y [B, 3, H, W] in [0, 1] -> [B] (or its mean).

    0 for identical images, larger is more different. Per stage k (the raw image and the five VGG16
    stages with L2 pooling), per channel: S1 = (2 mx my + c) / (mx^2 + my^2 + c) and
    S2 = (2 sxy + c) / (sx^2 + sy^2 + c) over the spatial axes, c = 1e-6; distance =
    1 - sum(alpha * S1 + beta * S2) / (sum alpha + sum beta).

    Weights: ``vgg_weights`` (path to torchvision's VGG16 file, else the torch hub cache, else a
    download when ``download``) and ``dists_weights`` (path to DISTS ``weights.pt``, else the
    installed ``dists-pytorch`` package). ``pretrained=False`` uses random weights (smoke tests only).
    Raises ``MissingWeightsError`` (a FileNotFoundError) explaining how to provide missing files.
    """

    C = 1e-6

    def __init__(
        self,
        *,
        vgg_weights: PathArg = None,
        dists_weights: PathArg = None,
        pretrained: bool = True,
        download: bool = True,
    ):
        super().__init__()
        self.vgg = VGG16Features()
        channels = 3 + sum(STAGE_CHANNELS)
        if pretrained:
            alpha, beta = dists_alpha_beta(dists_weights)
            self.vgg.load_torchvision(vgg16_features_state_dict(vgg_weights, download=download))
        else:
            alpha, beta = torch.randn(2, channels).mul_(0.01).add_(0.1)
        self.register_buffer("alpha", alpha.clone())
        self.register_buffer("beta", beta.clone())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[None, :, None, None])
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[None, :, None, None])
        _frozen(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        _check_pair(x, y, "DISTS")
        b = x.shape[0]
        both = torch.cat([x, y]).to(self.mean.dtype)  # the module's dtype (autocast still applies)
        features = [both] + self.vgg.stages((both - self.mean) / self.std, l2_pool)
        with _no_autocast(x.device.type):
            total = self.alpha.sum() + self.beta.sum()
            alphas = torch.split(self.alpha / total, (3,) + STAGE_CHANNELS)
            betas = torch.split(self.beta / total, (3,) + STAGE_CHANNELS)
            similarity = 0.0
            for f, alpha, beta in zip(features, alphas, betas):
                f = f.float() if f.dtype in (torch.float16, torch.bfloat16) else f
                fx, fy = f[:b], f[b:]
                mx, my = fx.mean(dim=(2, 3)), fy.mean(dim=(2, 3))
                vx = ((fx - mx[..., None, None]) ** 2).mean(dim=(2, 3))
                vy = ((fy - my[..., None, None]) ** 2).mean(dim=(2, 3))
                cov = (fx * fy).mean(dim=(2, 3)) - mx * my
                s1 = (2 * mx * my + self.C) / (mx**2 + my**2 + self.C)
                s2 = (2 * cov + self.C) / (vx + vy + self.C)
                similarity = similarity + (s1 * alpha.to(s1.dtype) + s2 * beta.to(s2.dtype)).sum(dim=1)
        return _reduce(1.0 - similarity, reduction, "DISTS")


class LPIPS(nn.Module):
    """LPIPS-VGG distance (Zhang et al., CVPR 2018, v0.1): x, y [B, 3, H, W] in [0, 1] -> [B] (or its mean).

    Images are mapped to [-1, 1] and scaled by LPIPS's shift/scale; per VGG16 stage (max pooling)
    the features are unit-normalised over channels (f / (|f| + 1e-10)), the squared difference is
    weighted per channel by the linear layer, averaged over space, and the five stages are summed.

    Weights: ``vgg_weights`` / ``download`` as in ``DISTS``; ``lpips_weights`` (path to the lpips
    package's ``weights/v0.1/vgg.pth``, else the installed ``lpips`` package). ``pretrained=False``
    uses random VGG weights and uniform linear weights 1/C (smoke tests only).
    """

    def __init__(
        self,
        *,
        vgg_weights: PathArg = None,
        lpips_weights: PathArg = None,
        pretrained: bool = True,
        download: bool = True,
    ):
        super().__init__()
        self.vgg = VGG16Features()
        if pretrained:
            linear = lpips_linear_weights(lpips_weights)
            self.vgg.load_torchvision(vgg16_features_state_dict(vgg_weights, download=download))
        else:
            linear = [torch.full((c,), 1.0 / c) for c in STAGE_CHANNELS]
        for k, w in enumerate(linear):
            self.register_buffer(f"lin{k}", w.clone())
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE)[None, :, None, None])
        _frozen(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        _check_pair(x, y, "LPIPS")
        b = x.shape[0]
        both = torch.cat([x, y]).to(self.shift.dtype) * 2.0 - 1.0  # the module's dtype (autocast still applies)
        features = self.vgg.stages((both - self.shift) / self.scale)
        distance = 0.0
        with _no_autocast(x.device.type):
            for k, f in enumerate(features):
                f = f.float() if f.dtype in (torch.float16, torch.bfloat16) else f
                f = f / (torch.sqrt((f * f).sum(dim=1, keepdim=True)) + 1e-10)
                diff = (f[:b] - f[b:]) ** 2
                weight = getattr(self, f"lin{k}").to(diff.dtype)
                distance = distance + (diff * weight[None, :, None, None]).sum(dim=1).mean(dim=(1, 2))
        return _reduce(distance, reduction, "LPIPS")
