"""Transfer-quality measures (udm_fast.eval.transfer) against numpy/scipy float64 references and sanity behaviour."""

import math

import numpy as np
import pytest
import torch
from numpy_spectra import numpy_radial_spectrum as _numpy_radial_spectrum

from udm_fast.eval import transfer as ev
from udm_fast.eval.leakage import content_leakage
from udm_fast.models.udm import UDM
from udm_fast.synthesis.degrade import gaussian_blur, gaussian_noise

scipy_ndimage = pytest.importorskip("scipy.ndimage")
scipy_signal = pytest.importorskip("scipy.signal")


def _photo(size=96, top=100, left=150):
    """A crop of scikit-image's astronaut, contrast reduced so that added noise is rarely clipped."""
    skimage_data = pytest.importorskip("skimage.data")
    crop = skimage_data.astronaut()[top : top + size, left : left + size].transpose(2, 0, 1).copy()
    return torch.from_numpy(crop)[None].double() / 255 * 0.8 + 0.1


def _random_images(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(shape, generator=g, dtype=torch.float64), 3, 1, 1)


def test_radial_spectrum_matches_numpy():
    images = _random_images((2, 3, 20, 27))
    freqs, power = ev.radial_power_spectrum(images)
    assert freqs.shape == (9,) and power.shape == (2, 9)
    for b in range(2):
        np.testing.assert_allclose(power[b].numpy(), _numpy_radial_spectrum(images[b].numpy()), rtol=1e-10)


def test_white_noise_has_flat_spectrum_at_its_variance():
    sigma = 0.05
    noise = sigma * torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, power = ev.radial_power_spectrum(noise)
    assert power.mean().item() == pytest.approx(sigma**2, rel=0.05)
    assert (power / sigma**2).max().item() < 2.0 and (power / sigma**2).min().item() > 0.5


def test_spectrum_distance_matches_numpy_and_is_symmetric():
    a, b = _random_images((2, 3, 32, 32), seed=1), _random_images((2, 3, 32, 32), seed=2) * 0.5
    ours = ev.spectrum_distance(a, b)
    for i in range(2):
        pa = np.maximum(_numpy_radial_spectrum(a[i].numpy()), ev.SPECTRUM_FLOOR)
        pb = np.maximum(_numpy_radial_spectrum(b[i].numpy()), ev.SPECTRUM_FLOOR)
        expected = np.sqrt(np.mean((10 * np.log10(pa / pb)) ** 2))
        assert ours[i].item() == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(ev.spectrum_distance(b, a), ours)
    assert ev.spectrum_distance(a, a).abs().max().item() <= 1e-10
    same = a.clone().requires_grad_(True)
    ev.spectrum_distance(same, a).sum().backward()  # equal spectra: a finite (zero) gradient, not NaN
    assert torch.isfinite(same.grad).all()


def test_spectrum_distance_ignores_the_noise_realisation():
    x = _photo()
    noisy = [gaussian_noise(x, 10 / 255, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    same_degradation = ev.spectrum_distance(noisy[0], noisy[1]).item()
    assert same_degradation < 0.5
    assert ev.spectrum_distance(x, noisy[0]).item() > 10 * same_degradation


def test_noise_level_matches_scipy_reference():
    images = _random_images((2, 3, 17, 23), seed=3)
    kernel = np.array(ev.LAPLACIAN)
    ours = ev.noise_level(images)
    for b in range(2):
        residual = np.stack([scipy_signal.convolve2d(images[b, c].numpy(), kernel, mode="valid") for c in range(3)])
        values = np.sort(np.abs(residual).ravel())
        median = values[(values.size - 1) // 2]  # torch.median takes the lower middle value
        assert ours[b].item() == pytest.approx(median / 6 / 0.6744897501960817, rel=1e-12)


@pytest.mark.parametrize("sigma_255", [5.0, 10.0, 25.0])
def test_noise_level_tracks_added_gaussian_noise(sigma_255):
    x = _photo()
    y = gaussian_noise(x, sigma_255 / 255, generator=torch.Generator().manual_seed(0))
    assert 255 * ev.noise_level(y).item() == pytest.approx(sigma_255, rel=0.15)


def test_noise_level_increases_with_sigma():
    x = _photo()
    levels = [
        ev.noise_level(gaussian_noise(x, s / 255, generator=torch.Generator().manual_seed(0))).item()
        for s in (0.0, 2.0, 5.0, 10.0, 20.0)
    ]
    assert levels == sorted(levels) and levels[0] < levels[-1]


@pytest.mark.parametrize("noise_255", [0.0, 5.0])
def test_blur_width_recovers_gaussian_sigma(noise_255):
    x = _photo(128)
    estimates = []
    for sigma in (1.0, 1.5, 2.0, 2.5):
        y = gaussian_noise(gaussian_blur(x, sigma), noise_255 / 255, generator=torch.Generator().manual_seed(0))
        estimates.append(ev.blur_width(y, x).item())
        assert estimates[-1] == pytest.approx(sigma, rel=0.15)
    assert estimates == sorted(estimates)


def test_blur_width_ignores_contrast_and_is_nan_without_signal():
    x = _photo(128)
    y = gaussian_blur(x, 1.5)
    scaled = 0.5 + 0.6 * (y - 0.5)
    assert ev.blur_width(scaled, x).item() == pytest.approx(ev.blur_width(y, x).item(), rel=0.05)
    flat = torch.full_like(x, 0.5)
    noisy_flat = gaussian_noise(flat, 0.05, generator=torch.Generator().manual_seed(0))
    assert math.isnan(ev.blur_width(noisy_flat, flat).item())


def test_lowpass_fidelity_matches_scipy_and_removes_noise():
    x = _photo(64)
    y = gaussian_noise(x, 20 / 255, generator=torch.Generator().manual_seed(0))
    result = ev.lowpass_fidelity(y, x)
    s = ev.LOWPASS_SIGMA
    blur = lambda a: scipy_ndimage.gaussian_filter(
        a.numpy(),
        sigma=(0, 0, s, s),
        mode="mirror",  # noqa: E731
        truncate=math.ceil(3 * s) / s,
    )
    mse = np.mean((blur(y) - blur(x)) ** 2)
    assert result["psnr_lowpass"].item() == pytest.approx(10 * np.log10(1 / mse), rel=1e-9)
    raw_psnr = 10 * np.log10(1 / np.mean((y.numpy() - x.numpy()) ** 2))
    assert result["psnr_lowpass"].item() > raw_psnr + 10
    assert result["ms_ssim_lowpass"].item() > 0.95


def test_code_spread_ratio_matches_numpy():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    c = codes.numpy()
    expected = c.var(axis=0).sum(axis=-1).mean() / c.var(axis=1).sum(axis=-1).mean()
    assert ev.code_spread_ratio(codes) == pytest.approx(expected, rel=1e-12)
    degradation_only = torch.randn(1, 4, 5, generator=g).expand(3, 4, 5) + 1e-3 * torch.randn(3, 4, 5, generator=g)
    assert ev.code_spread_ratio(degradation_only) < 1e-4
    with pytest.raises(ValueError, match="n_contents >= 2"):
        ev.code_spread_ratio(codes[:1])
    assert math.isnan(ev.code_spread_ratio(torch.ones(2, 3, 4)))
    assert ev.code_spread_ratio(torch.arange(2.0)[:, None, None].expand(2, 3, 4)) == math.inf


def test_active_dimensions_matches_numpy():
    codes = torch.zeros(50, 6, dtype=torch.float64)
    codes[:, 1] = torch.arange(50) % 2  # variance 0.25
    codes[:25, 4] = 1.0  # variance 0.25
    codes[0, 5] = 1.0  # variance 0.0196: below the threshold
    expected = int((codes.numpy().var(axis=0) > ev.ACTIVE_VARIANCE).sum())
    assert ev.active_dimensions(codes) == expected == 2
    with pytest.raises(ValueError, match=r"\[N >= 2, D\]"):
        ev.active_dimensions(codes[0])


def _tiny_model():
    torch.manual_seed(0)
    model = UDM(filters=8, encoder_dim=16, global_dim=8, queue_size=4, discriminator=False).eval()
    return model.update_entropy_tables(force=True)


def test_code_bits_are_the_compressed_file():
    model = _tiny_model()
    y = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    bits = ev.code_bits(model, y)
    data = model.compress_degradation(y)
    assert bits["total"] == 8 * len(data)
    assert 0 < bits["global"] and 0 < bits["local"] and bits["global"] + bits["local"] < bits["total"]
    with pytest.raises(ValueError, match="one image"):
        ev.code_bits(model, y.expand(2, -1, -1, -1))


def test_transfer_table_identity_row_and_baseline_layout():
    model = _tiny_model()
    contents = torch.stack([_photo(48, 100, 150)[0], _photo(48, 300, 200)[0]]).float()
    degraded, params = ev.degradation_grid(contents, seeds=[3, 4])
    assert degraded.shape == (2, 2, 3, 48, 48) and len(params) == 2 and "ops" in params[0]
    table = ev.transfer_table(model, contents, degraded)
    assert table["pairs"] == 4 and set(table["methods"]) == set(ev.METHODS)
    identity = [
        ev.degradation_measures(contents[i : i + 1], degraded[i, j : j + 1], contents[i : i + 1])
        for i in range(2)
        for j in range(2)
    ]
    assert set(table["methods"]["model"]) == set(identity[0]) | {"leakage"}  # no perceptual modules given
    assert all(p["identity"]["leakage"] == 0.0 for p in table["per_pair"])  # the identity adds nothing
    for i in range(2):  # cross_content: content i with the code of content 1 - i, scored against degraded[i, j]
        for j in range(2):
            y_hat = model.synthesize(
                contents[i : i + 1], *model.encode(degraded[1 - i, j : j + 1]), noise=torch.Generator().manual_seed(0)
            )
            pair = next(p for p in table["per_pair"] if (p["content"], p["degradation"]) == (i, j))
            assert pair["cross_content"]["spectrum_db"] == pytest.approx(
                ev.spectrum_distance(y_hat.clamp(0, 1), degraded[i, j : j + 1]).item(), rel=1e-6
            )
            assert pair["cross_content"]["leakage"] == pytest.approx(
                content_leakage(y_hat.clamp(0, 1), contents[i : i + 1], contents[1 - i : 2 - i]).item(), rel=1e-6
            )
    assert table["cross_leakage_by_degradation"] == pytest.approx(
        [np.mean([p["cross_content"]["leakage"] for p in table["per_pair"] if p["degradation"] == j]) for j in range(2)]
    )
    assert table["spectrum_ratio_by_degradation"] == pytest.approx(
        [
            np.mean([p["model"]["spectrum_db"] for p in table["per_pair"] if p["degradation"] == j])
            / np.mean([identity[2 * i + j]["spectrum_db"].item() for i in range(2)])
            for j in range(2)
        ]
    )
    for key in identity[0]:
        expected = np.nanmean([r[key].item() for r in identity])
        assert table["methods"]["identity"][key] == pytest.approx(expected, rel=1e-9)
        assert [p["identity"][key] for p in table["per_pair"]] == pytest.approx(
            [r[key].item() for r in identity], rel=1e-9, nan_ok=True
        )
    assert table["codes"]["global_dim"] == 8 and 0 <= table["codes"]["active_dimensions"] <= 8
    text = ev.format_transfer_table(table)
    assert "mismatched" in text and "cross_content" in text and "spread ratio" in text and "leakage" in text
    assert "model / identity" in text
    with pytest.raises(ValueError, match="m >= 2"):
        ev.transfer_table(model, contents, degraded[:, :1])
