"""Synthetic degradations for training pairs (docs/architecture.md §11).

Each image gets each of four degradations -- Gaussian noise, Gaussian blur, motion blur and a
contrast/exposure change -- with its own probability (default 1/2 each, so the 16
present/absent combinations of the report are equally likely), applied in a random order, and
then JPEG compression (always, by default). Every applied degradation can be made spatially
inhomogeneous through a smooth random mask ``m`` in [0, 1]:

* ``strength``: the degradation fades across the image, ``y = x + m * (op(x) - x)``;
* ``region``:   the same blend with a soft-edged elliptical mask (a degraded region only);
* ``kernel``:   blurs only: the kernel itself changes across the image, the per-pixel kernel is
  ``m * k_in + (1 - m) * k_out`` (computed exactly as ``m * (k_in * x) + (1 - m) * (k_out * x)``).

Images are float tensors [B, 3, H, W] in [0, 1] on any device. All ops but JPEG are batched torch
ops on the input's device; JPEG runs libjpeg's arithmetic batched on a GPU (``udm_fast.synthesis.jpeg``) and
Pillow's libjpeg on the CPU, one image at a time (the same pixels either way).
Results are deterministic for a seed. The parameter ranges are ours (the paper publishes none);
``DegradeConfig`` documents and justifies them.

Conventions: blurs are correlations with reflect padding (torch ``reflect``, scipy ``mirror``);
the kernels built here are point-symmetric, so correlation equals convolution.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..utils.checks import check_image_batch
from ..utils.dataclass_dict import checked_fields
from . import jpeg as jpeg_codec

OPS = ("noise", "gaussian_blur", "motion_blur", "contrast")
MASK_KINDS = ("ramp", "ellipse", "field")
BLUR_OPS = ("gaussian_blur", "motion_blur")
JPEG_IMPLS = ("auto", "pillow", "tensor")  # see jpeg()
FIELD_GRID = 4  # the "field" mask is a bicubic upsampling of a FIELD_GRID x FIELD_GRID grid

Scalar = Union[float, int, Sequence[float], torch.Tensor]
GeneratorArg = Union[None, int, torch.Generator]

# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DegradeConfig:
    """Probabilities and parameter ranges of ``degrade`` (all ranges inclusive, ``(low, high)``).

    The reference data set was made by code that is not public (docs/architecture.md §11), so these are our
    choices, for 128 x 128 training patches taken from photographs:

    * ``p_noise`` = ``p_gaussian_blur`` = ``p_motion_blur`` = ``p_contrast`` = 0.5: each of the 16
      combinations of the report is then equally likely (1/16), including the JPEG-only one.
    * ``noise_sigma`` = (1/255, 25/255), drawn log-uniformly: 1/255 is just below visibility,
      25/255 is heavy high-ISO sensor noise (the usual upper benchmark level for colour images);
      log-uniform because noise visibility is roughly logarithmic in sigma.
    * ``blur_sigma`` = (0.5, 3.0) pixels: below 0.5 a Gaussian is almost a delta; at 3.0 a 128-pixel
      patch keeps only coarse structure (radius ceil(3 sigma) <= 9).
    * ``motion_length`` = (3, 21) pixels (a straight camera-shake trajectory, antialiased), angle
      uniform in [0, pi) (a segment is symmetric under a half turn): 3 pixels is barely visible
      smear, 21 is severe shake at this patch size.
    * ``contrast`` = (0.5, 1.5): the factor scaling deviations from the mean luminance (0.5 is a
      washed-out image, 1.5 a strongly boosted one).
    * ``exposure_ev`` = (-1, 1) stops, applied as the gain 2**(ev / 2.2) on gamma-encoded values
      (a one-stop under/over-exposure, the typical auto-exposure miss).
    * ``jpeg_quality`` = (30, 95), uniform integers (libjpeg scale): 30 shows strong blocking and
      ringing, 95 is visually lossless; below 30 the blocks mask every other degradation.
    * ``p_jpeg`` = 1.0: the report applies JPEG to every image. Lower it only for experiments.
    * ``p_inhomogeneous`` = 0.2: the share of applied degradations made spatially varying. The
      reference data are homogeneous; a minority of varying ones teaches the local code e_l.
    * ``p_clean`` = 0.0: the share of images that skip every op before the JPEG step (so they come out
      clean, or JPEG-compressed only at ``p_jpeg``), on top of the images that draw no op anyway. Raising it
      teaches a model to leave nearly clean images alone without lowering how often each heavy combination
      occurs relative to the others.
    * ``jpeg_impl`` = "auto": how ``jpeg`` runs (``pillow``, ``tensor`` or ``auto``; same pixels).
    """

    p_noise: float = 0.5
    p_gaussian_blur: float = 0.5
    p_motion_blur: float = 0.5
    p_contrast: float = 0.5
    noise_sigma: tuple = (1.0 / 255.0, 25.0 / 255.0)
    blur_sigma: tuple = (0.5, 3.0)
    motion_length: tuple = (3.0, 21.0)
    contrast: tuple = (0.5, 1.5)
    exposure_ev: tuple = (-1.0, 1.0)
    jpeg_quality: tuple = (30, 95)
    p_jpeg: float = 1.0
    p_inhomogeneous: float = 0.2
    p_clean: float = 0.0
    jpeg_impl: str = "auto"

    def __post_init__(self):
        for name in (
            "p_noise",
            "p_gaussian_blur",
            "p_motion_blur",
            "p_contrast",
            "p_jpeg",
            "p_inhomogeneous",
            "p_clean",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"DegradeConfig.{name} must be a probability in [0, 1], got {value!r}")
        _check_range("noise_sigma", self.noise_sigma, minimum=0.0, positive=True)
        _check_range("blur_sigma", self.blur_sigma, minimum=0.0)
        _check_range("motion_length", self.motion_length, minimum=0.0)
        _check_range("contrast", self.contrast, minimum=0.0)
        _check_range("exposure_ev", self.exposure_ev)
        _check_range("jpeg_quality", self.jpeg_quality, minimum=1, maximum=100, integer=True)
        if self.jpeg_impl not in JPEG_IMPLS:
            raise ValueError(f"DegradeConfig.jpeg_impl must be one of {', '.join(JPEG_IMPLS)}, got {self.jpeg_impl!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "DegradeConfig":
        """Builds a config from a mapping (e.g. YAML); an unknown key is an error."""
        values = checked_fields(cls, values)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _check_range(name, value, minimum=None, maximum=None, positive=False, integer=False):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"DegradeConfig.{name} must be a (low, high) pair, got {value!r}")
    kinds = (int,) if integer else (int, float)
    if not all(isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ValueError(
            f"DegradeConfig.{name} must hold two finite {'integers' if integer else 'numbers'}, got {value!r}"
        )
    low, high = value
    if low > high:
        raise ValueError(f"DegradeConfig.{name}: low {low} is above high {high}")
    if minimum is not None and (low < minimum or (positive and low <= minimum)):
        raise ValueError(f"DegradeConfig.{name} must be {'>' if positive else '>='} {minimum}, got {value!r}")
    if maximum is not None and high > maximum:
        raise ValueError(f"DegradeConfig.{name} must be <= {maximum}, got {value!r}")


# ----------------------------------------------------------------------------- input checks


def _check_images(x, where: str) -> None:
    check_image_batch(x, f"{where}: x")
    if x.shape[0] and 0 in x.shape[2:]:
        raise ValueError(f"{where}: images of {x.shape[-2]}x{x.shape[-1]} have no pixels")
    if x.numel():
        low, high = (float(v) for v in torch.aminmax(x.detach()))
        if not (low >= 0.0 and high <= 1.0):  # also false for NaN
            raise ValueError(
                f"{where}: image values must lie in [0, 1] (NaN is not allowed); got min {low:.4g}, max {high:.4g}"
            )


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_image(value: Scalar, batch: int, name: str, minimum: Optional[float] = None) -> torch.Tensor:
    """A scalar or a length-B sequence/tensor -> float64 CPU tensor [B] (validated)."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be a number, got a bool")
    t = torch.as_tensor(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=torch.float64)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name} must be a number or hold one value per image ({batch}), got shape {list(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    if minimum is not None and bool((t < minimum).any()):
        raise ValueError(f"{name} must be >= {minimum}, got {t.tolist()}")
    return t.contiguous()


def _check_mask(mask: Optional[torch.Tensor], x: torch.Tensor, where: str) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    if (
        not isinstance(mask, torch.Tensor)
        or mask.dim() != 4
        or mask.shape[0] != x.shape[0]
        or mask.shape[1] not in (1, 3)
        or mask.shape[2:] != x.shape[2:]
    ):
        raise ValueError(
            f"{where}: mask must be [B, 1 or 3, H, W] matching the images {list(x.shape)}, "
            f"got {list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}"
        )
    if not bool(((mask >= 0) & (mask <= 1)).all()):
        raise ValueError(f"{where}: mask values must lie in [0, 1]")
    return mask.to(device=x.device, dtype=_work_dtype(x))


def _blend(base: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """base + mask * (target - base); the target itself where there is no mask."""
    return target if mask is None else base + mask * (target - base)


# ----------------------------------------------------------------------------- kernels and filtering


def gaussian_radius(sigma: float) -> int:
    """Support radius of a blur of this sigma: ceil(3 sigma)."""
    return int(math.ceil(3.0 * sigma))


def gaussian_kernel1d(
    sigma: Scalar, radius: Optional[int] = None, *, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Sampled, sum-normalised 1-D Gaussians: sigma [B] (pixels) -> [B, 2 radius + 1].

    Each kernel is truncated at its own ``gaussian_radius(sigma)`` and zero-padded to ``radius``
    (default: the largest one), so a kernel does not depend on the other images. sigma 0 is a delta.
    """
    sigma = _per_image(sigma, torch.as_tensor(sigma).numel(), "sigma", minimum=0.0)
    needed = gaussian_radius(float(sigma.max())) if sigma.numel() else 0
    radius = needed if radius is None else radius
    if radius < needed:
        raise ValueError(
            f"gaussian_kernel1d: radius {radius} is too small for sigma {float(sigma.max())} (needs {needed})"
        )
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    s = sigma[:, None]
    support = offsets.abs() <= torch.ceil(3.0 * s)
    weights = (
        torch.where(
            s > 0,
            torch.exp(-(offsets**2) / (2.0 * s.clamp_min(1e-12) ** 2)),
            (offsets == 0).to(torch.float64).expand(len(sigma), -1),
        )
        * support
    )
    weights = weights / weights.sum(dim=1, keepdim=True)
    return weights.to(device=device, dtype=dtype)


def gaussian_kernel(
    sigma: Scalar, radius: Optional[int] = None, *, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Isotropic 2-D Gaussian kernels (outer products of ``gaussian_kernel1d``): [B, 2r + 1, 2r + 1]."""
    k = gaussian_kernel1d(sigma, radius, device=device, dtype=dtype)
    return k[:, :, None] * k[:, None, :]


def motion_radius(length: float) -> int:
    """Kernel radius that holds a segment of this length with its one-pixel antialiasing tent."""
    return int(math.ceil(length / 2.0)) + 1


def motion_kernel(
    length: Scalar, angle: Scalar, radius: Optional[int] = None, *, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Antialiased straight-line blur kernels: length, angle [B] -> [B, 2r + 1, 2r + 1], each summing to 1.

    The kernel is a centred segment of ``length`` pixels at ``angle`` radians counter-clockwise from
    the horizontal as displayed (rows grow downwards, so angle pi/2 is vertical and pi/4 runs from the
    bottom-left to the top-right). It is rasterised by splatting 16 samples per pixel of length
    (midpoint rule) with a bilinear tent, so row/column offsets are
    ``(-t sin(angle), t cos(angle))`` for t uniform in [-length/2, length/2]. length 0 is a delta.
    radius defaults to ``motion_radius(max length)``.
    """
    length = _per_image(length, torch.as_tensor(length).numel(), "length", minimum=0.0)
    angle = _per_image(angle, len(length), "angle")
    max_length = float(length.max()) if length.numel() else 0.0
    if radius is None:
        radius = motion_radius(max_length)
    elif radius < motion_radius(max_length):
        raise ValueError(
            f"motion_kernel: radius {radius} is too small for length {max_length} (needs {motion_radius(max_length)})"
        )
    # 16 samples per pixel of each image's own length (so a kernel does not depend on the other images)
    samples = 16 * torch.ceil(length) + 1
    position = torch.arange(int(samples.max()) if samples.numel() else 1, dtype=torch.float64)[None, :]
    t = ((position + 0.5) / samples[:, None] - 0.5) * length[:, None]  # [B, S]
    valid = (position < samples[:, None]).to(torch.float64)
    rows = -t * torch.sin(angle)[:, None]
    cols = t * torch.cos(angle)[:, None]
    grid = torch.arange(-radius, radius + 1, dtype=torch.float64)
    tent_rows = (1.0 - (grid[None, None, :] - rows[..., None]).abs()).clamp_min(0.0) * valid[..., None]  # [B, S, k]
    tent_cols = (1.0 - (grid[None, None, :] - cols[..., None]).abs()).clamp_min(0.0)
    kernel = torch.einsum("bsi,bsj->bij", tent_rows, tent_cols)
    kernel = kernel / kernel.sum(dim=(1, 2), keepdim=True)
    return kernel.to(device=device, dtype=dtype)


def _reflect_pad(x: torch.Tensor, radius: int, where: str) -> torch.Tensor:
    if radius >= min(x.shape[-2:]):
        raise ValueError(
            f"{where}: images of {x.shape[-2]}x{x.shape[-1]} are too small for a kernel of radius "
            f"{radius} (reflect padding needs H and W > {radius})"
        )
    return F.pad(x, (radius, radius, radius, radius), mode="reflect") if radius else x


def filter2d(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Per-image correlation with reflect padding: x [B, C, H, W], kernels [B, k, k] (k odd) -> [B, C, H, W].

    Every channel of image b is filtered with kernels[b]. Computed in float32 (float64 for float64 x).
    """
    if (
        kernels.dim() != 3
        or kernels.shape[0] != x.shape[0]
        or kernels.shape[1] != kernels.shape[2]
        or kernels.shape[1] % 2 == 0
    ):
        raise ValueError(
            f"filter2d: kernels must be [B, k, k] with k odd and B = {x.shape[0]}, got {list(kernels.shape)}"
        )
    b, c, h, w = x.shape
    dtype = _work_dtype(x)
    radius = kernels.shape[1] // 2
    padded = _reflect_pad(x.to(dtype), radius, "filter2d").reshape(1, b * c, h + 2 * radius, w + 2 * radius)
    weight = kernels.to(device=x.device, dtype=dtype).repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(padded, weight, groups=b * c).reshape(b, c, h, w)


def _filter_separable(x: torch.Tensor, kernels1d: torch.Tensor) -> torch.Tensor:
    """Correlation with the outer products of kernels1d [B, k] (same result as ``filter2d``, cheaper)."""
    b, c, h, w = x.shape
    dtype = _work_dtype(x)
    radius = kernels1d.shape[1] // 2
    padded = _reflect_pad(x.to(dtype), radius, "gaussian_blur").reshape(1, b * c, h + 2 * radius, w + 2 * radius)
    weight = kernels1d.to(device=x.device, dtype=dtype).repeat_interleave(c, dim=0)[:, None]
    out = F.conv2d(padded, weight[:, :, None, :], groups=b * c)
    out = F.conv2d(out, weight[:, :, :, None], groups=b * c)
    return out.reshape(b, c, h, w)


# ----------------------------------------------------------------------------- per-op functions


def gaussian_noise(
    x: torch.Tensor, sigma: Scalar, *, mask: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """clip(x + sigma * mask * n, 0, 1) with n ~ N(0, 1) i.i.d. per pixel and channel.

    x [B, 3, H, W] in [0, 1]; sigma: number or [B] (in [0, 1] units, e.g. 10/255); mask [B, 1|3, H, W]
    in [0, 1] scales the noise per pixel (None = 1). The noise is drawn on the generator's device.
    """
    _check_images(x, "gaussian_noise")
    sigma = _per_image(sigma, x.shape[0], "gaussian_noise: sigma", minimum=0.0)
    mask = _check_mask(mask, x, "gaussian_noise")
    dtype = _work_dtype(x)
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=dtype).to(x.device)
    noise = noise * sigma.to(device=x.device, dtype=dtype)[:, None, None, None]
    if mask is not None:
        noise = noise * mask
    return (x.to(dtype) + noise).clamp_(0.0, 1.0).to(x.dtype)


def _blur(x, kernel_in, kernel_out, mask, apply):
    out_in = apply(x, kernel_in)
    base = x.to(out_in.dtype) if kernel_out is None else apply(x, kernel_out)
    return _blend(base, out_in, mask).clamp_(0.0, 1.0).to(x.dtype)


def gaussian_blur(
    x: torch.Tensor, sigma: Scalar, *, mask: Optional[torch.Tensor] = None, sigma_outside: Optional[Scalar] = None
) -> torch.Tensor:
    """Isotropic Gaussian blur (defocus), sigma in pixels: number or [B]; kernel radius ``gaussian_radius``.

    With a mask [B, 1|3, H, W] the per-pixel kernel is ``mask * k(sigma) + (1 - mask) * k(sigma_outside)``,
    where sigma_outside=None means no blur (a delta kernel) outside the mask.
    """
    _check_images(x, "gaussian_blur")
    b = x.shape[0]
    sigma = _per_image(sigma, b, "gaussian_blur: sigma", minimum=0.0)
    mask = _check_mask(mask, x, "gaussian_blur")
    if sigma_outside is not None:
        sigma_outside = _per_image(sigma_outside, b, "gaussian_blur: sigma_outside", minimum=0.0)
        if mask is None:
            raise ValueError("gaussian_blur: sigma_outside needs a mask")
    radius = gaussian_radius(
        max(float(sigma.max()) if b else 0.0, float(sigma_outside.max()) if sigma_outside is not None and b else 0.0)
    )
    dtype = _work_dtype(x)
    k_in = gaussian_kernel1d(sigma, radius, device=x.device, dtype=dtype)
    k_out = None if sigma_outside is None else gaussian_kernel1d(sigma_outside, radius, device=x.device, dtype=dtype)
    return _blur(x, k_in, k_out, mask, _filter_separable)


def motion_blur(
    x: torch.Tensor,
    length: Scalar,
    angle: Scalar,
    *,
    mask: Optional[torch.Tensor] = None,
    length_outside: Optional[Scalar] = None,
    angle_outside: Optional[Scalar] = None,
) -> torch.Tensor:
    """Straight-line motion blur (camera shake), see ``motion_kernel`` for length (pixels) and angle (radians).

    With a mask the per-pixel kernel is ``mask * k(length, angle) + (1 - mask) * k(length_outside,
    angle_outside)``; length_outside=None means no blur outside the mask.
    """
    _check_images(x, "motion_blur")
    b = x.shape[0]
    length = _per_image(length, b, "motion_blur: length", minimum=0.0)
    angle = _per_image(angle, b, "motion_blur: angle")
    mask = _check_mask(mask, x, "motion_blur")
    if (length_outside is None) != (angle_outside is None):
        raise ValueError("motion_blur: give both length_outside and angle_outside, or neither")
    if length_outside is not None:
        if mask is None:
            raise ValueError("motion_blur: length_outside/angle_outside need a mask")
        length_outside = _per_image(length_outside, b, "motion_blur: length_outside", minimum=0.0)
        angle_outside = _per_image(angle_outside, b, "motion_blur: angle_outside")
    longest = max(
        float(length.max()) if b else 0.0, float(length_outside.max()) if length_outside is not None and b else 0.0
    )
    radius = motion_radius(longest)
    dtype = _work_dtype(x)
    k_in = motion_kernel(length, angle, radius, device=x.device, dtype=dtype)
    k_out = (
        None
        if length_outside is None
        else motion_kernel(length_outside, angle_outside, radius, device=x.device, dtype=dtype)
    )
    return _blur(x, k_in, k_out, mask, filter2d)


LUMA = (0.299, 0.587, 0.114)


def adjust_contrast(
    x: torch.Tensor, contrast: Scalar, exposure_ev: Scalar = 0.0, *, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Contrast and exposure change: clip(2**(ev / 2.2) * (mu + contrast * (x - mu)), 0, 1).

    mu is the per-image mean luminance (Rec. 601 weights 0.299, 0.587, 0.114) over all pixels;
    contrast (>= 0) and exposure_ev (stops) are numbers or [B]. With a mask the result is
    ``x + mask * (changed - x)``.
    """
    _check_images(x, "adjust_contrast")
    b = x.shape[0]
    dtype = _work_dtype(x)
    contrast = _per_image(contrast, b, "adjust_contrast: contrast", minimum=0.0).to(x.device, dtype)
    gain = torch.exp2(_per_image(exposure_ev, b, "adjust_contrast: exposure_ev") / 2.2).to(x.device, dtype)
    mask = _check_mask(mask, x, "adjust_contrast")
    xf = x.to(dtype)
    luma = torch.tensor(LUMA, device=x.device, dtype=dtype)
    mean = (xf * luma[None, :, None, None]).sum(dim=1).mean(dim=(1, 2))[:, None, None, None]
    changed = (gain[:, None, None, None] * (mean + contrast[:, None, None, None] * (xf - mean))).clamp_(0.0, 1.0)
    return _blend(xf, changed, mask).clamp_(0.0, 1.0).to(x.dtype)


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded if decoded.mode == "RGB" else decoded.convert("RGB"))


def jpeg(x: torch.Tensor, quality: Union[int, Sequence[int], torch.Tensor], impl: str = "auto") -> torch.Tensor:
    """Real JPEG round trip: libjpeg's baseline codec at a libjpeg quality, 4:2:0 chroma (Pillow's default).

    x [B, 3, H, W] in [0, 1] is rounded to 8 bits, each image encoded at its quality (1..100, number
    or [B]) and decoded; the result is returned as x.dtype on x.device (values k/255). Not
    differentiable. ``impl``: ``pillow`` encodes and decodes with Pillow's libjpeg on the CPU, one image
    after the other; ``tensor`` computes the same integer arithmetic (``udm_fast.synthesis.jpeg``, bit-identical
    to Pillow's libjpeg-turbo in the tests) batched on x's device; ``auto`` is ``tensor`` on a GPU and
    ``pillow`` on the CPU, where it is the faster one.
    """
    _check_images(x, "jpeg")
    if impl not in JPEG_IMPLS:
        raise ValueError(f"jpeg: impl must be one of {', '.join(JPEG_IMPLS)}, got {impl!r}")
    q = _per_image(quality, x.shape[0], "jpeg: quality", minimum=1)
    if bool((q > 100).any()) or bool((q != q.round()).any()):
        raise ValueError(f"jpeg: quality must be integers in 1..100, got {q.tolist()}")
    pixels = (x.detach().to(_work_dtype(x)) * 255.0).round_().to(torch.uint8)
    if impl == "tensor" or (impl == "auto" and x.device.type != "cpu"):
        return jpeg_codec.round_trip(pixels, q.to(torch.int64)).to(x.dtype).div_(255.0)
    pixels = pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    out = np.stack([_jpeg_round_trip(image, int(qi)) for image, qi in zip(pixels, q)]) if len(pixels) else pixels
    return torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).to(x.dtype).div_(255.0)


# ----------------------------------------------------------------------------- smooth random masks


def _smoothstep(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def render_masks(
    descriptions: Sequence[dict], height: int, width: int, *, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Renders mask descriptions (as found in ``degrade``'s params) to [N, 1, H, W] in [0, 1].

    Coordinates u (columns) and v (rows) run over pixel centres in (-1, 1), so a mask looks the same
    at any resolution. Kinds:

    * ``{"kind": "ramp", "angle", "offset", "width"}``: smoothstep(0.5 + (u cos a + v sin a - offset) / width);
    * ``{"kind": "ellipse", "center": [cu, cv], "radii": [ru, rv], "angle", "softness"}``:
      1 - smoothstep((r - 1) / softness + 0.5) with r the rotated, scaled elliptic radius;
    * ``{"kind": "field", "grid": [[...]]}``: bicubic upsampling (corners aligned) of a small grid of
      values in [0, 1], clipped to [0, 1].
    """
    u = ((torch.arange(width, dtype=torch.float64) * 2 + 1) / width - 1)[None, :]
    v = ((torch.arange(height, dtype=torch.float64) * 2 + 1) / height - 1)[:, None]
    masks = []
    for d in descriptions:
        kind = d.get("kind")
        if kind == "ramp":
            a = d["angle"]
            m = _smoothstep(0.5 + (u * math.cos(a) + v * math.sin(a) - d["offset"]) / d["width"])
        elif kind == "ellipse":
            a = d["angle"]
            du, dv = u - d["center"][0], v - d["center"][1]
            ru = (du * math.cos(a) + dv * math.sin(a)) / d["radii"][0]
            rv = (-du * math.sin(a) + dv * math.cos(a)) / d["radii"][1]
            m = 1.0 - _smoothstep((torch.sqrt(ru**2 + rv**2) - 1.0) / d["softness"] + 0.5)
        elif kind == "field":
            grid = torch.tensor(d["grid"], dtype=torch.float64)[None, None]
            m = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=True)[0, 0].clamp(0.0, 1.0)
        else:
            raise ValueError(f"render_masks: unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
        masks.append(m.expand(height, width))
    if not masks:
        return torch.empty(0, 1, height, width, device=device, dtype=dtype)
    return torch.stack(masks)[:, None].to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- the pipeline


class _Uniforms:
    """Consumes one image's row of pre-drawn U(0, 1) numbers, so each image's parameters depend only
    on its position in the batch, not on what the other images drew."""

    def __init__(self, row: Sequence[float]):
        self._row = row
        self._next = 0

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        value = self._row[self._next]
        self._next += 1
        return low + (high - low) * value

    def log_uniform(self, low: float, high: float) -> float:
        return math.exp(self.uniform(math.log(low), math.log(high)))

    def integer(self, low: int, high: int) -> int:
        return min(high, low + int(self.uniform() * (high - low + 1)))

    def choice(self, options: Sequence):
        return options[self.integer(0, len(options) - 1)]

    def bernoulli(self, p: float) -> bool:
        return self.uniform() < p


_DRAWS_PER_IMAGE = 160  # more than one image can consume (4 ops with kernel-changing field masks)


def _random_mask(r: _Uniforms, kind: str) -> dict:
    if kind == "ramp":
        return {
            "kind": "ramp",
            "angle": r.uniform(0.0, 2.0 * math.pi),
            "offset": r.uniform(-0.5, 0.5),
            "width": r.uniform(0.5, 2.0),
        }
    if kind == "ellipse":
        return {
            "kind": "ellipse",
            "center": [r.uniform(-0.4, 0.4), r.uniform(-0.4, 0.4)],
            "radii": [r.uniform(0.3, 0.8), r.uniform(0.3, 0.8)],
            "angle": r.uniform(0.0, math.pi),
            "softness": r.uniform(0.3, 0.8),
        }
    return {"kind": "field", "grid": [[r.uniform() for _ in range(FIELD_GRID)] for _ in range(FIELD_GRID)]}


def _random_params(r: _Uniforms, name: str, cfg: DegradeConfig) -> dict:
    if name == "noise":
        return {"sigma": r.log_uniform(*cfg.noise_sigma)}
    if name == "gaussian_blur":
        return {"sigma": r.uniform(*cfg.blur_sigma)}
    if name == "motion_blur":
        return {"length": r.uniform(*cfg.motion_length), "angle": r.uniform(0.0, math.pi)}
    return {"contrast": r.uniform(*cfg.contrast), "exposure_ev": r.uniform(*cfg.exposure_ev)}


def _random_op(r: _Uniforms, name: str, cfg: DegradeConfig) -> dict:
    op = {"op": name, **_random_params(r, name, cfg)}
    if r.bernoulli(cfg.p_inhomogeneous):
        mode = r.choice(("strength", "region", "kernel") if name in BLUR_OPS else ("strength", "region"))
        kind = "ellipse" if mode == "region" else r.choice(("ramp", "field"))
        variation = {"mode": mode, "mask": _random_mask(r, kind)}
        if mode == "kernel":
            variation.update({k + "_outside": v for k, v in _random_params(r, name, cfg).items()})
        op["inhomogeneous"] = variation
    return op


def _sample_plan(batch: int, cfg: DegradeConfig, generator: torch.Generator) -> list:
    draws = (
        torch.rand(batch, _DRAWS_PER_IMAGE, generator=generator, dtype=torch.float64, device=generator.device)
        .cpu()
        .tolist()
    )
    probabilities = (cfg.p_noise, cfg.p_gaussian_blur, cfg.p_motion_blur, cfg.p_contrast)
    plan = []
    for row in draws:
        r = _Uniforms(row)
        present = [name for name, p in zip(OPS, probabilities) if r.bernoulli(p)]
        keys = [r.uniform() for _ in OPS]
        order = sorted(present, key=lambda name: keys[OPS.index(name)])
        ops = [_random_op(r, name, cfg) for name in order]
        if row[-1] < cfg.p_clean:  # the row's last draw is never consumed above: p_clean = 0 keeps every plan
            ops = []
        quality = r.integer(*cfg.jpeg_quality)
        plan.append({"ops": ops, "jpeg_quality": quality if r.bernoulli(cfg.p_jpeg) else None})
    return plan


def _apply_group(x: torch.Tensor, ops: list, generator: torch.Generator) -> torch.Tensor:
    """Applies one kind of op to a sub-batch whose ops share the same inhomogeneity structure."""
    name = ops[0]["op"]
    variation = [op.get("inhomogeneous") for op in ops]
    mask = None
    if variation[0] is not None:
        mask = render_masks(
            [v["mask"] for v in variation], x.shape[2], x.shape[3], device=x.device, dtype=_work_dtype(x)
        )
    outside = variation[0] is not None and variation[0]["mode"] == "kernel"
    values = lambda key: [op[key] for op in ops]  # noqa: E731
    out_values = lambda key: [v[key + "_outside"] for v in variation]  # noqa: E731
    if name == "noise":
        return gaussian_noise(x, values("sigma"), mask=mask, generator=generator)
    if name == "gaussian_blur":
        return gaussian_blur(x, values("sigma"), mask=mask, sigma_outside=out_values("sigma") if outside else None)
    if name == "motion_blur":
        return motion_blur(
            x,
            values("length"),
            values("angle"),
            mask=mask,
            length_outside=out_values("length") if outside else None,
            angle_outside=out_values("angle") if outside else None,
        )
    return adjust_contrast(x, values("contrast"), values("exposure_ev"), mask=mask)


def _group_key(op: dict):
    v = op.get("inhomogeneous")
    return op["op"], None if v is None else (v["mode"] == "kernel")


def _as_generator(generator: GeneratorArg) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        seed = int(torch.randint(0, 2**62, (1,)))  # from the global RNG, so torch.manual_seed applies
    elif isinstance(generator, int) and not isinstance(generator, bool):
        if not -(2**63) <= generator < 2**64:
            raise ValueError(f"degrade: an int seed must lie in [-2**63, 2**64), got {generator}")
        seed = generator
    else:
        raise TypeError(
            f"degrade: generator must be None, an int seed or a torch.Generator, got {type(generator).__name__}"
        )
    return torch.Generator().manual_seed(seed)


def largest_radius(config: DegradeConfig) -> int:
    """The largest blur kernel radius plans from ``config`` can use (0 without blurs): images must be
    larger than it in both dimensions (reflect padding)."""
    radii = [0]
    if config.p_gaussian_blur > 0:
        radii.append(gaussian_radius(config.blur_sigma[1]))
    if config.p_motion_blur > 0:
        radii.append(motion_radius(config.motion_length[1]))
    return max(radii)


def degrade(x: torch.Tensor, *, config: Optional[DegradeConfig] = None, generator: GeneratorArg = None) -> tuple:
    """Degrades a batch of clean images: x [B, 3, H, W] in [0, 1] -> (y, params).

    y has x's shape, dtype and device. params[b] describes image b::

        {"ops": [{"op": "motion_blur", "length": 9.1, "angle": 0.7,
                  "inhomogeneous": {"mode": "kernel", "mask": {"kind": "ramp", ...},
                                    "length_outside": 4.0, "angle_outside": 2.1}},   # optional key
                 {"op": "noise", "sigma": 0.03}, ...],          # in the order applied
         "jpeg_quality": 71}                                     # None when JPEG was skipped

    Op keys: noise {sigma}, gaussian_blur {sigma}, motion_blur {length, angle},
    contrast {contrast, exposure_ev}; the masks render with ``render_masks``. Replaying params
    through the per-op functions gives y again, except for the noise realisation.

    generator: an int seed, a torch.Generator (any device) or None (seeded from torch's global RNG).
    The same seed and batch give the same y on the same device; image b's params depend only on
    the seed and b. H and W must exceed ``largest_radius(config)`` (12 for the default motion length
    up to 21), whatever kernels a seed happens to draw.
    """
    config = DegradeConfig() if config is None else config
    if not isinstance(config, DegradeConfig):
        raise TypeError(f"degrade: config must be a DegradeConfig, got {type(config).__name__}")
    _check_images(x, "degrade")
    radius = largest_radius(config)
    if x.shape[0] and min(x.shape[-2:]) <= radius:
        raise ValueError(
            f"degrade: images of {x.shape[-2]}x{x.shape[-1]} are too small for this config, whose blur "
            f"kernels reach radius {radius}: H and W must exceed it (or lower blur_sigma / "
            f"motion_length, or the blur probabilities to 0)"
        )
    generator = _as_generator(generator)
    plan = _sample_plan(x.shape[0], config, generator)
    noise_generator = torch.Generator(device=x.device)
    noise_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))

    y = x.to(_work_dtype(x)).clone()
    for slot in range(len(OPS)):
        groups: dict = {}
        for b, image in enumerate(plan):
            if slot < len(image["ops"]):
                groups.setdefault(_group_key(image["ops"][slot]), []).append(b)
        for key in sorted(groups, key=lambda k: (OPS.index(k[0]), str(k[1]))):
            members = groups[key]
            index = torch.tensor(members, device=x.device)
            y[index] = _apply_group(y[index], [plan[b]["ops"][slot] for b in members], noise_generator)
    compressed = [b for b, image in enumerate(plan) if image["jpeg_quality"] is not None]
    if compressed:
        index = torch.tensor(compressed, device=x.device)
        y[index] = jpeg(y[index], [plan[b]["jpeg_quality"] for b in compressed], config.jpeg_impl)
    return y.to(x.dtype), plan
