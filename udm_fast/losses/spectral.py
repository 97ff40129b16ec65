"""Losses that split an image into content (low frequencies) and degradation statistics (its spectrum).

Pixel-wise L1 against a noisy y is minimised by a noise-free ŷ (the median), so on its own it teaches
the generator to drop the noise it should reproduce. These terms separate the jobs:

* ``lowpass_l1_loss``: L1 after a Gaussian low-pass — the content, shading and colour of y, with the
  noise realisation averaged away;
* ``spectrum_loss``: the L1 distance between log power spectra, ring-averaged or 2-D pooled — noise
  level, blur width (and, 2-D, its direction), ringing and block periodicity, independent of where the
  noise samples fall;
* ``relative_spectrum_loss``: that distance divided by the identity's (x against y), so nearly clean
  pairs count as much as heavily degraded ones;
* ``transfer_loss``: the L1 distance between the transfer functions from x to ŷ and from x to y (cross
  spectra against the clean image) — how much of x's own detail survives at each frequency and
  orientation, which the power spectrum cannot tell from noise of the same power.

A 2-D spectrum pooled in blocks has most of its blocks at high frequencies (the area within radius f
grows as f²), so a plain mean lets the generator drop mid-band detail almost for free when the high band
matches; ``weighting="rings"`` weights each block by 1 / (its radial frequency), so every ring of
frequencies counts the same, as in the ring-averaged spectrum, while orientation is kept.

They stand in for DISTS when its pretrained VGG16 weights are not available (the embedded model,
``configs/embedded.yaml``); the paper's configuration leaves them off. Images are [B, C, H, W] in
[0, 1]; the statistics are computed in float32 (float64 for float64 inputs), outside autocast.
"""

from __future__ import annotations

import torch

from ..synthesis.degrade import gaussian_kernel1d, gaussian_radius
from .image_ops import check_pair, no_autocast, reduce, separable_filter, stat_dtype

SPECTRUM_FLOOR = 1.0 / (12 * 255**2)  # power of 8-bit rounding noise: weaker detail is not visible
LOWPASS_SIGMA = 1.5  # pixels, default of ``lowpass_l1_loss``
SPECTRUM_MARGIN = 0.1  # bels, default of ``relative_spectrum_loss``


def _windowed_fft(images: torch.Tensor, where: str) -> torch.Tensor:
    """[B, C, H, W] complex: FFT(Hann window * (image - its mean)) divided by the square root of the
    window's energy, so that white noise of variance s² has expected power s² at every frequency."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"{where}: expected a float image batch [B, C, H, W], got {getattr(images, 'shape', type(images).__name__)}"
        )
    h, w = images.shape[-2:]
    x = images - images.mean(dim=(-2, -1), keepdim=True)
    window = torch.outer(
        torch.hann_window(h, periodic=False, dtype=x.dtype, device=x.device),
        torch.hann_window(w, periodic=False, dtype=x.dtype, device=x.device),
    )
    return torch.fft.fft2(x * window) / window.pow(2).sum().sqrt()


def _windowed_power(images: torch.Tensor, where: str) -> torch.Tensor:
    """[B, H, W]: the channel mean of |``_windowed_fft``|²."""
    return _windowed_fft(images, where).abs().pow(2).mean(dim=1)


def _radial_frequency(h: int, w: int, *, dtype, device) -> torch.Tensor:
    """[H, W]: |(f_y, f_x)| in cycles per pixel of each frequency of an H x W FFT (FFT order)."""
    return torch.sqrt(
        torch.fft.fftfreq(h, dtype=dtype, device=device)[:, None] ** 2
        + torch.fft.fftfreq(w, dtype=dtype, device=device)[None, :] ** 2
    )


def radial_power_spectrum(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequencies [n - 1], power [B, n - 1]) with n = min(H, W) // 2: the Hann-windowed power spectrum
    averaged over channels and over rings of radial frequency, in the input's dtype (differentiable).

    Ring k holds the frequencies f = |(f_y, f_x)| in cycles per pixel with k <= 2 n f < k + 1; the DC
    ring (k = 0) and the corners beyond f = 1/2 are left out. The power is normalised so that white
    noise of variance s² has power s² in every ring.
    """
    h, w = images.shape[-2:]
    n = min(h, w) // 2
    if n < 2:
        raise ValueError(f"radial_power_spectrum: images must be at least 4x4, got {h}x{w}")
    power = _windowed_power(images, "radial_power_spectrum")
    dtype, device = power.dtype, power.device
    radius = _radial_frequency(h, w, dtype=dtype, device=device)
    ring = torch.floor(radius * 2 * n).long().flatten()
    keep = (ring >= 1) & (ring < n)
    ring = ring[keep] - 1
    counts = torch.bincount(ring, minlength=n - 1).to(dtype)
    sums = power.new_zeros(power.shape[0], n - 1).index_add(1, ring, power.flatten(1)[:, keep])
    freqs = (torch.arange(1, n, dtype=dtype, device=device) + 0.5) / (2 * n)
    return freqs, sums / counts


def planar_power_spectrum(images: torch.Tensor, pool: int) -> torch.Tensor:
    """[B, H // pool, W // pool]: the Hann-windowed 2-D power spectrum (normalised like
    ``radial_power_spectrum``, averaged over channels) averaged over pool x pool blocks of frequencies in
    FFT order. Unlike the ring average it keeps orientation (motion blur) and periodic peaks (blocking,
    checkerboard patterns); pooling tames the periodogram's variance."""
    power = _windowed_power(images, "planar_power_spectrum")
    h, w = power.shape[-2:]
    if pool < 1 or h < pool or w < pool:
        raise ValueError(f"planar_power_spectrum: pool must be in [1, min(H, W)], got {pool} for {h}x{w}")
    return _pooled(power, pool)


WEIGHTINGS = ("bins", "rings")


def _check_weighting(weighting: str, where: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"{where}: weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def block_weights(h: int, w: int, pool: int, weighting: str, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """[H // pool, W // pool] weights of the pool x pool frequency blocks (FFT order) of an H x W spectrum,
    mean 1: all 1 for ``weighting="bins"``; for ``"rings"`` proportional to 1 / r with r the block's mean
    radial frequency |(f_y, f_x)|, so that the blocks of each ring of radial frequency weigh as much in
    total as those of any other ring of the same width."""
    _check_weighting(weighting, "block_weights")
    if weighting == "bins":
        return torch.ones((h // pool, w // pool), dtype=dtype, device=device)
    radius = _radial_frequency(h, w, dtype=dtype, device=device)
    weights = 1.0 / _pooled(radius[None], pool)[0]  # a block's mean radius is > 0 even where it holds DC
    return weights / weights.mean()


def spectrum_loss(
    y_hat: torch.Tensor,
    y: torch.Tensor,
    *,
    floor: float = SPECTRUM_FLOOR,
    pool: int = 0,
    weighting: str = "bins",
    reduction: str = "mean",
) -> torch.Tensor:
    """mean over frequency bins of u · |log10(P_ŷ + floor) - log10(P_y + floor)| (bels).

    P: the ring average of ``radial_power_spectrum`` (pool=0, u = 1: every ring counts the same), or
    the 2-D spectrum pooled in pool x pool blocks of ``planar_power_spectrum`` (pool >= 1), which also
    sees orientation and periodic artefacts, with u the ``block_weights`` of ``weighting`` ("bins":
    every block the same, so high frequencies dominate; "rings": every ring the same). The floor keeps
    frequencies weaker than 8-bit rounding noise from dominating. [B] per sample for reduction='none'.
    Images at least 8x8.
    """
    check_pair(y_hat, y, "spectrum_loss", min_size=8)
    if not floor > 0:
        raise ValueError(f"spectrum_loss: floor must be > 0, got {floor!r}")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 0:
        raise ValueError(f"spectrum_loss: pool must be an int >= 0, got {pool!r}")
    _check_weighting(weighting, "spectrum_loss")
    with no_autocast(y.device.type):
        dtype = stat_dtype(y)
        if pool:
            p_hat, p = planar_power_spectrum(y_hat.to(dtype), pool), planar_power_spectrum(y.to(dtype), pool)
            u = block_weights(*y.shape[-2:], pool, weighting, dtype=dtype, device=y.device)
        else:
            p_hat, p = radial_power_spectrum(y_hat.to(dtype))[1], radial_power_spectrum(y.to(dtype))[1]
            u = 1.0
        return reduce(u * (torch.log10(p_hat + floor) - torch.log10(p + floor)).abs(), reduction, "spectrum_loss")


def relative_spectrum_loss(
    y_hat: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    *,
    margin: float = SPECTRUM_MARGIN,
    floor: float = SPECTRUM_FLOOR,
    pool: int = 0,
    weighting: str = "bins",
    reduction: str = "mean",
) -> torch.Tensor:
    """``spectrum_loss(ŷ, y)`` of each pair divided by ``spectrum_loss(x, y) + margin`` (bels; no gradient
    through the divisor): the spectrum error relative to returning the clean x unchanged. A nearly clean
    pair, whose absolute error is small but easily larger than its identity error, then weighs as much
    as a heavily degraded one; ``margin`` bounds the weight of pairs with y = x (1 / margin). Arguments
    as in ``spectrum_loss``. [B] per sample for reduction='none'. Images at least 8x8."""
    check_pair(y, x, "relative_spectrum_loss", min_size=8)
    if not margin > 0:
        raise ValueError(f"relative_spectrum_loss: margin must be > 0 (bels), got {margin!r}")
    options = dict(floor=floor, pool=pool, weighting=weighting, reduction="none")
    error = spectrum_loss(y_hat, y, **options)
    with torch.no_grad():
        identity = spectrum_loss(x, y, **options)
    return reduce((error / (identity + margin))[:, None], reduction, "relative_spectrum_loss")


def _pooled(t: torch.Tensor, pool: int) -> torch.Tensor:
    """[B, H // pool, W // pool]: t [B, H, W] averaged over pool x pool blocks."""
    return torch.nn.functional.avg_pool2d(t[:, None], pool)[:, 0]


def _check_pool(pool: int, images: torch.Tensor, where: str) -> None:
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1 or pool > min(images.shape[-2:]):
        raise ValueError(f"{where}: pool must be an int in [1, min(H, W)], got {pool!r}")


def _pooled_cross(fd: torch.Tensor, fx: torch.Tensor, pool: int) -> torch.Tensor:
    """pool(channel mean of Re(D · conj(X))) of two ``_windowed_fft`` results [B, C, H, W]."""
    return _pooled((fd * fx.conj()).real.mean(dim=1), pool)


def _pooled_power(f: torch.Tensor, pool: int) -> torch.Tensor:
    """pool(channel mean of |F|²) of a ``_windowed_fft`` result [B, C, H, W]."""
    return _pooled(f.abs().pow(2).mean(dim=1), pool)


def transfer_function(degraded: torch.Tensor, clean: torch.Tensor, pool: int, floor: float = SPECTRUM_FLOOR):
    """[B, H // pool, W // pool]: the 2-D transfer function from ``clean`` to ``degraded`` estimated from
    windowed spectra pooled in pool x pool frequency blocks (FFT order, channel mean),
    ``H = pool(Re(D · conj(X))) / (pool(|X|²) + floor)``. For ``degraded = k * clean + n`` with n
    independent of the image it tends to the kernel's frequency response (phase included: a motion
    blur's direction and its negative lobes), while the noise only adds a zero-mean residue. Blocks
    where the clean image is weaker than ``floor`` tend to 0."""
    check_pair(degraded, clean, "transfer_function", min_size=4)
    _check_pool(pool, clean, "transfer_function")
    fx = _windowed_fft(clean, "transfer_function")
    return _pooled_cross(_windowed_fft(degraded, "transfer_function"), fx, pool) / (_pooled_power(fx, pool) + floor)


def transfer_loss(
    y_hat: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    *,
    pool: int = 4,
    floor: float = SPECTRUM_FLOOR,
    weighting: str = "bins",
    reduction: str = "mean",
) -> torch.Tensor:
    """mean over frequency blocks of u · r · |H(x -> ŷ) - H(x -> y)|, H the ``transfer_function`` from the
    clean x. Unlike the power spectrum it sees what ŷ keeps of x's own detail at each frequency and
    orientation (a sharp y asks for x's edges, not for noise of the same power), and unlike pixel L1
    it does not ask for y's noise realisation. r = 1 / (1 + s) (no gradient) discounts blocks where
    H(x -> y) is uncertain: s = sqrt(N / (m · pool(|X|²))) is the standard deviation of its noise
    residue, N = pool(|Y|²) - pool(Re(Y X̄))² / pool(|X|²) the power of y not explained by x and m the
    number of averaged spectrum samples (pool² · channels). There the generator's own noise, which
    the spectrum asks for, is penalised as little as y's. u: the ``block_weights`` of ``weighting``
    (as in ``spectrum_loss``). [B] per sample for reduction='none'. Images at least 8x8."""
    check_pair(y_hat, y, "transfer_loss", min_size=8)
    check_pair(y, x, "transfer_loss", min_size=8)
    _check_pool(pool, x, "transfer_loss")
    if not floor > 0:
        raise ValueError(f"transfer_loss: floor must be > 0, got {floor!r}")
    _check_weighting(weighting, "transfer_loss")
    with no_autocast(y.device.type):
        dtype = stat_dtype(y)
        fx = _windowed_fft(x.to(dtype), "transfer_loss")  # the clean spectrum, shared by both sides
        power = _pooled_power(fx, pool) + floor
        cross_hat = _pooled_cross(_windowed_fft(y_hat.to(dtype), "transfer_loss"), fx, pool)
        with torch.no_grad():
            fy = _windowed_fft(y.to(dtype), "transfer_loss")
            cross = _pooled_cross(fy, fx, pool)
            unexplained = (_pooled_power(fy, pool) - cross.pow(2) / power).clamp_min(0.0)
            reliability = 1.0 / (1.0 + (unexplained / (pool * pool * x.shape[1] * power)).sqrt())
            reliability = reliability * block_weights(*x.shape[-2:], pool, weighting, dtype=dtype, device=x.device)
        return reduce(reliability * ((cross_hat - cross) / power).abs(), reduction, "transfer_loss")


def lowpass_l1_loss(
    y_hat: torch.Tensor, y: torch.Tensor, *, sigma: float = LOWPASS_SIGMA, reduction: str = "mean"
) -> torch.Tensor:
    """mean |g * ŷ - g * y| with g the Gaussian of ``sigma`` pixels of ``udm_fast.degrade.gaussian_kernel1d``
    (radius ceil(3 sigma)), reflect padding (H, W > radius). [B] per sample for reduction='none'."""
    if not sigma > 0:
        raise ValueError(f"lowpass_l1_loss: sigma must be > 0, got {sigma!r}")
    check_pair(y_hat, y, "lowpass_l1_loss", min_size=gaussian_radius(sigma) + 1)
    with no_autocast(y.device.type):
        dtype = stat_dtype(y)
        taps = gaussian_kernel1d(sigma, dtype=dtype, device=y.device)[0]
        diff = separable_filter(y_hat.to(dtype) - y.to(dtype), taps)  # the filter is linear
        return reduce(diff.abs(), reduction, "lowpass_l1_loss")
