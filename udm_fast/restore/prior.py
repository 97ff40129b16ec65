"""Image priors for restoration by inversion: the protocol, an adapter for StyleGAN-like generators and
the embedded deep image prior.

A prior is a differentiable image generator whose latent lives in one of a few nested spaces,
visited coarse to fine (for StyleGAN: W, W+, W++). The inverter (``udm_fast.restore.invert``) asks it
to ``initialise`` for a degraded image, to ``enter`` each space in order, for the tensors to optimise
in the current space (``variables``) and for the image (``forward``). ``StyleGANPrior`` implements
these for any mapping and synthesis network pair; other generators implement the members themselves.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class Prior(nn.Module):
    """Protocol of an image prior for ``invert`` (``StyleGANPrior`` implements it for mapping and
    synthesis networks).

    ``spaces``: the names of its latent spaces, coarse to fine (e.g. ``("W", "W+", "W++")``).
    ``initialise(y, generator)``: sets the starting latent in ``spaces[0]`` for the degraded image
    y [B, 3, H, W] (its size fixes the output size; e.g. StyleGAN starts at the mean of ``mapping``).
    ``enter(space)``: re-expresses the current latent in ``space`` (a later one) without changing the image
    (e.g. w -> w+ copies w to every layer).
    ``variables()``: the leaf tensors (requires_grad) to optimise in the current space.
    ``latent()``: the current latent as a dict of detached tensors (what ``invert`` returns as the code).
    ``forward()``: the image [B, 3, H, W] in [0, 1] for the current latent.
    """

    spaces: tuple = ()

    def initialise(self, y: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
        raise NotImplementedError

    def enter(self, space: str) -> None:
        raise NotImplementedError

    def variables(self) -> list:
        raise NotImplementedError

    def latent(self) -> dict:
        raise NotImplementedError


class StyleGANPrior(Prior):
    """A StyleGAN-like generator as prior, from its two networks:

    ``mapping``: z [N, z_dim] -> w [N, D]; ``synthesis``: styles [B, num_layers * styles_per_layer, D]
    (one w per style input, layer by layer) -> image [B, 3, H, W] in [0, 1], called as
    ``synthesis(styles, noise)`` when ``noise_shapes`` is given (``noise_shapes(B)``: the shapes of its
    per-layer noise inputs, a list of tensors) and as ``synthesis(styles)`` otherwise. A generator with
    images in [-1, 1] is wrapped to map them to [0, 1] first.

    Spaces, coarse to fine (``latent()`` returns the current one as ``{space: w}``, plus ``"noise"``):
    W: one w [B, D] for every style input; W+: one per layer [B, num_layers, D], copied to its
    ``styles_per_layer`` inputs; W++: one per style input [B, num_layers, styles_per_layer, D], with
    the noise inputs optimised too. ``enter`` copies the latent into the finer space, so the image
    does not change. The start (``initialise``, the V phase's): ``start="mean"`` the mean of
    ``mapping`` over ``mean_samples`` draws of z, ``"z"`` mapping(z) of one draw per image; the noise
    inputs N(0, I), fixed until W++. ``initialise`` moves both networks to y's device and dtype; their
    weights are never optimised (``invert`` turns their requires_grad off during the phases).
    """

    spaces = ("W", "W+", "W++")

    def __init__(
        self,
        mapping: nn.Module,
        synthesis: nn.Module,
        num_layers: int,
        *,
        z_dim: int,
        styles_per_layer: int = 1,
        noise_shapes: Optional[Callable[[int], Sequence[Sequence[int]]]] = None,
        start: str = "mean",
        mean_samples: int = 256,
    ):
        super().__init__()
        if start not in ("mean", "z"):
            raise ValueError(f"StyleGANPrior: start must be 'mean' or 'z', got {start!r}")
        if num_layers < 1 or styles_per_layer < 1 or z_dim < 1 or mean_samples < 1:
            raise ValueError("StyleGANPrior: num_layers, styles_per_layer, z_dim and mean_samples must be >= 1")
        self.mapping, self.synthesis = mapping, synthesis
        self.num_layers, self.styles_per_layer, self.z_dim = num_layers, styles_per_layer, z_dim
        self.noise_shapes, self.start, self.mean_samples = noise_shapes, start, mean_samples
        self.w: Optional[torch.Tensor] = None
        self.noise: list = []
        self.space = "W"

    def initialise(self, y: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
        self.to(device=y.device, dtype=y.dtype)
        b = y.shape[0]
        with torch.no_grad():
            if self.start == "mean":
                z = torch.randn(self.mean_samples, self.z_dim, generator=generator, dtype=y.dtype).to(y.device)
                w = self.mapping(z).mean(0, keepdim=True).expand(b, -1)
            else:
                w = self.mapping(torch.randn(b, self.z_dim, generator=generator, dtype=y.dtype).to(y.device))
        self.w = w.clone().requires_grad_(True)
        shapes = self.noise_shapes(b) if self.noise_shapes is not None else []
        self.noise = [torch.randn(tuple(s), generator=generator, dtype=y.dtype).to(y.device) for s in shapes]
        self.space = "W"

    def enter(self, space: str) -> None:
        self._check_initialised()
        if space not in self.spaces or self.spaces.index(space) < self.spaces.index(self.space):
            raise ValueError(f"StyleGANPrior: cannot enter {space!r} from {self.space!r} (spaces go W, W+, W++)")
        w = self._per_style()
        w = {"W": w[:, 0, 0], "W+": w[:, :, 0], "W++": w}[space]
        self.w = w.detach().clone().requires_grad_(True)
        self.noise = [n.detach().clone().requires_grad_(space == "W++") for n in self.noise]
        self.space = space

    def variables(self) -> list:
        self._check_initialised()
        return [self.w, *(self.noise if self.space == "W++" else [])]

    def latent(self) -> dict:
        self._check_initialised()
        return {self.space: self.w.detach().clone(), "noise": [n.detach().clone() for n in self.noise]}

    def forward(self) -> torch.Tensor:
        self._check_initialised()
        styles = self._per_style().flatten(1, 2)
        return self.synthesis(styles, self.noise) if self.noise_shapes is not None else self.synthesis(styles)

    def _per_style(self) -> torch.Tensor:
        """The latent as one w per style input [B, num_layers, styles_per_layer, D] (copies in W, W+)."""
        if self.space == "W":
            return self.w[:, None, None].expand(-1, self.num_layers, self.styles_per_layer, -1)
        if self.space == "W+":
            return self.w[:, :, None].expand(-1, -1, self.styles_per_layer, -1)
        return self.w

    def _check_initialised(self) -> None:
        if self.w is None:
            raise RuntimeError("StyleGANPrior: call initialise(y) first")


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)
    )


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2), _conv(c_out, c_out)
    )


class DeepImagePrior(Prior):
    """Deep image prior (Ulyanov et al., 2018): a randomly initialised CNN whose weights are the latent.

    The network maps a fixed random input z [B, input_channels, H', W'] (H', W' = H, W padded to
    multiples of 8) through an encoder of three stride-2 levels and a decoder with bilinear upsampling
    and skip connections to a sigmoid image, cropped to H x W. Every convolution is followed by
    BatchNorm (batch statistics, also of a single image) and LeakyReLU, which keeps the signal from
    fading through the layers at initialisation. It needs no pretrained weights: its
    architecture prefers natural images, so fitting a degraded image recovers structure before noise.
    One space, ``"theta"`` (the weights); ``initialise`` draws z and the weights from ``generator``.
    """

    spaces = ("theta",)

    def __init__(self, width: int = 32, input_channels: int = 16):
        super().__init__()
        self.width, self.input_channels = width, input_channels
        self.net: Optional[nn.ModuleDict] = None
        self.register_buffer("z", torch.zeros(0), persistent=False)
        self.size = (0, 0)

    def _build(self) -> nn.ModuleDict:
        c = self.width
        return nn.ModuleDict(
            {
                "stem": _conv(self.input_channels, c // 2),
                "down1": _down(c // 2, c),
                "down2": _down(c, c),
                "down3": _down(c, c),
                "up2": _conv(2 * c, c),
                "up1": _conv(2 * c, c),
                "up0": _conv(c + c // 2, c // 2),
                "rgb": nn.Conv2d(c // 2, 3, 1),
            }
        )

    def initialise(self, y: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
        if y.dim() != 4 or min(y.shape[-2:]) < 8:
            raise ValueError(f"DeepImagePrior: expected images [B, 3, H, W] of at least 8x8, got {list(y.shape)}")
        b, _, h, w = y.shape
        self.size = (h, w)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            self.net = self._build().to(device=y.device, dtype=y.dtype)
        shape = (b, self.input_channels, h + (-h) % 8, w + (-w) % 8)
        self.z = 0.1 * torch.rand(shape, generator=generator, dtype=y.dtype).to(y.device)

    def enter(self, space: str) -> None:
        if space != "theta":
            raise ValueError(f"DeepImagePrior has one latent space, 'theta', not {space!r}")

    def variables(self) -> list:
        self._check_initialised()
        return list(self.net.parameters())

    def latent(self) -> dict:
        self._check_initialised()
        return {"theta": {k: v.detach().clone() for k, v in self.net.state_dict().items()}, "z": self.z.clone()}

    def forward(self) -> torch.Tensor:
        self._check_initialised()
        n = self.net
        s0 = n["stem"](self.z)
        s1 = n["down1"](s0)
        s2 = n["down2"](s1)
        s3 = n["down3"](s2)
        u = n["up2"](torch.cat([_up_to(s3, s2), s2], 1))
        u = n["up1"](torch.cat([_up_to(u, s1), s1], 1))
        u = n["up0"](torch.cat([_up_to(u, s0), s0], 1))
        h, w = self.size
        return torch.sigmoid(n["rgb"](u))[..., :h, :w]

    def _check_initialised(self) -> None:
        if self.net is None:
            raise RuntimeError("DeepImagePrior: call initialise(y) first")


def _up_to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=False)
