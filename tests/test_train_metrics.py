"""Evaluation metrics against independent implementations (scikit-image PSNR, pytorch_msssim MS-SSIM)."""

import math

import numpy as np
import pytest
import torch

from udm_fast.eval.metrics import evaluate_pairs, ms_ssim, ms_ssim_levels, psnr
from udm_fast.models.udm import UDM


def _pair(size, seed=0, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 3, size, size, generator=g, dtype=torch.float64)
    a = torch.nn.functional.avg_pool2d(a, 3, 1, 1)  # some structure
    b = (a + noise * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return a, b


def test_psnr_matches_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a, b = _pair(24)
    ours = psnr(a, b)
    for i in range(2):
        expected = skimage_metrics.peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=1.0)
        assert ours[i].item() == pytest.approx(expected, rel=1e-12)
    assert math.isinf(psnr(a, a)[0].item())


def _window64():
    """The 11-tap sigma-1.5 Gaussian in float64 (pytorch_msssim builds it in float32), shaped for its API."""
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    return (g / g.sum()).view(1, 1, 1, 11).repeat(3, 1, 1, 1)


@pytest.mark.parametrize("size", [176, 191])
def test_ms_ssim_matches_pytorch_msssim(size):
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    from pytorch_msssim.ssim import _fspecial_gauss_1d

    assert _window64()[0].flatten().numpy() == pytest.approx(_fspecial_gauss_1d(11, 1.5).flatten().numpy(), abs=1e-7)
    a, b = _pair(size, seed=size)
    expected = pytorch_msssim.ms_ssim(a, b, data_range=1.0, size_average=False, win=_window64())
    assert ms_ssim(a, b).numpy() == pytest.approx(expected.numpy(), rel=1e-9)
    assert ms_ssim(a, a).numpy() == pytest.approx(1.0, abs=1e-12)


def test_ms_ssim_small_images_use_fewer_scales_with_renormalised_weights():
    pytest.importorskip("pytorch_msssim")
    assert [ms_ssim_levels(s, s) for s in (11, 21, 22, 44, 88, 176, 1000)] == [1, 1, 2, 3, 4, 5, 5]
    a, b = _pair(48, seed=3)  # three scales
    weights = torch.tensor([0.0448, 0.2856, 0.3001], dtype=torch.float64)
    # independent restatement with pytorch_msssim's single-scale pieces at each scale
    from pytorch_msssim.ssim import _ssim

    win = _window64()
    factors, x, y = [], a, b
    for level in range(3):
        ssim_pc, cs = _ssim(x, y, data_range=1.0, win=win, size_average=False)
        factors.append(torch.relu(cs if level < 2 else ssim_pc))
        x, y = torch.nn.functional.avg_pool2d(x, 2), torch.nn.functional.avg_pool2d(y, 2)
    w = weights / weights.sum()
    expected = torch.prod(torch.stack(factors) ** w[:, None, None], dim=0).mean(dim=1)
    assert ms_ssim(a, b).numpy() == pytest.approx(expected.numpy(), rel=1e-9)
    with pytest.raises(ValueError, match="at least 11x11"):
        ms_ssim(a[..., :10, :10], b[..., :10, :10])
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[..., :20])


def test_evaluate_pairs_reports_every_metric():
    torch.manual_seed(0)
    model = UDM(filters=8, encoder_dim=32, global_dim=16, queue_size=8).eval()
    g = torch.Generator().manual_seed(1)
    pairs = [(f"p{i}", torch.rand(1, 3, 40, 48, generator=g), torch.rand(1, 3, 40, 48, generator=g)) for i in range(2)]
    results = evaluate_pairs(model, pairs, noise_seed=3)
    assert results["count"] == 2 and [r["image"] for r in results["images"]] == ["p0", "p1"]
    row = results["images"][0]
    with torch.no_grad():
        e_g, e_l = model.encode(pairs[0][2], quantize=False)
        e_g_hat, lik_g, _ = model.global_compressor(e_g)
        _, lik_l, _ = model.local_compressor(e_l)
        y_hat = model.synthesize(
            pairs[0][1], e_g_hat, model.local_compressor(e_l)[0], noise=torch.Generator().manual_seed(3)
        ).clamp(0, 1)
    assert row["bits_global_per_image"] == pytest.approx(-torch.log2(lik_g.double()).sum().item(), rel=1e-5)
    assert row["bits_local_per_pixel"] == pytest.approx(-torch.log2(lik_l.double()).sum().item() / (40 * 48), rel=1e-5)
    assert row["psnr"] == pytest.approx(psnr(y_hat, pairs[0][2])[0].item(), rel=1e-6)
    assert results["mean"]["ms_ssim"] == pytest.approx(np.mean([r["ms_ssim"] for r in results["images"]]))
    with pytest.raises(ValueError, match="no image pairs"):
        evaluate_pairs(model, [])
