"""udm_fast.losses against float64 numpy/scipy restatements, manual autograd and the reference packages."""

import importlib.util
import math
import types

import numpy as np
import pytest
import torch
from numpy_spectra import numpy_radial_spectrum
from scipy import signal
from torch import nn

from udm_fast import losses as L
from udm_fast.entropy.bottleneck import EntropyBottleneck
from udm_fast.losses import pretrained as P
from udm_fast.synthesis import degrade


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _correlate_reflect(img, kernel):
    """2-D correlation of img [H, W] with kernel [k, k] after numpy reflect padding (float64)."""
    p = kernel.shape[0] // 2
    return signal.correlate2d(np.pad(img, p, mode="reflect"), kernel, mode="valid")


# ----------------------------------------------------------------------------- pixel losses


def test_l1_loss():
    a, b = _rand(2, 3, 5, 4, seed=1), _rand(2, 3, 5, 4, seed=2)
    assert L.l1_loss(a, b).item() == pytest.approx(np.abs(a.numpy() - b.numpy()).mean(), rel=1e-14)
    np.testing.assert_allclose(
        L.l1_loss(a, b, reduction="none").numpy(), np.abs(a.numpy() - b.numpy()).reshape(2, -1).mean(1), rtol=1e-14
    )


def _numpy_color_loss(y, y_hat):
    g = np.exp(-(np.arange(-22, 23) ** 2) / (2 * 50.0**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    per_sample = []
    for a, b in zip(y, y_hat):
        a, b = (a + 1) / 2, (b + 1) / 2  # the reference maps its [-1, 1] tensors to [0, 1] first
        a = (a - a.min()) / (a.max() - a.min())
        b = (b - b.min()) / (b.max() - b.min())
        per_sample.append(
            np.mean([np.abs(_correlate_reflect(ca, kernel) - _correlate_reflect(cb, kernel)) for ca, cb in zip(a, b)])
        )
    return np.array(per_sample)


def test_color_loss_matches_reference_formula_in_both_domains():
    y, y_hat = _rand(2, 3, 30, 26, seed=3), _rand(2, 3, 30, 26, seed=4) * 0.5 + 0.2
    expected = _numpy_color_loss(2 * y.numpy() - 1, 2 * y_hat.numpy() - 1)
    np.testing.assert_allclose(L.color_loss(y, y_hat, reduction="none").numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(
        L.color_loss(2 * y - 1, 2 * y_hat - 1, domain="signed", reduction="none").numpy(), expected, rtol=1e-12
    )
    assert L.color_loss(y, y_hat).item() == pytest.approx(expected.mean(), rel=1e-12)
    # the kernel is nearly a box: edge-to-centre weight exp(-22^2 / 5000) ~ 0.91
    k = L.pixel.color_kernel1d()
    assert k.numel() == 45 and (k[0] / k[22]).item() == pytest.approx(math.exp(-484 / 5000))
    flat = torch.full((1, 3, 24, 24), 0.5, dtype=torch.float64)
    assert torch.isfinite(L.color_loss(flat, y[:1, :, :24, :24]))


def _numpy_diversity(a, b, c2=0.12):
    g = np.exp(-(np.linspace(-6, 5, 11) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    out = []
    for ia, ib in zip(a, b):
        for ca, cb in zip(ia, ib):
            ma, mb = _correlate_reflect(ca, w), _correlate_reflect(cb, w)
            va = _correlate_reflect(ca * ca, w) - ma**2
            vb = _correlate_reflect(cb * cb, w) - mb**2
            cov = _correlate_reflect(ca * cb, w) - ma * mb
            out.append((2 * np.abs(cov) + c2) / (va + vb + c2))
    return np.mean(out)


def test_diversity_loss_matches_reference_formula():
    a, b = _rand(2, 3, 20, 17, seed=5), _rand(2, 3, 20, 17, seed=6)
    expected = _numpy_diversity(2 * a.numpy() - 1, 2 * b.numpy() - 1)
    assert L.diversity_loss(a, b).item() == pytest.approx(expected, rel=1e-12)
    assert L.diversity_loss(2 * a - 1, 2 * b - 1, domain="signed").item() == pytest.approx(expected, rel=1e-12)
    assert L.diversity_loss(a, b, domain="signed", c2=0.03).item() == pytest.approx(
        _numpy_diversity(a.numpy(), b.numpy(), 0.03), rel=1e-12
    )
    assert L.DIVERSITY_C2 == pytest.approx(0.12)
    taps = L.pixel.diversity_kernel1d()
    centroid = (taps * torch.linspace(-6, 5, 11, dtype=torch.float64)).sum().item()
    assert -0.1 < centroid < 0  # the off-centre quirk: the grid -6..5 leans to the negative side
    # identical samples are maximally similar (cs = 1 where the local variance dominates c2)
    assert L.diversity_loss(a, a).item() > L.diversity_loss(a, b).item()


def test_pixel_loss_gradients():
    y = _rand(1, 3, 24, 24, seed=7).requires_grad_(True)
    y_hat = _rand(1, 3, 24, 24, seed=8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: L.color_loss(a, b), (y, y_hat), fast_mode=True)
    a = _rand(1, 2, 9, 8, seed=9).requires_grad_(True)
    b = _rand(1, 2, 9, 8, seed=10).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, q: L.diversity_loss(p, q), (a, b), fast_mode=True)


@pytest.mark.parametrize(
    "fn,kwargs,match",
    [
        (L.color_loss, {}, "at least 23x23"),
        (L.diversity_loss, {"domain": "lab"}, "domain"),
        (L.l1_loss, {"reduction": "sum"}, "reduction"),
    ],
)
def test_pixel_loss_errors(fn, kwargs, match):
    a = _rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=match):
        fn(a, a, **kwargs)
    with pytest.raises(ValueError, match="same shape"):
        fn(a, a[..., :-1])
    with pytest.raises(ValueError, match="the batch is empty"):  # a mean over nothing would be NaN
        fn(torch.rand(0, 3, 32, 32), torch.rand(0, 3, 32, 32))


# ----------------------------------------------------------------------------- spectral losses


def _numpy_gaussian_lowpass(img, sigma):
    """Reference low-pass of one plane [H, W]: sampled Gaussian, radius ceil(3 sigma), normalised, reflect."""
    r = max(1, math.ceil(3 * sigma))
    g = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    g /= g.sum()
    return _correlate_reflect(img, np.outer(g, g))


@pytest.mark.parametrize("sigma", [0.7, 1.5, 2.5])
def test_lowpass_l1_matches_numpy(sigma):
    a, b = _rand(2, 3, 17, 20, seed=11), _rand(2, 3, 17, 20, seed=12)
    ref = np.stack(
        [
            np.stack(
                [
                    np.abs(
                        _numpy_gaussian_lowpass(a[i, c].numpy(), sigma)
                        - _numpy_gaussian_lowpass(b[i, c].numpy(), sigma)
                    )
                    for c in range(3)
                ]
            )
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(
        L.lowpass_l1_loss(a, b, sigma=sigma, reduction="none").numpy(), ref.reshape(2, -1).mean(1), rtol=1e-12
    )


def test_lowpass_l1_ignores_zero_mean_fine_noise_but_not_content():
    x = _rand(1, 3, 64, 64, seed=13)
    x = torch.nn.functional.avg_pool2d(x, 9, 1, 4, count_include_pad=False)  # smooth content
    noise = 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noisy, shifted = L.lowpass_l1_loss(x + noise, x, sigma=2.0), L.lowpass_l1_loss(x + 0.05, x, sigma=2.0)
    assert L.l1_loss(x + noise, x) > 0.07  # plain L1 sees the noise (E|N(0, 0.1)| = 0.08)
    assert noisy < 0.015 and shifted.item() == pytest.approx(0.05, rel=1e-9)


def test_spectrum_loss_matches_numpy_spectra_and_ignores_the_noise_realisation():
    a, b = _rand(2, 3, 24, 31, seed=14), _rand(2, 3, 24, 31, seed=15) * 0.3
    floor = 1e-4
    expected = [
        np.mean(
            np.abs(
                np.log10(numpy_radial_spectrum(a[i].numpy()) + floor)
                - np.log10(numpy_radial_spectrum(b[i].numpy()) + floor)
            )
        )
        for i in range(2)
    ]
    np.testing.assert_allclose(L.spectrum_loss(a, b, floor=floor, reduction="none").numpy(), expected, rtol=1e-10)
    assert L.spectrum_loss(a, a).item() == 0.0
    g = [torch.Generator().manual_seed(s) for s in (1, 2)]
    x = 0.5 * torch.ones(2, 3, 64, 64, dtype=torch.float64)
    n1, n2 = (x + 0.05 * torch.randn(x.shape, generator=gen, dtype=torch.float64) for gen in g)
    assert L.spectrum_loss(n1, n2) < 0.1 < L.spectrum_loss(n1, x + 0.5 * (n2 - x))  # same sigma vs half sigma


def test_relative_spectrum_loss_divides_by_the_identity_error():
    x, y, y_hat = _rand(3, 3, 24, 31, seed=20), _rand(3, 3, 24, 31, seed=21) * 0.5, _rand(3, 3, 24, 31, seed=22)
    floor, margin = 1e-4, 0.25

    def numpy_distance(a, b):
        return np.mean(np.abs(np.log10(numpy_radial_spectrum(a) + floor) - np.log10(numpy_radial_spectrum(b) + floor)))

    expected = [
        numpy_distance(y_hat[i].numpy(), y[i].numpy()) / (numpy_distance(x[i].numpy(), y[i].numpy()) + margin)
        for i in range(3)
    ]
    got = L.relative_spectrum_loss(y_hat, y, x, margin=margin, floor=floor, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    assert L.relative_spectrum_loss(y_hat, y, x, margin=margin, floor=floor).item() == pytest.approx(np.mean(expected))
    # y = x: the identity error is 0 and the pair weighs 1 / margin
    torch.testing.assert_close(
        L.relative_spectrum_loss(y_hat, x, x, margin=margin, pool=4, reduction="none"),
        L.spectrum_loss(y_hat, x, pool=4, reduction="none") / margin,
    )


def test_relative_spectrum_loss_gradient_flows_to_y_hat_only():
    y_hat = _rand(2, 2, 12, 10, seed=23).requires_grad_(True)
    x = _rand(2, 2, 12, 10, seed=24).requires_grad_(True)
    y = _rand(2, 2, 12, 10, seed=25)
    assert torch.autograd.gradcheck(lambda p: L.relative_spectrum_loss(p, y, x, pool=2), (y_hat,), fast_mode=True)
    L.relative_spectrum_loss(y_hat, y, x).backward()
    assert x.grad is None and y_hat.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="margin must be > 0"):
        L.relative_spectrum_loss(y_hat, y, x, margin=0.0)
    with pytest.raises(ValueError, match="relative_spectrum_loss"):
        L.relative_spectrum_loss(y_hat, y, x[..., :8])
    with pytest.raises(ValueError, match="LossWeights.spectrum_margin must be > 0"):
        L.LossWeights(spectrum_margin=0.0)


def test_planar_spectrum_matches_numpy_and_sees_orientation():
    a = _rand(2, 3, 16, 24, seed=18)
    window = np.outer(np.hanning(16), np.hanning(24))
    for i in range(2):
        power = (
            np.mean(
                [np.abs(np.fft.fft2((a[i, c].numpy() - a[i, c].numpy().mean()) * window)) ** 2 for c in range(3)],
                axis=0,
            )
            / (window**2).sum()
        )
        pooled = power.reshape(4, 4, 6, 4).mean(axis=(1, 3))
        np.testing.assert_allclose(L.planar_power_spectrum(a, 4)[i].numpy(), pooled, rtol=1e-10)
    # a horizontal and a vertical stripe pattern share their ring spectrum but not their planar one
    stripes = 0.5 + 0.2 * torch.sin(torch.arange(32, dtype=torch.float64) * 2 * math.pi / 4)
    horizontal = stripes[None, None, :, None].expand(1, 3, 32, 32)
    vertical = stripes[None, None, None, :].expand(1, 3, 32, 32)
    assert L.spectrum_loss(horizontal, vertical).item() < 1e-9
    assert L.spectrum_loss(horizontal, vertical, pool=2).item() > 0.5
    with pytest.raises(ValueError, match="pool must be an int >= 0"):
        L.spectrum_loss(horizontal, vertical, pool=-1)
    with pytest.raises(ValueError, match="pool must be in"):
        L.planar_power_spectrum(a, 17)


def test_spectral_losses_gradients_and_float32():
    a = _rand(1, 2, 12, 10, seed=16).requires_grad_(True)
    b = _rand(1, 2, 12, 10, seed=17)
    assert torch.autograd.gradcheck(lambda p: L.spectrum_loss(p, b), (a,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda p: L.spectrum_loss(p, b, pool=2), (a,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda p: L.spectrum_loss(p, b, pool=2, weighting="rings"), (a,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda p: L.lowpass_l1_loss(p, b, sigma=1.0), (a,), fast_mode=True)
    for fn in (L.spectrum_loss, L.lowpass_l1_loss):
        value = fn(a.float().bfloat16(), b.bfloat16())
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(fn(a.bfloat16().double(), b.bfloat16().double()).item(), rel=1e-4)


def _numpy_windowed_fft(plane):
    window = np.outer(np.hanning(plane.shape[0]), np.hanning(plane.shape[1]))
    return np.fft.fft2((plane - plane.mean()) * window) / np.sqrt((window**2).sum())


def _numpy_block_weights(h, w, pool, weighting):
    if weighting == "bins":
        return np.ones((h // pool, w // pool))
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
    inverse = 1.0 / radius.reshape(h // pool, pool, w // pool, pool).mean(axis=(1, 3))
    return inverse / inverse.mean()


def _numpy_transfer_loss(y_hat, y, x, pool, floor, weighting="bins"):
    """Reference for one image [C, H, W]: pooled cross spectra, reliability and block weights, mean |ΔH|."""
    c, h, w = x.shape

    def pooled(t):
        return t.reshape(h // pool, pool, w // pool, pool).mean(axis=(1, 3))

    fx = [_numpy_windowed_fft(x[k]) for k in range(c)]
    fy = [_numpy_windowed_fft(y[k]) for k in range(c)]
    fh = [_numpy_windowed_fft(y_hat[k]) for k in range(c)]
    power = pooled(np.mean([np.abs(f) ** 2 for f in fx], axis=0))
    cross_y = pooled(np.mean([(a * np.conj(b)).real for a, b in zip(fy, fx)], axis=0))
    cross_hat = pooled(np.mean([(a * np.conj(b)).real for a, b in zip(fh, fx)], axis=0))
    power_y = pooled(np.mean([np.abs(f) ** 2 for f in fy], axis=0))
    unexplained = np.maximum(power_y - cross_y**2 / (power + floor), 0.0)
    reliability = 1.0 / (1.0 + np.sqrt(unexplained / (pool * pool * c * (power + floor))))
    weights = _numpy_block_weights(h, w, pool, weighting)
    return np.mean(weights * reliability * np.abs(cross_hat - cross_y) / (power + floor)), cross_y / (power + floor)


@pytest.mark.parametrize("weighting", ["bins", "rings"])
def test_transfer_loss_and_function_match_numpy(weighting):
    y_hat, y, x = _rand(2, 3, 16, 24, seed=30), _rand(2, 3, 16, 24, seed=31), _rand(2, 3, 16, 24, seed=32)
    floor = 1e-4
    for i in range(2):
        loss, transfer = _numpy_transfer_loss(y_hat[i].numpy(), y[i].numpy(), x[i].numpy(), 4, floor, weighting)
        np.testing.assert_allclose(L.transfer_function(y, x, 4, floor)[i].numpy(), transfer, rtol=1e-10)
        value = L.transfer_loss(y_hat, y, x, floor=floor, weighting=weighting, reduction="none")[i].item()
        assert value == pytest.approx(loss, rel=1e-10)
    assert L.transfer_loss(y, y, x, weighting=weighting).item() == 0.0


def test_ring_weighting_matches_numpy_and_counts_every_ring_alike():
    for h, w, pool in ((128, 128, 4), (48, 64, 2), (16, 24, 4)):
        np.testing.assert_allclose(
            L.block_weights(h, w, pool, "rings", dtype=torch.float64).numpy(),
            _numpy_block_weights(h, w, pool, "rings"),
            rtol=1e-12,
        )
    assert torch.equal(L.block_weights(16, 24, 4, "bins"), torch.ones(4, 6))
    # the blocks of rings of equal width weigh the same in total, at low and at high frequencies
    u = L.block_weights(128, 128, 4, "rings", dtype=torch.float64)
    radius = torch.fft.fftfreq(128, dtype=torch.float64).abs()
    block_radius = torch.nn.functional.avg_pool2d(torch.hypot(radius[:, None], radius[None, :])[None], 4)[0]
    totals = [float(u[(block_radius >= lo) & (block_radius < lo + 0.05)].sum()) for lo in (0.05, 0.15, 0.25, 0.4)]
    assert max(totals) / min(totals) < 1.15
    with pytest.raises(ValueError, match="weighting must be one of"):
        L.block_weights(16, 16, 4, "octaves")


def _band_attenuated(images, low, high, gain):
    """images with the frequencies low <= |f| < high (cycles/px) scaled by gain (a real, symmetric mask)."""
    f = torch.fft.fftfreq(images.shape[-1], dtype=torch.float64)
    radius = torch.hypot(f[:, None], f[None, :])
    mask = torch.where((radius >= low) & (radius < high), gain, 1.0)
    return torch.fft.ifft2(torch.fft.fft2(images) * mask).real


def test_ring_weighting_sees_a_lost_mid_band_as_much_as_a_lost_high_band():
    y = 0.5 + 0.1 * torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mid, high = _band_attenuated(y, 0.1, 0.15, 0.3), _band_attenuated(y, 0.4, 0.45, 0.3)
    bins = L.spectrum_loss(high, y, pool=4) / L.spectrum_loss(mid, y, pool=4)
    rings = L.spectrum_loss(high, y, pool=4, weighting="rings") / L.spectrum_loss(mid, y, pool=4, weighting="rings")
    assert bins > 2.0  # the high ring holds ~3x as many blocks
    assert 0.75 < rings < 1.33
    # the 2-D weighted loss restated: weighted mean of |Δ log10| over the pooled planar spectra
    floor = L.SPECTRUM_FLOOR
    expected = (
        L.block_weights(128, 128, 4, "rings", dtype=torch.float64)
        * (
            torch.log10(L.planar_power_spectrum(mid, 4) + floor) - torch.log10(L.planar_power_spectrum(y, 4) + floor)
        ).abs()
    ).mean(dim=(1, 2))
    torch.testing.assert_close(L.spectrum_loss(mid, y, pool=4, weighting="rings", reduction="none"), expected)
    assert L.spectrum_loss(mid, y, weighting="rings") == L.spectrum_loss(mid, y)  # rings already count alike
    with pytest.raises(ValueError, match="weighting must be one of"):
        L.spectrum_loss(mid, y, pool=4, weighting="octaves")
    with pytest.raises(ValueError, match="weighting must be one of"):
        L.transfer_loss(mid, y, y, weighting="ring")


def test_transfer_function_of_a_blur_is_its_frequency_response():
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    measured = L.transfer_function(degrade.gaussian_blur(x, 1.0), x, 4).mean(dim=0)
    f = torch.fft.fftfreq(128, dtype=torch.float64)
    response = torch.exp(-2 * math.pi**2 * (f[:, None] ** 2 + f[None, :] ** 2))  # Gaussian of sigma 1 pixel
    expected = torch.nn.functional.avg_pool2d(response[None, None], 4)[0, 0]
    assert (measured - expected).abs().max().item() < 0.03
    # a horizontal motion blur keeps vertical frequencies (H = 1 along f_x = 0) and removes horizontal ones
    motion = L.transfer_function(degrade.motion_blur(x, 9.0, 0.0), x, 4).mean(dim=0)
    assert motion[4:12, 0].min().item() > 0.9 and motion[0, 4:12].abs().max().item() < 0.3


def test_transfer_loss_sees_what_the_power_spectrum_cannot():
    gen = torch.Generator().manual_seed(4)
    x = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 64, 64, generator=gen, dtype=torch.float64), 3, 1, 1)
    # the same power spectrum as x with random phases: detail of the right strength but not x's own
    spectrum = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True))
    phases = torch.fft.fft2(torch.randn(x.shape, generator=gen, dtype=torch.float64)).angle()
    scrambled = torch.fft.ifft2(spectrum.abs() * torch.exp(1j * phases)).real + x.mean(dim=(-2, -1), keepdim=True)
    assert L.transfer_loss(scrambled, x, x) > 0.5 > 5 * L.transfer_loss(x + 0.001, x, x)
    # noisy target: x with another noise sample of the same sigma beats a blurred x; blurred target: the reverse
    noisy = [x + 0.04 * torch.randn(x.shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    blurred = degrade.gaussian_blur(x, 1.5)
    assert L.transfer_loss(noisy[1], noisy[0], x) < L.transfer_loss(blurred, noisy[0], x)
    assert L.transfer_loss(blurred, degrade.gaussian_blur(x, 1.4), x) < L.transfer_loss(noisy[1], blurred, x)


def test_transfer_loss_gradients_errors_and_float32():
    a = _rand(1, 2, 12, 12, seed=33).requires_grad_(True)
    b, x = _rand(1, 2, 12, 12, seed=34), _rand(1, 2, 12, 12, seed=35)
    assert torch.autograd.gradcheck(lambda p: L.transfer_loss(p, b, x, pool=2), (a,), fast_mode=True)
    value = L.transfer_loss(a.float().bfloat16(), b.bfloat16(), x.bfloat16(), pool=2)
    assert value.dtype == torch.float32
    with pytest.raises(ValueError, match="pool must be an int in"):
        L.transfer_loss(a, b, x, pool=0)
    with pytest.raises(ValueError, match="pool must be an int in"):
        L.transfer_function(b, x, 13)
    with pytest.raises(ValueError, match="same shape"):
        L.transfer_loss(a, b, x[..., :8, :8])
    with pytest.raises(ValueError, match="floor must be > 0"):
        L.transfer_loss(a, b, x, floor=-1.0)


def test_spectral_loss_errors():
    a = _rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="at least 8x8"):
        L.spectrum_loss(a[..., :7], a[..., :7])
    with pytest.raises(ValueError, match="sigma must be > 0"):
        L.lowpass_l1_loss(a, a, sigma=0.0)
    with pytest.raises(ValueError, match="at least 7x7"):
        L.lowpass_l1_loss(a[..., :6, :6], a[..., :6, :6], sigma=2.0)
    with pytest.raises(ValueError, match="floor must be > 0"):
        L.spectrum_loss(a, a, floor=0.0)
    with pytest.raises(ValueError, match="lowpass_sigma"):
        L.LossWeights(lowpass_sigma=0.0)
    with pytest.raises(ValueError, match="spectrum_pool"):
        L.LossWeights(spectrum_pool=1.5)
    with pytest.raises(ValueError, match="spectrum_weighting must be one of"):
        L.LossWeights(spectrum_weighting="octaves")
    assert L.LossWeights(spectrum_weighting="rings").spectrum_weighting == "rings"


# ----------------------------------------------------------------------------- training terms


def test_info_nce_loss():
    logits = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = logits.numpy()
    expected = np.log(np.exp(z).sum(1)) - z[:, 0]
    np.testing.assert_allclose(L.info_nce_loss(logits, reduction="none").numpy(), expected, rtol=1e-12)
    assert L.info_nce_loss(logits).item() == pytest.approx(expected.mean(), rel=1e-12)
    assert torch.autograd.gradcheck(L.info_nce_loss, (logits.requires_grad_(True),))
    with pytest.raises(ValueError, match=r"\[B, 1 \+ K\]"):
        L.info_nce_loss(torch.zeros(4))


def test_bits_and_rate_loss():
    lik_g = _rand(3, 6, seed=1).clamp_min(1e-9)
    lik_l = _rand(3, 4, 2, 5, seed=2).clamp_min(1e-9)
    bits_g, bits_l = L.bits_from_likelihoods(lik_g), L.bits_from_likelihoods(lik_l)
    np.testing.assert_allclose(bits_g.numpy(), -np.log2(lik_g.numpy()).sum(1), rtol=1e-6)
    assert bits_l.shape == (3, 2, 5)
    np.testing.assert_allclose(bits_l.numpy(), -np.log2(lik_l.numpy()).sum(1), rtol=1e-6)
    rate = L.rate_loss(bits_g, bits_l, weight_global=2e-3, weight_local=0.05)
    expected = 2e-3 * bits_g.numpy().mean() + 0.05 * bits_l.numpy().mean()
    assert rate.item() == pytest.approx(expected, rel=1e-6)
    assert L.rate_loss(bits_local=bits_l, weight_global=1, weight_local=1).item() == pytest.approx(
        bits_l.numpy().mean(), rel=1e-6
    )
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        L.rate_loss(bits_g, bits_g, weight_global=1, weight_local=1)
    with pytest.raises(ValueError, match="and/or"):
        L.rate_loss(weight_global=1, weight_local=1)


def test_entropy_aux_loss_sums_every_bottleneck():
    from compressai.entropy_models import EntropyBottleneck as CompressaiBottleneck

    ours, theirs = EntropyBottleneck(4), CompressaiBottleneck(3)
    wrapper = nn.Sequential(nn.Linear(2, 2), ours)
    total = L.entropy_aux_loss(wrapper, theirs)
    assert total.item() == pytest.approx((ours.loss() + theirs.loss()).item(), rel=1e-6)
    total.backward()
    assert ours.quantiles.grad is not None and theirs.quantiles.grad is not None
    with pytest.raises(ValueError, match="no EntropyBottleneck"):
        L.entropy_aux_loss(nn.Linear(2, 2))


def test_wgan_terms_with_a_linear_critic_match_closed_form():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1)).double()
    real, fake = _rand(5, 3, 2, 2, seed=1), _rand(5, 3, 2, 2, seed=2)
    w, b = critic[1].weight.detach().numpy()[0], critic[1].bias.item()
    d = lambda t: t.reshape(len(t), -1).numpy() @ w + b  # noqa: E731
    gp = (math.sqrt((w**2).sum() + 1e-12) - 1) ** 2  # the gradient of a linear critic is w everywhere
    out = L.wgan_critic_loss(critic, real, fake, alpha=0.5, gp_weight=10.0)
    assert out.gp.item() == pytest.approx(gp, rel=1e-12)
    assert out.total.item() == pytest.approx(0.5 * (d(fake).mean() - d(real).mean()) + 0.5 * 10 * gp, rel=1e-12)
    assert out.wasserstein.item() == pytest.approx(d(real).mean() - d(fake).mean(), rel=1e-12)
    gen = L.wgan_generator_loss(critic, fake, alpha=0.5)
    assert gen.item() == pytest.approx(-0.5 * d(fake).mean(), rel=1e-12)


class _SmallCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 2)  # two scores per sample

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def test_wgan_gp_matches_per_sample_manual_autograd():
    torch.manual_seed(0)
    critic = _SmallCritic().double()
    real, fake = _rand(3, 3, 4, 4, seed=3), _rand(3, 3, 4, 4, seed=4).requires_grad_(True)
    loss = L.wgan_critic_loss(critic, real, fake, alpha=2.0, gp_weight=5.0, generator=torch.Generator().manual_seed(11))
    critic.zero_grad()
    loss.total.backward()
    ours = [p.grad.clone() for p in critic.parameters()]
    assert fake.grad is None  # the critic step detaches its inputs

    a = torch.rand(3, 1, 1, 1, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    penalties = []
    for i in range(3):
        mixed = (a[i] * real[i] + (1 - a[i]) * fake[i].detach()).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(mixed[None]).sum(), mixed, create_graph=True)
        penalties.append((torch.sqrt((g**2).sum() + 1e-12) - 1) ** 2)
    gp = torch.stack(penalties).mean()
    manual = 2.0 * (critic(fake.detach()).mean() - critic(real).mean()) + 2.0 * 5.0 * gp
    critic.zero_grad()
    manual.backward()
    assert loss.total.item() == pytest.approx(manual.item(), rel=1e-12)
    assert loss.gp.item() == pytest.approx(gp.item(), rel=1e-12)
    for p, g in zip(critic.parameters(), ours):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)  # includes the create_graph path


def test_gradient_penalty_shape_error():
    with pytest.raises(ValueError, match="same shape"):
        L.gradient_penalty(nn.Identity(), torch.zeros(2, 3), torch.zeros(3, 3))


# ----------------------------------------------------------------------------- loss weights


def test_loss_weights_defaults_and_sum():
    w = L.LossWeights()
    assert (
        w.dists,
        w.l1,
        w.color,
        w.contrastive,
        w.bits_global,
        w.bits_local,
        w.diversity,
        w.gan_generator,
        w.aux,
        w.lpips,
    ) == (10, 20, 10, 1e-4, 2e-3, 0.05, 1, 10, 1, 0)
    terms = {
        "dists": torch.tensor(0.3),
        "l1": torch.tensor(0.1),
        "lpips": torch.tensor(float("nan")),
        "bits_local": torch.tensor(2.0),
    }
    assert w.weighted_sum(terms).item() == pytest.approx(10 * 0.3 + 20 * 0.1 + 0.05 * 2.0)  # lpips weight 0: skipped
    with pytest.raises(ValueError, match="unknown term"):
        w.weighted_sum({"dist": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="scalar"):
        w.weighted_sum({"dists": torch.ones(2)})
    with pytest.raises(ValueError, match="unknown key"):
        L.LossWeights.from_dict({"colour": 1.0})
    assert L.LossWeights.from_dict({"color": 5}).color == 5
    with pytest.raises(ValueError, match=">= 0"):
        L.LossWeights(dists=-1.0)


# ----------------------------------------------------------------------------- perceptual losses


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A torchvision-named VGG16 features file with random (seeded) weights."""
    torch.manual_seed(0)
    state = L.VGG16Features().state_dict()
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.save(state, path)
    return path


@pytest.fixture
def alpha_beta_file(tmp_path):
    path = tmp_path / "dists_weights.pt"
    torch.save({"alpha": torch.rand(1, 1475, 1, 1), "beta": torch.rand(1, 1475, 1, 1)}, path)
    return path


@pytest.fixture
def lin_file(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(P.STAGE_CHANNELS)}, path)
    return path


def test_vgg16_features_use_torchvision_names():
    keys = list(L.VGG16Features().state_dict())
    assert keys[:2] == ["features.0.weight", "features.0.bias"] and keys[-1] == "features.28.bias"
    assert len(keys) == 26


@pytest.mark.parametrize("cls", [L.DISTS, L.LPIPS])
def test_random_init_smoke_and_gradients(cls):
    torch.manual_seed(0)
    model = cls(pretrained=False).double()
    assert not any(p.requires_grad for p in model.parameters())
    x, y = _rand(2, 3, 16, 16, seed=1), _rand(2, 3, 16, 16, seed=2)
    d = model(x, y, reduction="none")
    assert d.shape == (2,) and (d > 0).all()
    assert model(x, x).abs().item() < 1e-10
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: model(t, y), (x,), fast_mode=True)


def test_dists_under_bfloat16_autocast_stays_close():
    torch.manual_seed(0)
    model = L.DISTS(pretrained=False)
    x, y = _rand(2, 3, 32, 32, seed=1, dtype=torch.float32), _rand(2, 3, 32, 32, seed=2, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, y)
    assert low.dtype == torch.float32 and abs(low.item() - model(x, y).item()) < 0.05 * model(x, y).item()


def test_weights_load_from_paths_and_hub_cache(vgg_file, alpha_beta_file, lin_file, tmp_path, monkeypatch):
    model = L.DISTS(vgg_weights=vgg_file, dists_weights=alpha_beta_file)
    expected = torch.load(vgg_file)
    assert torch.equal(model.vgg.features[28].weight, expected["features.28.weight"])
    assert torch.equal(model.alpha, torch.load(alpha_beta_file)["alpha"].reshape(-1))
    lp = L.LPIPS(vgg_weights=vgg_file, lpips_weights=lin_file)
    assert torch.equal(lp.lin3, torch.load(lin_file)["lin3.model.1.weight"].reshape(-1))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / P.VGG16_FILENAME
    cached.parent.mkdir(parents=True)
    cached.symlink_to(vgg_file)
    assert L.vgg16_cache_path() == str(cached)
    from_cache = L.DISTS(dists_weights=alpha_beta_file, download=False)
    assert torch.equal(from_cache.vgg.features[0].weight, expected["features.0.weight"])


def test_missing_weights_explain_how_to_provide_them(alpha_beta_file, vgg_file, tmp_path, monkeypatch, weight_packages):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(L.MissingWeightsError, match="vgg16-397923af.pth.*pretrained=False"):
        L.DISTS(dists_weights=alpha_beta_file, download=False)
    with pytest.raises(L.MissingWeightsError, match="no file at"):
        L.LPIPS(vgg_weights=tmp_path / "nothing.pth")
    with pytest.raises(L.MissingWeightsError, match="dists-pytorch"):
        L.DISTS(dists_weights=tmp_path / "nothing.pt", vgg_weights=vgg_file)
    monkeypatch.setattr(P, "_package_file", lambda *parts: None)
    with pytest.raises(L.MissingWeightsError, match="pip install dists-pytorch"):
        L.DISTS(vgg_weights=vgg_file)
    with pytest.raises(L.MissingWeightsError, match="pip install lpips"):
        L.LPIPS(vgg_weights=vgg_file)
    assert issubclass(L.MissingWeightsError, FileNotFoundError)


def test_wrong_weight_files_raise(tmp_path, vgg_file, alpha_beta_file):
    bad = tmp_path / "bad.pt"
    torch.save({"alpha": torch.rand(10), "beta": torch.rand(10)}, bad)
    with pytest.raises(ValueError, match="1475"):
        L.DISTS(vgg_weights=vgg_file, dists_weights=bad)
    with pytest.raises(ValueError, match="lin0"):
        L.LPIPS(vgg_weights=vgg_file, lpips_weights=bad)
    with pytest.raises(ValueError, match="features.0.weight"):
        L.DISTS(vgg_weights=bad, dists_weights=alpha_beta_file)
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        L.vgg16_features_state_dict(text)


def test_perceptual_input_errors():
    model = L.LPIPS(pretrained=False)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="same shape"):
        model(torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 16x16"):
        model(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="the batch is empty"):
        model(torch.rand(0, 3, 32, 32), torch.rand(0, 3, 32, 32))


@pytest.mark.parametrize("cls", [L.DISTS, L.LPIPS])
def test_perceptual_losses_take_inputs_of_any_float_dtype(cls):
    torch.manual_seed(0)
    model = cls(pretrained=False)  # float32 module
    x, y = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.rand(2, 3, 32, 32, dtype=torch.float64)
    expected = model(x.float(), y.float())
    for dtype in (torch.float64, torch.bfloat16):
        got = model(x.to(dtype), y.to(dtype))
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0 if dtype == torch.float64 else 5e-2, atol=1e-6)


_REFERENCE_PACKAGES = all(importlib.util.find_spec(m) is not None for m in ("DISTS_pytorch", "lpips", "torchvision"))


@pytest.mark.skipif(not _REFERENCE_PACKAGES, reason="needs the dists-pytorch, lpips and torchvision packages")
def test_dists_and_lpips_match_reference_packages(vgg_file, monkeypatch):
    """Our DISTS/LPIPS (with the packages' shipped alpha/beta and linear weights) against the packages'
    own implementations, both on the same random VGG16 (the ImageNet file cannot be fetched offline)."""
    import torchvision
    from torchvision.models import vgg as tv_vgg

    features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=False)  # torchvision's own layer list
    features.load_state_dict({k[len("features.") :]: v for k, v in torch.load(vgg_file).items()})
    monkeypatch.setattr(torchvision.models, "vgg16", lambda *a, **k: types.SimpleNamespace(features=features))
    import lpips
    from DISTS_pytorch import DISTS as ReferenceDISTS

    x, y = _rand(2, 3, 48, 40, seed=1), _rand(2, 3, 48, 40, seed=2) * 0.6 + 0.2
    reference_dists = ReferenceDISTS().double()(x, y)
    reference_lpips = lpips.LPIPS(net="vgg", verbose=False).double()(x, y, normalize=True).flatten()
    ours_dists = L.DISTS(vgg_weights=vgg_file).double()(x, y, reduction="none")
    ours_lpips = L.LPIPS(vgg_weights=vgg_file).double()(x, y, reduction="none")
    torch.testing.assert_close(ours_dists, reference_dists.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours_lpips, reference_lpips.detach(), rtol=1e-10, atol=1e-12)
