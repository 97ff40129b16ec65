"""content_leakage on constructed cases: pasted source edges score high; noise, blur and the true degraded
pair score near 0; the partial correlation matches an independent numpy computation."""

import numpy as np
import pytest
import torch

from udm_fast.eval.leakage import LEAKAGE_SIGMA, content_leakage, content_leakage_resized, edge_map, leakage_loss
from udm_fast.synthesis.degrade import gaussian_blur


def shapes_image(seed: int, size: int = 128, count: int = 12) -> torch.Tensor:
    """[1, 3, size, size]: random coloured rectangles on a grey ramp (a photo-like layout of edges)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.3, 0.6, size)[None, :, None]
    image = np.broadcast_to(ramp, (size, size, 3)).copy()
    for _ in range(count):
        top, left = rng.integers(0, size - 16, 2)
        h, w = rng.integers(12, size // 2, 2)
        image[top : top + h, left : left + w] = rng.uniform(0.05, 0.95, 3)
    return torch.from_numpy(image.transpose(2, 0, 1)[None].copy())


@pytest.fixture(scope="module")
def pair():
    return shapes_image(1), shapes_image(2)  # target x, source photo


def test_pasted_source_edges_score_high(pair):
    x, source = pair
    y_hat = x + 0.15 * (source - gaussian_blur(source, 4.0))  # the source's shapes printed into x
    assert float(content_leakage(y_hat, x, source)[0]) > 0.8


def test_pure_noise_scores_near_zero(pair):
    x, source = pair
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(content_leakage(x + 0.05 * noise, x, source)[0])) < 0.1


def test_pure_blur_scores_near_zero(pair):
    x, source = pair
    assert abs(float(content_leakage(gaussian_blur(x, 2.0), x, source)[0])) < 0.1


def test_true_degraded_pair_is_the_reference_level(pair):
    x, source = pair
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y_x = gaussian_blur(x, 1.5) + 0.03 * noise
    assert abs(float(content_leakage(y_x, x, source)[0])) < 0.1


def test_leakage_grows_with_the_pasted_share(pair):
    x, source = pair
    noise = 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    scores = [float(content_leakage(x + noise + a * (source - 0.5), x, source)[0]) for a in (0.0, 0.02, 0.1)]
    assert scores[0] < scores[1] < scores[2]


def test_nothing_added_scores_zero(pair):
    x, source = pair
    assert float(content_leakage(x.clone(), x, source)[0]) == 0.0


def test_matches_numpy_partial_correlation(pair):
    x, source = pair
    y_hat = gaussian_blur(x, 1.0) + 0.05 * (source - 0.5)
    a = edge_map(y_hat - x, LEAKAGE_SIGMA)[0].numpy()
    s = edge_map(source, LEAKAGE_SIGMA)[0].numpy()
    c = edge_map(x, LEAKAGE_SIGMA)[0].numpy()
    design = np.stack([np.ones_like(c), c], axis=1)
    res_a = a - design @ np.linalg.lstsq(design, a, rcond=None)[0]
    res_s = s - design @ np.linalg.lstsq(design, s, rcond=None)[0]
    expected = np.corrcoef(res_a, res_s)[0, 1]
    assert float(content_leakage(y_hat, x, source)[0]) == pytest.approx(expected, abs=1e-9)


def test_edge_map_of_a_ramp_is_its_slope():
    ramp = torch.linspace(0, 1, 64, dtype=torch.float64).expand(1, 3, 64, 64).clone()
    edges = edge_map(ramp, 0.5).reshape(62, 62)
    assert torch.allclose(edges[10:-10, 10:-10], torch.full((42, 42), 1 / 63, dtype=torch.float64), atol=1e-9)


def test_bad_input_is_named(pair):
    x, source = pair
    with pytest.raises(ValueError, match="differ in shape"):
        content_leakage(x, x, source[..., :64])
    with pytest.raises(ValueError, match="y_hat must be a float image batch"):
        content_leakage(x[0], x, source)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        content_leakage(x, x, source, sigma=0)


def test_leakage_loss_matches_the_measure_and_has_gradients(pair):
    x, source = pair
    y_hat = (x + 0.05 * (source - 0.5)).float().requires_grad_(True)
    loss = leakage_loss(y_hat, x.float(), source.float())
    assert float(loss.detach()) == pytest.approx(abs(float(content_leakage(y_hat.detach(), x, source)[0])), abs=1e-4)
    loss.backward()
    assert torch.isfinite(y_hat.grad).all() and y_hat.grad.abs().sum() > 0
    # one gradient step against the loss lowers the leakage
    stepped = (y_hat - 0.5 * y_hat.grad / y_hat.grad.abs().max()).detach()
    assert float(leakage_loss(stepped, x.float(), source.float())) < float(loss.detach())


def test_leakage_loss_is_finite_on_flat_images():
    flat = torch.full((2, 3, 32, 32), 0.5, requires_grad=True)
    loss = leakage_loss(flat, flat.detach(), flat.detach())
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(flat.grad).all()


def test_resized_source_is_scaled_to_the_target(pair):
    x, source = pair
    big_source = torch.nn.functional.interpolate(source, size=(200, 160), mode="bilinear", align_corners=False)
    y_hat = x + 0.1 * (source - 0.5)  # the source's layout at the target's size
    scaled = torch.nn.functional.interpolate(
        big_source, size=(128, 128), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0, 1)
    assert float(content_leakage_resized(y_hat, x, big_source)[0]) == pytest.approx(
        float(content_leakage(y_hat, x, scaled)[0]), abs=1e-12
    )
    assert float(content_leakage_resized(y_hat, x, big_source)[0]) > 0.7
