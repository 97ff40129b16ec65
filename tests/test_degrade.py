"""udm_fast.degrade against independent float64 references (numpy/scipy/Pillow)."""

import dataclasses
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from pillow_jpeg import pillow_round_trip
from scipy import ndimage

from udm_fast.synthesis import degrade as D


def _images(b=2, h=24, w=20, seed=0, dtype=torch.float64):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _scipy_correlate(image, kernel):
    """image [3, H, W], kernel [k, k] (numpy) -> per-channel correlation with mirror (= torch reflect) padding."""
    return np.stack([ndimage.correlate(c, kernel, mode="mirror") for c in image])


# ----------------------------------------------------------------------------- kernels


def test_gaussian_kernel1d_matches_formula():
    sigma = [0.5, 1.7, 3.0]
    k = D.gaussian_kernel1d(sigma, 9, dtype=torch.float64).numpy()
    offsets = np.arange(-9, 10)
    for row, s in zip(k, sigma):
        expected = np.exp(-(offsets**2) / (2 * s * s)) * (np.abs(offsets) <= math.ceil(3 * s))
        np.testing.assert_allclose(row, expected / expected.sum(), rtol=1e-12, atol=0)
    assert D.gaussian_kernel1d([1.0]).shape == (1, 7)  # radius ceil(3 sigma)
    np.testing.assert_array_equal(D.gaussian_kernel1d([0.0], 2, dtype=torch.float64)[0].numpy(), [0, 0, 1, 0, 0])


def test_gaussian_kernel2d_sums_to_one():
    k = D.gaussian_kernel([0.6, 2.2], dtype=torch.float64)
    torch.testing.assert_close(k.sum(dim=(1, 2)), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(k, k.transpose(1, 2))


def _dense_motion_kernel(length, angle, radius, samples=200_001):
    """Line integral of the bilinear tent along the segment, by a dense numpy Riemann sum."""
    t = np.linspace(-length / 2, length / 2, samples)
    rows, cols = -t * np.sin(angle), t * np.cos(angle)
    grid = np.arange(-radius, radius + 1)
    tr = np.clip(1 - np.abs(grid[None, :] - rows[:, None]), 0, None)
    tc = np.clip(1 - np.abs(grid[None, :] - cols[:, None]), 0, None)
    k = tr.T @ tc / samples
    return k / k.sum()


@pytest.mark.parametrize("length,angle", [(3.0, 0.0), (7.5, 0.4), (12.0, math.pi / 2), (20.3, 2.6)])
def test_motion_kernel_matches_dense_line_integral(length, angle):
    radius = D.motion_radius(length)
    k = D.motion_kernel([length], [angle], dtype=torch.float64)[0].numpy()
    assert k.shape == (2 * radius + 1,) * 2
    np.testing.assert_allclose(k, _dense_motion_kernel(length, angle, radius), atol=2e-3 / length)
    assert k.min() >= 0 and abs(k.sum() - 1) < 1e-12
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)  # point-symmetric: correlation = convolution


def test_motion_kernel_moments_and_orientation():
    length, angle = 15.0, 0.7
    k = D.motion_kernel([length], [angle], dtype=torch.float64)[0].numpy()
    r = k.shape[0] // 2
    rows, cols = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    along = cols * np.cos(angle) - rows * np.sin(angle)
    across = cols * np.sin(angle) + rows * np.cos(angle)
    assert abs((k * rows).sum()) < 1e-12 and abs((k * cols).sum()) < 1e-12
    # uniform segment (variance L^2/12) smoothed by a tent (variance 1/6 per axis)
    assert (k * along**2).sum() == pytest.approx(length**2 / 12 + 1 / 6, rel=0.02)
    assert (k * across**2).sum() == pytest.approx(1 / 6, rel=0.2)
    horizontal = D.motion_kernel([6.0], [0.0], dtype=torch.float64)[0]
    assert torch.count_nonzero(horizontal.sum(dim=1)) == 1  # one row
    diagonal = D.motion_kernel([6.0], [math.pi / 4], dtype=torch.float64)[0]
    c = diagonal.shape[0] // 2
    assert diagonal[c - 2, c + 2] > 0.05 and diagonal[c - 2, c - 2] == 0  # up-right as displayed
    assert torch.equal(
        D.motion_kernel([0.0], [1.0], dtype=torch.float64)[0],
        torch.eye(3, dtype=torch.float64)[1:2].T @ torch.eye(3, dtype=torch.float64)[1:2],
    )


# ----------------------------------------------------------------------------- filtering ops


def test_filter2d_is_reflect_padded_correlation():
    x = _images(2, 17, 13)
    kernels = torch.rand(2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = D.filter2d(x, kernels)
    for b in range(2):
        np.testing.assert_allclose(out[b].numpy(), _scipy_correlate(x[b].numpy(), kernels[b].numpy()), atol=1e-12)


def test_gaussian_blur_matches_scipy():
    x = _images(3, 32, 28)
    sigma = [0.5, 1.3, 2.9]
    out = D.gaussian_blur(x, sigma)
    for b, s in enumerate(sigma):  # each image truncated at its own ceil(3 sigma), whatever the batch holds
        truncate = math.ceil(3 * s) / s
        expected = np.stack([ndimage.gaussian_filter(c, s, mode="mirror", truncate=truncate) for c in x[b].numpy()])
        np.testing.assert_allclose(out[b].numpy(), expected, atol=1e-12)
    assert torch.equal(D.gaussian_blur(x, 0.0), x)


def test_motion_blur_matches_scipy():
    x = _images(2, 30, 26)
    length, angle = [4.0, 11.0], [0.3, 2.0]
    out = D.motion_blur(x, length, angle)
    kernels = D.motion_kernel(length, angle, dtype=torch.float64)
    for b in range(2):
        np.testing.assert_allclose(out[b].numpy(), _scipy_correlate(x[b].numpy(), kernels[b].numpy()), atol=1e-12)


def test_changing_kernel_is_per_pixel_kernel_interpolation():
    x = _images(1, 32, 32)
    mask = D.render_masks([{"kind": "ramp", "angle": 0.3, "offset": 0.0, "width": 1.0}], 32, 32, dtype=torch.float64)
    out = D.gaussian_blur(x, 2.0, mask=mask, sigma_outside=0.7)[0].numpy()
    r = 6
    k_in = D.gaussian_kernel([2.0], r, dtype=torch.float64)[0].numpy()
    k_out = D.gaussian_kernel([0.7], r, dtype=torch.float64)[0].numpy()
    padded = np.pad(x[0].numpy(), ((0, 0), (r, r), (r, r)), mode="reflect")
    m = mask[0, 0].numpy()
    for i, j in [(0, 0), (5, 20), (16, 16), (31, 9), (27, 30)]:
        kernel = m[i, j] * k_in + (1 - m[i, j]) * k_out
        expected = (padded[:, i : i + 2 * r + 1, j : j + 2 * r + 1] * kernel).sum(axis=(1, 2))
        np.testing.assert_allclose(out[:, i, j], expected, atol=1e-12)
    region = D.render_masks(
        [{"kind": "ellipse", "center": [0.0, 0.0], "radii": [0.3, 0.3], "angle": 0.0, "softness": 0.3}],
        32,
        32,
        dtype=torch.float64,
    )
    blurred = D.motion_blur(x, 9.0, 1.0, mask=region)
    outside = region[0, 0] == 0
    assert outside.any() and torch.equal(blurred[0][:, outside], x[0][:, outside])


def test_gaussian_noise_statistics_and_mask():
    x = torch.full((2, 3, 96, 96), 0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    sigma = 0.05
    n = (D.gaussian_noise(x, sigma, generator=g) - x).numpy()
    count = n.size
    assert abs(n.mean()) < 4 * sigma / math.sqrt(count)
    assert n.std() == pytest.approx(sigma, rel=4 * math.sqrt(2 / count) + 1e-3)
    channels = n.transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.abs(np.corrcoef(channels) - np.eye(3)).max() < 0.03  # independent channels
    mask = torch.zeros(2, 1, 96, 96, dtype=torch.float64)
    mask[..., :48] = 1.0
    masked = D.gaussian_noise(x, [0.02, 0.1], mask=mask, generator=g) - x
    assert torch.equal(masked[..., 48:], torch.zeros_like(masked[..., 48:]))
    assert masked[0, ..., :48].std().item() == pytest.approx(0.02, rel=0.05)
    assert masked[1, ..., :48].std().item() == pytest.approx(0.1, rel=0.05)
    clipped = D.gaussian_noise(torch.zeros(1, 3, 8, 8), 0.5, generator=g)
    assert clipped.min() >= 0 and (clipped == 0).any()
    again = D.gaussian_noise(x, sigma, generator=torch.Generator().manual_seed(0)) - x
    np.testing.assert_array_equal(again.numpy(), n)


def test_adjust_contrast_matches_numpy():
    x = _images(2, 10, 12)
    contrast, ev = [0.6, 1.4], [-0.5, 0.8]
    out = D.adjust_contrast(x, contrast, ev).numpy()
    for b in range(2):
        img = x[b].numpy()
        mu = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).mean()
        expected = np.clip(2 ** (ev[b] / 2.2) * (mu + contrast[b] * (img - mu)), 0, 1)
        np.testing.assert_allclose(out[b], expected, atol=1e-12)
    torch.testing.assert_close(D.adjust_contrast(x, 1.0, 0.0), x, atol=1e-15, rtol=0)


@pytest.mark.parametrize("quality", [10, 55, 95])
def test_jpeg_equals_pillow_round_trip(quality):
    pixels = torch.randint(0, 256, (2, 3, 24, 40), generator=torch.Generator().manual_seed(quality), dtype=torch.uint8)
    pixels[1] = pixels[1] // 4 + 96  # smoother image
    out = D.jpeg(pixels.float() / 255, quality)
    for b in range(2):
        expected = pillow_round_trip(pixels[b].permute(1, 2, 0).numpy(), quality).transpose(2, 0, 1)
        np.testing.assert_array_equal(np.rint(out[b].numpy() * 255).astype(np.uint8), expected)
    assert out.dtype == torch.float32
    per_image = D.jpeg(pixels.double() / 255, [quality, 90])
    assert per_image.dtype == torch.float64 and torch.equal(per_image[0].float(), out[0])


# ----------------------------------------------------------------------------- masks


def test_masks_are_smooth_and_in_unit_range():
    r = D._Uniforms(torch.rand(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64).tolist())
    descriptions = [D._random_mask(r, kind) for kind in D.MASK_KINDS for _ in range(4)]
    steps = {}
    for size in (64, 128):
        m = D.render_masks(descriptions, size, size, dtype=torch.float64)
        assert m.shape == (len(descriptions), 1, size, size)
        assert m.min() >= 0 and m.max() <= 1
        steps[size] = torch.maximum(m.diff(dim=2).abs().amax(dim=(1, 2, 3)), m.diff(dim=3).abs().amax(dim=(1, 2, 3)))
    assert steps[128].max() < 0.3  # no jumps
    assert (steps[128] <= 0.6 * steps[64] + 1e-9).all()  # resolution-independent shape: twice the pixels, half the step
    assert (m.amax(dim=(1, 2, 3)) - m.amin(dim=(1, 2, 3)) > 0.2).all()  # not flat


def test_mask_kinds_follow_their_definitions():
    ramp = D.render_masks([{"kind": "ramp", "angle": 0.0, "offset": 0.0, "width": 1.0}], 4, 8, dtype=torch.float64)
    u = (np.arange(8) * 2 + 1) / 8 - 1
    t = np.clip(0.5 + u, 0, 1)
    np.testing.assert_allclose(ramp[0, 0].numpy(), np.broadcast_to(t * t * (3 - 2 * t), (4, 8)), atol=1e-12)
    ellipse = D.render_masks(
        [{"kind": "ellipse", "center": [0.5, -0.5], "radii": [0.2, 0.3], "angle": 0.0, "softness": 0.2}],
        40,
        40,
        dtype=torch.float64,
    )[0, 0]
    assert ellipse[9, 29] == 1 and ellipse[30, 10] == 0  # centre at column 30, row 10 of 40
    grid = [[0.1, 0.9, 0.3], [0.5, 0.2, 0.8], [0.7, 0.4, 0.6]]
    field = D.render_masks([{"kind": "field", "grid": grid}], 21, 21, dtype=torch.float64)[0, 0]
    assert field[0, 0].item() == pytest.approx(0.1) and field[20, 20].item() == pytest.approx(0.6)
    assert field[10, 10].item() == pytest.approx(0.2)


# ----------------------------------------------------------------------------- the pipeline


def test_degrade_is_deterministic_and_keeps_dtype():
    x = _images(4, 32, 32, dtype=torch.float32)
    y1, p1 = D.degrade(x, generator=7)
    y2, p2 = D.degrade(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(y1, y2) and p1 == p2
    y3, p3 = D.degrade(x, generator=8)
    assert not torch.equal(y1, y3) and p1 != p3
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert D.degrade(x[:2], generator=7)[1] == p1[:2]  # image b's params do not depend on the batch size
    torch.manual_seed(3)
    a = D.degrade(x)[0]
    torch.manual_seed(3)
    assert torch.equal(a, D.degrade(x)[0])
    half = D.degrade(x.bfloat16(), generator=7)[0]
    assert half.dtype == torch.bfloat16 and half.min() >= 0 and half.max() <= 1


def test_degrade_covers_all_16_combinations_in_random_order():
    x = torch.rand(320, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    config = D.DegradeConfig(motion_length=(3.0, 9.0), blur_sigma=(0.5, 2.0))
    y, params = D.degrade(x, generator=0, config=config)
    combos = {frozenset(op["op"] for op in p["ops"]) for p in params}
    assert len(combos) == 16
    orders = {tuple(op["op"] for op in p["ops"]) for p in params if len(p["ops"]) == 2}
    assert len(orders) == 12  # every ordered pair of two distinct ops
    qualities = [p["jpeg_quality"] for p in params]
    assert min(qualities) >= 30 and max(qualities) <= 95 and len(set(qualities)) > 30
    varying = [op for p in params for op in p["ops"] if "inhomogeneous" in op]
    assert 0.1 < len(varying) / sum(len(p["ops"]) for p in params) < 0.3
    assert {op["inhomogeneous"]["mode"] for op in varying} == {"strength", "region", "kernel"}
    assert all(op["op"] in D.BLUR_OPS for op in varying if op["inhomogeneous"]["mode"] == "kernel")
    for p in params:
        for op in p["ops"]:
            if op["op"] == "noise":
                assert 1 / 255 <= op["sigma"] <= 25 / 255
            if op["op"] == "motion_blur":
                assert 3 <= op["length"] <= 9 and 0 <= op["angle"] <= math.pi
    assert torch.equal(y, (y * 255).round() / 255)  # JPEG output is 8-bit


def _replay(x, params):
    """Recomputes degrade's output from its params with the per-op functions (no noise, no JPEG)."""
    out = []
    for b, p in enumerate(params):
        img = x[b : b + 1]
        for op in p["ops"]:
            v = op.get("inhomogeneous")
            mask = None if v is None else D.render_masks([v["mask"]], *img.shape[2:], dtype=img.dtype)
            extra = {} if v is None or v["mode"] != "kernel" else {k: v[k] for k in v if k.endswith("_outside")}
            if op["op"] == "gaussian_blur":
                img = D.gaussian_blur(img, op["sigma"], mask=mask, **extra)
            elif op["op"] == "motion_blur":
                img = D.motion_blur(img, op["length"], op["angle"], mask=mask, **extra)
            else:
                img = D.adjust_contrast(img, op["contrast"], op["exposure_ev"], mask=mask)
        out.append(img)
    return torch.cat(out)


def test_degrade_equals_replay_of_its_params():
    x = _images(24, 28, 28)
    config = D.DegradeConfig(
        p_noise=0.0, p_jpeg=0.0, p_inhomogeneous=0.5, p_gaussian_blur=0.7, p_motion_blur=0.7, p_contrast=0.7
    )
    y, params = D.degrade(x, generator=5, config=config)
    assert all(p["jpeg_quality"] is None for p in params)
    torch.testing.assert_close(y, _replay(x, params), atol=1e-12, rtol=0)


def test_jpeg_is_last_and_alone_when_other_ops_are_off():
    x = _images(3, 16, 16, dtype=torch.float32)
    config = D.DegradeConfig(p_noise=0, p_gaussian_blur=0, p_motion_blur=0, p_contrast=0)
    y, params = D.degrade(x, generator=1, config=config)
    assert all(p["ops"] == [] for p in params)
    assert torch.equal(y, D.jpeg(x, [p["jpeg_quality"] for p in params]))


def test_p_clean_skips_every_op_and_keeps_the_other_draws():
    x = _images(64, 16, 16, dtype=torch.float32)
    busy = dict(p_noise=0.9, p_gaussian_blur=0.9, p_motion_blur=0.9, p_contrast=0.9, p_jpeg=0.5)
    _, base = D.degrade(x, generator=7, config=D.DegradeConfig(**busy))
    _, same = D.degrade(x, generator=7, config=D.DegradeConfig(**busy, p_clean=0.0))
    assert same == base  # the default leaves every plan as it was
    y, cleaned = D.degrade(x, generator=7, config=D.DegradeConfig(**busy, p_clean=0.5))
    skipped = [b for b, p in enumerate(cleaned) if p["ops"] == [] and base[b]["ops"] != []]
    assert 16 <= len(skipped) <= 48  # about half of the 64 images, each of which had ops drawn
    for b, (p, q) in enumerate(zip(cleaned, base)):
        assert p["jpeg_quality"] == q["jpeg_quality"]  # JPEG is still drawn as before
        assert p["ops"] in ([], q["ops"])
        if p["ops"] == [] and p["jpeg_quality"] is None:
            assert torch.equal(y[b], x[b])
    _, all_clean = D.degrade(x, generator=7, config=D.DegradeConfig(**busy, p_clean=1.0))
    assert all(p["ops"] == [] for p in all_clean)


def test_degrade_noise_only_adds_expected_noise():
    x = torch.full((2, 3, 64, 64), 0.5)
    config = D.DegradeConfig(p_noise=1, p_gaussian_blur=0, p_motion_blur=0, p_contrast=0, p_jpeg=0, p_inhomogeneous=0)
    y, params = D.degrade(x, generator=2, config=config)
    for b in range(2):
        assert (y[b] - x[b]).std().item() == pytest.approx(params[b]["ops"][0]["sigma"], rel=0.05)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.rand(3, 8, 8), r"\[B, 3, H, W\]"),
        (torch.rand(1, 4, 8, 8), r"\[B, 3, H, W\]"),
        ((torch.rand(1, 3, 8, 8) * 255).to(torch.uint8), "float tensor"),
        (torch.rand(1, 3, 8, 8) * 2 - 0.5, r"\[0, 1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (np.zeros((1, 3, 8, 8)), "torch.Tensor"),
    ],
)
def test_bad_images_raise(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        D.degrade(bad, generator=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"p_noise": 1.5}, "probability"),
        ({"noise_sigma": (0.1, 0.05)}, "above high"),
        ({"noise_sigma": (0.0, 0.1)}, "> 0"),
        ({"jpeg_quality": (0, 90)}, ">= 1"),
        ({"jpeg_quality": (30.5, 90)}, "integers"),
        ({"motion_length": (3.0,)}, "pair"),
        ({"contrast": (float("nan"), 1.0)}, "finite"),
        ({"p_noise": True}, "probability"),
        ({"p_clean": -0.1}, "p_clean must be a probability"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.DegradeConfig(**kwargs)


def test_other_bad_arguments_raise():
    x = _images(2, 16, 16)
    with pytest.raises(ValueError, match="unknown key"):
        D.DegradeConfig.from_dict({"p_nosie": 0.5})
    assert D.DegradeConfig.from_dict({"blur_sigma": [1, 2]}).blur_sigma == (1, 2)
    with pytest.raises(TypeError, match="generator"):
        D.degrade(x, generator="seed")
    with pytest.raises(TypeError, match="DegradeConfig"):
        D.degrade(x, config={"p_noise": 1})
    with pytest.raises(ValueError, match="too small"):
        D.motion_blur(x, 40.0, 0.0)
    with pytest.raises(ValueError, match="one value per image"):
        D.gaussian_blur(x, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=">= 0"):
        D.gaussian_noise(x, -0.1)
    with pytest.raises(ValueError, match="mask"):
        D.gaussian_blur(x, 1.0, mask=torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match="needs a mask"):
        D.gaussian_blur(x, 1.0, sigma_outside=2.0)
    with pytest.raises(ValueError, match="quality"):
        D.jpeg(x, 101)
    with pytest.raises(ValueError, match="unknown mask kind"):
        D.render_masks([{"kind": "star"}], 8, 8)
    with pytest.raises(TypeError, match="got a bool"):
        D.jpeg(x, True)
    with pytest.raises(ValueError, match=r"seed must lie in \[-2\*\*63, 2\*\*64\)"):
        D.degrade(x, generator=2**70)
    for impl in ("tensor", "pillow"):
        with pytest.raises(ValueError, match="8x0 have no pixels"):
            D.jpeg(torch.rand(1, 3, 8, 0), 50, impl=impl)


def test_degrade_refuses_images_too_small_for_the_config_whatever_the_seed():
    radius = D.largest_radius(D.DegradeConfig())
    assert radius == D.motion_radius(D.DegradeConfig().motion_length[1])
    small, enough = _images(2, radius, radius + 5), _images(2, radius + 1, radius + 1)
    for seed in range(6):  # a seed that draws no (or a short) blur would otherwise pass
        with pytest.raises(ValueError, match=f"too small for this config, whose blur kernels reach radius {radius}"):
            D.degrade(small, generator=seed)
        assert D.degrade(enough, generator=seed)[0].shape == enough.shape
    no_blur = D.DegradeConfig(p_gaussian_blur=0.0, p_motion_blur=0.0)
    assert D.largest_radius(no_blur) == 0
    assert D.degrade(_images(1, 4, 4), config=no_blur, generator=0)[0].shape == (1, 3, 4, 4)


def test_inputs_that_require_grad_raise_no_warning():
    x = _images(1, 16, 16, dtype=torch.float32).requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blurred = D.gaussian_blur(x, 1.0)
        y, params = D.degrade(x, generator=3)
    # the same result as without requires_grad: scipy's float64 blur, and degrade of the detached input
    expected = np.stack(
        [ndimage.gaussian_filter(c, 1.0, mode="mirror", truncate=3.0) for c in x[0].detach().double().numpy()]
    )
    np.testing.assert_allclose(blurred[0].detach().double().numpy(), expected, atol=1e-6)
    y_plain, params_plain = D.degrade(x.detach(), generator=3)
    assert torch.equal(y.detach(), y_plain) and params == params_plain
    # and the blur is differentiable: autograd against finite differences in float64
    assert torch.autograd.gradcheck(lambda t: D.gaussian_blur(t, 1.2), (_images(1, 9, 8).requires_grad_(True),))


def test_all_combinations_of_ops_run_on_tiny_batches():
    x = _images(1, 16, 16, dtype=torch.float32)
    for flags in itertools.product((0.0, 1.0), repeat=4):
        config = D.DegradeConfig(
            p_noise=flags[0],
            p_gaussian_blur=flags[1],
            p_motion_blur=flags[2],
            p_contrast=flags[3],
            motion_length=(3.0, 5.0),
            p_inhomogeneous=1.0,
        )
        y, params = D.degrade(x, generator=0, config=config)
        assert len(params[0]["ops"]) == int(sum(flags)) and y.shape == x.shape
        assert {op["op"] for op in params[0]["ops"]} == {name for name, on in zip(D.OPS, flags) if on}
        assert torch.equal(y, (y * 255).round() / 255)  # JPEG (on by default) leaves 8-bit values
        # without JPEG the output is exactly its params replayed by the per-op functions (noise aside)
        y_raw, params_raw = D.degrade(x, generator=0, config=dataclasses.replace(config, p_jpeg=0.0))
        if flags[0]:
            (noise,) = [op for op in params_raw[0]["ops"] if op["op"] == "noise"]
            assert 1 / 255 <= noise["sigma"] <= 25 / 255
        else:
            torch.testing.assert_close(y_raw, _replay(x, params_raw), atol=1e-5, rtol=0)
