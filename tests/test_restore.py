"""udm_fast.restore: the prior protocol with a small StyleGAN-like generator, the inverter on constructed
problems, DPS on a Gaussian toy problem with a known posterior, known operators and `udm-fast restore`."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from udm_fast import cli, default_model
from udm_fast.models.pretrained import DEFAULT_WEIGHTS
from udm_fast.restore import (
    DeepImagePrior,
    DiffusersDenoiser,
    Identity,
    KnownOperator,
    LearnedRedegrader,
    LowBandCorrected,
    Phase,
    Prior,
    PyramidL1,
    StyleGANPrior,
    default_phases,
    dps_sample,
    gaussian_lowpass,
    invert,
    operators,
    redegrader_measurement,
    restore,
)
from udm_fast.utils.io import save_image


class TinySynthesis(nn.Module):
    """A learned 4x4 constant, ``layers`` layers (2x upsampling) of ``convs`` style-modulated 3x3
    convolutions, each modulated by s = A_k(w_k), an affine map of its own style input; with ``noise`` each
    layer adds a learned multiple of its noise input [B, 1, 2^(l+3), 2^(l+3)]. styles [B, layers * convs, D]."""

    def __init__(self, dim: int, channels: int, layers: int, convs: int, noise: bool, generator: torch.Generator):
        super().__init__()
        self.layers, self.convs, self.noise = layers, convs, noise
        self.const = nn.Parameter(torch.randn(1, channels, 4, 4, generator=generator))
        self.affine = nn.ModuleList(nn.Linear(dim, channels) for _ in range(layers * convs))
        self.conv = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(layers * convs))
        self.rgb = nn.Conv2d(channels, 3, 1)
        self.noise_strength = nn.Parameter(torch.full((layers,), 0.3)) if noise else None

    def noise_shapes(self, batch: int) -> list:
        return [(batch, 1, 2 ** (layer + 3), 2 ** (layer + 3)) for layer in range(self.layers)]

    def forward(self, styles: torch.Tensor, noise: list = ()) -> torch.Tensor:
        h = self.const.expand(styles.shape[0], -1, -1, -1)
        for layer in range(self.layers):
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            if self.noise:
                h = h + self.noise_strength[layer] * noise[layer]
            for i in range(self.convs):
                k = layer * self.convs + i
                s = self.affine[k](styles[:, k])
                h = F.leaky_relu(self.conv[k](h * s[:, :, None, None]), 0.2)
        return torch.sigmoid(self.rgb(h))


def tiny_stylegan(
    dim: int = 8, channels: int = 8, layers: int = 2, convs: int = 2, seed: int = 0, noise: bool = False
) -> StyleGANPrior:
    """A random StyleGAN-like generator (mapping MLP z -> w, ``TinySynthesis``) through ``StyleGANPrior``:
    W [B, D], W+ [B, layers, D], W++ [B, layers, convs, D]; images of 4 * 2^layers pixels a side."""
    g = torch.Generator().manual_seed(seed)
    mapping = nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.2), nn.Linear(dim, dim))
    synthesis = TinySynthesis(dim, channels, layers, convs, noise, g)
    with torch.no_grad():
        for p in [*mapping.parameters(), *synthesis.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 1 else 1.0 / max(1, p[0].numel()) ** 0.5))
        for a in synthesis.affine:
            a.bias += 1.0
    return StyleGANPrior(
        mapping,
        synthesis,
        layers,
        z_dim=dim,
        styles_per_layer=convs,
        noise_shapes=synthesis.noise_shapes if noise else None,
    )


def _target(prior: StyleGANPrior, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(w*, G(w*)): a latent from the mapping network and its image (a prior without noise inputs)."""
    prior.to(dtype)
    with torch.no_grad():
        z = torch.randn(1, prior.z_dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        w = prior.mapping(z)
        return w, prior.synthesis(w[:, None].expand(-1, prior.num_layers * prior.styles_per_layer, -1))


def test_expansion_keeps_the_image_and_phases_visit_every_space():
    prior = tiny_stylegan()
    y = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    prior.initialise(y, torch.Generator().manual_seed(0))
    with torch.no_grad():
        prior.w += 0.3 * torch.randn(prior.w.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    images = [prior().detach()]
    for space, shape in (("W+", (2, 2, 8)), ("W++", (2, 2, 2, 8))):
        prior.enter(space)
        assert tuple(prior.w.shape) == shape
        images.append(prior().detach())
    for image in images[1:]:
        torch.testing.assert_close(image, images[0], rtol=0, atol=1e-14)
    phases = default_phases(prior, 40)
    assert [p.name for p in phases] == ["V", "W", "W+", "W++"]
    assert [p.space for p in phases] == ["W", "W", "W+", "W++"]
    assert phases[0].code_lr == 0 and all(p.code_lr > 0 for p in phases[1:]) and sum(p.steps for p in phases) == 40


def test_stylegan_prior_optimises_noise_inputs_in_w_plus_plus_only_and_never_its_weights():
    """Noise inputs: fixed through V/W and W+, optimised in W++ (the image is kept on entering it); the
    networks' weights do not move, get no gradient and keep their requires_grad flags; start="z" draws one
    w per image (the mean start gives every image the same); spaces are entered coarse to fine only."""
    prior = tiny_stylegan(noise=True)
    y = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = [p.detach().clone() for p in prior.parameters()]
    seen = []
    phases = [Phase("W", "W", 4, lr=0.05), Phase("W+", "W+", 4, lr=0.05), Phase("W++", "W++", 4, lr=0.05)]
    mse = lambda a, b: (a - b).pow(2).mean()
    result = invert(
        y,
        prior,
        Identity(),
        phases,
        distance=mse,
        generator=torch.Generator().manual_seed(0),
        progress=lambda done, loss: seen.append([n.detach().clone() for n in prior.noise]),
    )
    start = seen[0]
    assert all(all(torch.equal(a, b) for a, b in zip(step, start)) for step in seen[:8])
    assert all(not torch.equal(a, b) for a, b in zip(seen[-1], start))
    assert set(result.latent) == {"W++", "noise"} and result.latent["W++"].shape == (2, 2, 2, 8)
    for before, after in zip(weights, prior.parameters()):
        assert torch.equal(before, after) and after.grad is None and after.requires_grad
    with torch.no_grad():
        before = prior()
        prior.enter("W++")
        torch.testing.assert_close(prior(), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot enter 'W' from 'W\\+\\+'"):
        prior.enter("W")
    prior.initialise(y, torch.Generator().manual_seed(0))
    assert torch.equal(prior.w[0], prior.w[1])
    drawn = StyleGANPrior(
        prior.mapping,
        prior.synthesis,
        2,
        z_dim=8,
        styles_per_layer=2,
        start="z",
        noise_shapes=prior.synthesis.noise_shapes,
    )
    drawn.initialise(y, torch.Generator().manual_seed(0))
    assert not torch.equal(drawn.w[0], drawn.w[1]) and drawn().shape == y.shape


def test_inverter_recovers_a_known_latent():
    """y = G(w*): the image is matched to 1e-3 of the start's error; the latent (not identifiable exactly: the
    tiny generator maps nearby w to nearly the same image) ends much closer to w* than it started."""
    prior = tiny_stylegan()
    w_true, y = _target(prior, seed=3)
    result = invert(
        y,
        prior,
        Identity(),
        [Phase("W", "W", 600, lr=0.05)],
        distance=lambda a, b: (a - b).pow(2).mean(),
        generator=torch.Generator().manual_seed(0),
    )
    prior.initialise(y, torch.Generator().manual_seed(0))
    start_error = (prior().detach() - y).pow(2).mean()
    final_error = (result.image - y).pow(2).mean()
    assert final_error < 1e-3 * start_error
    assert torch.linalg.vector_norm(result.latent["W"] - w_true) < 0.5 * torch.linalg.vector_norm(
        prior.w.detach() - w_true
    )
    losses = result.record[0].losses
    assert len(losses) == 600 and losses[-1] < 1e-3 * losses[0]


def test_non_blind_inversion_through_a_known_blur_beats_fitting_y():
    """With the true blur as operator the latent of the sharp image is found; fitting y itself finds a blurry one."""
    prior = tiny_stylegan(layers=3)
    _, x = _target(prior, seed=5)
    blur = operators.blur(1.5)
    y = blur(x)
    phases = [Phase("W", "W", 150, lr=0.05), Phase("W+", "W+", 150, lr=0.02)]
    mse = lambda a, b: (a - b).pow(2).mean()
    known = invert(y, prior, KnownOperator(blur), phases, distance=mse, generator=torch.Generator().manual_seed(0))
    naive = invert(y, prior, Identity(), phases, distance=mse, generator=torch.Generator().manual_seed(0))
    err_known, err_naive = mse(known.image, x), mse(naive.image, x)
    assert err_known < 0.5 * err_naive
    assert err_known < 0.5 * mse(y, x)


def test_early_stopping_ends_a_phase_on_a_plateau():
    prior = tiny_stylegan()
    _, y = _target(prior, seed=3)
    phase = Phase("W", "W", 2000, lr=0.05, patience=20, tol=1e-2)
    result = invert(y, prior, Identity(), [phase], distance=lambda a, b: (a - b).pow(2).mean())
    record = result.record[0]
    assert record.stopped_early and 20 <= len(record.losses) < 2000
    best = min(record.losses)
    assert all(v >= best * (1 - 1e-2) for v in record.losses[-20:])


def test_restore_stops_early_by_patience_and_tol():
    """tol 0.5 asks every step to halve the best loss, which the fit never does: each phase ends after its
    first step and ``patience`` more; patience 0 runs every step; bad values are refused."""
    model = default_model()
    y = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    prior = DeepImagePrior(width=8, input_channels=4)
    early = restore(y, model, prior=prior, steps=20, distance=PyramidL1(), patience=2, tol=0.5)
    assert [(r.name, len(r.losses), r.stopped_early) for r in early.record] == [("V", 3, True), ("theta", 3, True)]
    full = restore(y, model, prior=prior, steps=20, distance=PyramidL1())
    assert [(len(r.losses), r.stopped_early) for r in full.record] == [(5, False), (15, False)]
    assert all(p.tol == 0.25 and p.patience == 4 for p in default_phases(prior, 8, patience=4, tol=0.25))
    with pytest.raises(ValueError, match="patience must be >= 0"):
        restore(y, model, prior=prior, steps=20, patience=-1)
    with pytest.raises(ValueError, match=r"tol must be in \[0, 1\)"):
        restore(y, model, prior=prior, steps=20, patience=2, tol=1.0)


class PixelPrior(Prior):
    """The image itself as latent, sigmoid(logits) with logits started at 0: fits anything, noise included."""

    spaces = ("pixels",)

    def initialise(self, y, generator=None):
        self.logits = torch.zeros_like(y, requires_grad=True)

    def enter(self, space):
        pass

    def variables(self):
        return [self.logits]

    def latent(self):
        return {"pixels": self.logits.detach().clone()}

    def forward(self):
        return torch.sigmoid(self.logits)


def test_discrepancy_principle_stops_at_the_first_iterate_with_residual_sigma_squared():
    """y = blur(x) + sigma n, the known blur as operator (no noise), a prior that can fit the noise too and
    the pyramid distance (so the loss is not the residual): the inversion ends at the first iterate whose
    mean squared residual |y - blur(G)|^2 per pixel is <= sigma^2, returns that iterate, and runs no later
    phase; without the rule the fit goes on well below sigma^2 (into the noise)."""
    sigma = 0.05
    x = F.avg_pool2d(torch.rand(1, 3, 36, 36, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 5, 1)
    blur = operators.blur(1.0)
    y = blur(x) + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    prior = PixelPrior()
    residuals = []
    phases = [Phase("a", "pixels", 400, lr=0.05), Phase("b", "pixels", 400, lr=0.05)]
    result = invert(
        y,
        prior,
        KnownOperator(blur),
        phases,
        distance=PyramidL1(),
        discrepancy_sigma=sigma,
        progress=lambda done, loss: residuals.append(float((y - blur(prior().detach())).pow(2).mean())),
    )
    assert [(r.name, r.stopped_early, r.discrepancy_reached) for r in result.record] == [("a", True, True)]
    assert 5 < len(residuals) < 400
    # progress runs after the step: entry k is the iterate that step k + 1 evaluates; the last one took no step
    assert residuals[-1] == residuals[-2] <= sigma**2 and all(r > sigma**2 for r in residuals[:-2])
    assert float((y - blur(result.image)).pow(2).mean()) == pytest.approx(residuals[-1], rel=1e-12)
    unstopped = invert(y, PixelPrior(), KnownOperator(blur), phases, distance=PyramidL1())
    assert float((y - blur(unstopped.image)).pow(2).mean()) < 0.75 * sigma**2
    with pytest.raises(ValueError, match="discrepancy_sigma must be positive"):
        invert(y, PixelPrior(), Identity(), phases, discrepancy_sigma=0.0)


def test_learned_redegrader_v_phase_freezes_the_code_and_later_phases_move_it():
    model = default_model()
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    red = LearnedRedegrader(model, y, torch.Generator().manual_seed(0))
    e_g0 = model.encode(y)[0].detach().clone()
    torch.testing.assert_close(red.e_g.detach(), e_g0)
    assert [tuple(n.shape) for n in red.noise] == [tuple(s) for s in model.noise_shapes(1, 32, 32)]
    prior = DeepImagePrior(width=8, input_channels=4)
    weights_before = [p.detach().clone() for p in model.parameters()]
    v = invert(
        y, prior, red, [Phase("V", "theta", 3, lr=0.01, code_lr=0.0)], generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(v.code["e_g"], e_g0, rtol=0, atol=0)
    w = invert(y, prior, red, [Phase("theta", "theta", 3, lr=0.01, code_lr=0.05)])
    assert not torch.equal(w.code["e_g"], e_g0) and not torch.equal(w.code["noise"][0], v.code["noise"][0])
    for before, after in zip(weights_before, model.parameters()):
        assert torch.equal(before, after) and after.grad is None
    assert w.image.shape == y.shape and w.redegraded.shape == y.shape


def _tiny_udm():
    """A small randomly initialised degradation model (eval mode)."""
    from udm_fast.models.udm import UDM, UDMConfig

    torch.manual_seed(0)
    return UDM(UDMConfig(filters=8, encoder_dim=32, global_dim=16, queue_size=16)).eval()


def test_default_schedule_with_a_stylegan_prior_and_the_learned_redegrader():
    """default_phases on a StyleGAN-like prior with a tiny random UDM as re-degrader: the record is V, W,
    W+, W++ with the planned steps; the code and the noise maps stay at their start through V and move in
    the phases after; the prior's latent ends in W++."""
    model = _tiny_udm()
    prior = tiny_stylegan(noise=True)
    y = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    redegrader = LearnedRedegrader(model, y, torch.Generator().manual_seed(0))
    start = redegrader.code()
    phases = default_phases(prior, 16)
    codes = []
    result = invert(
        y,
        prior,
        redegrader,
        phases,
        generator=torch.Generator().manual_seed(0),
        progress=lambda done, loss: codes.append(redegrader.code()),
    )
    assert [(r.name, len(r.losses)) for r in result.record] == [("V", 4), ("W", 4), ("W+", 4), ("W++", 4)]
    assert [p.name for p in phases] == ["V", "W", "W+", "W++"]

    def unchanged(code):
        same = [torch.equal(code[k], start[k]) for k in ("e_g", "e_l")]
        return same + [torch.equal(a, b) for a, b in zip(code["noise"], start["noise"])]

    assert all(all(unchanged(code)) for code in codes[:4])
    assert not any(unchanged(codes[-1]))
    assert set(result.latent) == {"W++", "noise"} and result.image.shape == y.shape


@pytest.mark.parametrize("sigma", [1.0, 2.0, 1.5])
def test_gaussian_lowpass_matches_scipy_with_mirrored_borders(sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.randn(2, 3, 17, 23, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # torch's "reflect" padding is scipy's "mirror" (the edge pixel not repeated); truncate=3 gives the
    # same radius ceil(3 sigma) for these widths
    expected = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
    torch.testing.assert_close(gaussian_lowpass(x, sigma), torch.from_numpy(expected), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="larger than"):
        gaussian_lowpass(x[..., :6, :6], 2.0)


def test_low_band_correction_removes_a_colour_offset_and_keeps_the_high_band():
    """r(x) = x + per-channel offset + a pixel checkerboard: the corrected re-degrader returns x plus the
    checkerboard (whose low band is ~0) and no offset; gradients reach the inner code."""
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    offset = torch.tensor([0.08, -0.05, 0.03], dtype=torch.float64).view(1, 3, 1, 1)
    i, j = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = 0.1 * (1 - 2 * ((i + j) % 2)).to(torch.float64)

    class Biased(KnownOperator):
        def __init__(self):
            super().__init__(lambda t: t + self.offset + checker)
            self.offset = offset.clone().requires_grad_(True)

        def variables(self):
            return [self.offset]

    inner = Biased()
    corrected = LowBandCorrected(inner, sigma=2.0)
    out = corrected(x)
    torch.testing.assert_close(out, x + checker, rtol=0, atol=1e-6)
    assert (inner(x) - x - checker).abs().max() > 0.04  # the offset is there uncorrected
    assert corrected.variables() == [inner.offset]
    out.sum().backward()
    assert inner.offset.grad is not None and inner.offset.grad.abs().max() < 1e-8  # the low band ignores it
    with pytest.raises(ValueError, match="sigma must be positive"):
        LowBandCorrected(inner, sigma=0.0)


def test_low_band_correction_undoes_a_biased_re_degrader_in_inversion():
    """y = blur(x*), the re-degrader blur(x) + a colour offset (a biased model): inverting through it
    shifts the restoration's colours by the offset; with the low-band correction its colours match x*'s."""
    prior = tiny_stylegan(layers=3)
    _, x = _target(prior, seed=5)
    blur = operators.blur(1.0)
    y = blur(x)
    offset = torch.tensor([0.06, -0.04, 0.03], dtype=x.dtype).view(1, 3, 1, 1)
    biased = KnownOperator(lambda t: blur(t) + offset)
    phases = [Phase("W", "W", 150, lr=0.05), Phase("W+", "W+", 150, lr=0.02)]
    mse = lambda a, b: (a - b).pow(2).mean()
    raw = invert(y, prior, biased, phases, distance=mse, generator=torch.Generator().manual_seed(0))
    fixed = invert(
        y, prior, LowBandCorrected(biased, 1.5), phases, distance=mse, generator=torch.Generator().manual_seed(0)
    )
    colour_error = lambda im: (im - x).mean((2, 3)).abs().max()
    assert colour_error(raw.image) > 0.02
    assert colour_error(fixed.image) < 0.25 * colour_error(raw.image)
    assert mse(fixed.image, x) < 0.5 * mse(raw.image, x)


def test_noise_maps_have_their_own_learning_rate():
    """noise_lr moves only the noise maps (code_lr 0 keeps e_g, e_l); noise_lr 0 freezes them while the code
    moves; Adam's first step moves every entry by about its learning rate; default_phases freezes both in V."""
    model = default_model()
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prior = DeepImagePrior(width=8, input_channels=4)
    red = LearnedRedegrader(model, y, torch.Generator().manual_seed(0))
    wrapped = LowBandCorrected(red)
    assert wrapped.noise_variables() == red.noise and len(red.noise) > 0
    start = red.code()
    only_noise = invert(
        y,
        prior,
        wrapped,
        [Phase("theta", "theta", 1, lr=0.01, code_lr=0.0, noise_lr=0.02)],
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(only_noise.code["e_g"], start["e_g"]) and torch.equal(only_noise.code["e_l"], start["e_l"])
    step = (only_noise.code["noise"][0] - start["noise"][0]).abs()
    assert step.max() <= 0.02 * 1.001 and step.median() > 0.01
    only_code = invert(
        y,
        prior,
        wrapped,
        [Phase("theta", "theta", 1, lr=0.01, code_lr=0.001, noise_lr=0.0)],
        generator=torch.Generator().manual_seed(0),
    )
    assert all(torch.equal(a, b) for a, b in zip(only_code.code["noise"], only_noise.code["noise"]))
    assert not torch.equal(only_code.code["e_g"], only_noise.code["e_g"])
    phases = default_phases(prior, 8)
    assert phases[0].code_lr == 0 and phases[0].noise_lr == 0
    assert all(p.noise_lr == 0.02 and p.code_lr == 0.001 for p in phases[1:])


def test_deep_image_prior_fits_an_image_and_crops_odd_sizes():
    y = torch.rand(1, 3, 21, 27, generator=torch.Generator().manual_seed(0))
    y = F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="reflect"), 3, stride=1)  # smooth content the prior can fit
    prior = DeepImagePrior(width=16, input_channels=8)
    result = invert(
        y,
        prior,
        Identity(),
        [Phase("theta", "theta", 150, lr=0.01)],
        distance=PyramidL1(),
        generator=torch.Generator().manual_seed(0),
    )
    assert result.image.shape == y.shape
    assert (result.image - y).pow(2).mean() < 0.25 * (y - y.mean()).pow(2).mean()


def test_a_prior_of_the_wrong_shape_is_refused():
    class Wrong(DeepImagePrior):
        def forward(self):
            return super().forward()[..., :-1]

    with pytest.raises(ValueError, match="prior returned an image of shape"):
        invert(torch.rand(1, 3, 16, 16), Wrong(width=8), Identity(), [Phase("theta", "theta", 1, 0.01)])
    with pytest.raises(ValueError, match="no space 'W'"):
        invert(torch.rand(1, 3, 16, 16), DeepImagePrior(width=8), Identity(), [Phase("W", "W", 1, 0.01)])


def test_jpeg_operator_is_the_codec_forward_and_the_float_jpeg_backward():
    """Forward: the exact codec. Backward: the gradient of ``jpeg_float``, whose straight-through rounding
    passes the identity's gradient at the quantiser, so it equals the gradient of the float pipeline with
    rounding replaced by the identity (a linear map: the 4:2:0 chroma subsampling), checked against its
    central finite differences along random directions; it is not the identity's gradient."""
    from udm_fast.synthesis import degrade

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 20, 28, generator=g, dtype=torch.float64, requires_grad=True)  # not whole MCUs
    out = operators.jpeg(30)(x)
    torch.testing.assert_close(out.detach(), degrade.jpeg(x.detach(), 30, impl="tensor"), rtol=0, atol=1e-12)
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out * weights).sum().backward()
    assert (x.grad - weights).norm() > 0.3 * weights.norm()  # the identity's gradient would be ``weights``

    def linear_part(t):
        return (operators.jpeg_float(t, 30, rounding=lambda c: c) * weights).sum()

    h = 1e-3
    for _ in range(8):
        direction = torch.randn(x.shape, generator=g, dtype=torch.float64)
        numeric = (linear_part(x.detach() + h * direction) - linear_part(x.detach() - h * direction)) / (2 * h)
        torch.testing.assert_close((x.grad * direction).sum(), numeric, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("quality", [10, 50, 90])
def test_float_jpeg_is_close_to_the_exact_codec(quality):
    """On the sample photos the float approximation is within 1.25/255 of the exact codec on average (the
    codec's own integer roundings account for about 0.4/255; a quantised coefficient that rounds the other
    way at a step boundary moves a block by up to a table step, so the largest errors are large), and at
    qualities up to 50 several times closer than the pipeline without quantisation."""
    from udm_fast.synthesis import degrade
    from udm_fast.utils.io import load_image

    samples = os.path.join(os.path.dirname(cli.__file__), "..", "assets", "samples")
    for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg"):
        x = load_image(os.path.join(samples, name)).double()[..., :75, :83]
        exact = degrade.jpeg(x, quality, impl="tensor")
        error = (operators.jpeg_float(x, quality) - exact).abs().mean()
        assert error < 1.25 / 255
        if quality <= 50:
            unquantised = (operators.jpeg_float(x, quality, rounding=lambda c: c) - exact).abs().mean()
            assert error < 0.3 * unquantised


def _gaussian_toy(mu: float, s: float, abar: torch.Tensor):
    """The exact noise predictor for data x0 ~ N(mu, s^2 I): eps(x_t) from E[x0 | x_t]."""

    def denoiser(x, t):
        a = abar[t].to(x.dtype).view(-1, *[1] * (x.dim() - 1))
        x0 = mu + a.sqrt() * s**2 / (a * s**2 + 1 - a) * (x - a.sqrt() * mu)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return denoiser


def _dps_chain_moments(mu: float, s: float, a: float, sy: float, y: float, abar: torch.Tensor) -> tuple:
    """(mean, variance) of x_0 of the DPS chain with ``sigma_y`` on the scalar toy, in closed form: x0_hat
    is affine in x_t, so every step is x_{t-1} = slope x_t + offset + sqrt(var_t) z."""
    mean, var = 0.0, 1.0
    for t in range(len(abar) - 1, -1, -1):
        a_t = float(abar[t])
        a_prev = float(abar[t - 1]) if t > 0 else 1.0
        alpha = a_t / a_prev
        beta = 1 - alpha
        gain = a_t**0.5 * s**2 / (a_t * s**2 + 1 - a_t)  # x0_hat = gain x_t + base
        base = mu - gain * a_t**0.5 * mu
        k0, k1 = a_prev**0.5 * beta / (1 - a_t), alpha**0.5 * (1 - a_prev) / (1 - a_t)
        scale = beta / alpha**0.5
        slope = k0 * gain + k1 - scale * a * a * gain * gain / sy**2
        offset = k0 * base + scale * a * gain * (y - a * base) / sy**2
        mean = slope * mean + offset
        var = slope**2 * var + (beta * (1 - a_prev) / (1 - a_t) if t > 0 else 0.0)
    return mean, var


def test_dps_on_the_gaussian_toy_matches_the_posterior_mean_and_its_own_variance():
    """x0 ~ N(0.3, 1), y = 0.8 x0 + N(0, 0.1^2): posterior N((mu/s^2 + a y/sy^2) v, v), v = 1/(1/s^2 + a^2/sy^2).

    DPS replaces p(y | x_t) by a Gaussian around A(E[x0 | x_t]); with a measurement noise small against
    the prior's spread the sample mean matches the posterior mean. The variance does not: the
    approximation ignores Var[x0 | x_t] and overweights y early, so DPS's samples spread less than the
    posterior (std 0.075 against 0.124 here). The sample variance must equal that of the chain, computed
    in closed form, within the Monte Carlo error (4000 samples: 2.2 % rms; tolerance 8 %)."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.05, 200, dtype=torch.float64), 0)
    mu, s, a, sy = 0.3, 1.0, 0.8, 0.1
    posterior_var = 1 / (1 / s**2 + a * a / sy**2)
    for y_value in (1.2, -0.5):
        y = torch.full((4000, 1, 1, 1), y_value, dtype=torch.float64)
        x = dps_sample(
            y,
            _gaussian_toy(mu, s, abar),
            abar,
            lambda x0: a * x0,
            tuple(y.shape),
            sigma_y=sy,
            generator=torch.Generator().manual_seed(0),
        )
        posterior_mean = (mu / s**2 + a * y_value / sy**2) * posterior_var
        assert abs(x.mean().item() - posterior_mean) < 0.03 * abs(posterior_mean - mu)
        chain_mean, chain_var = _dps_chain_moments(mu, s, a, sy, y_value, abar)
        assert abs(x.mean().item() - chain_mean) < 3 * (chain_var / len(x)) ** 0.5
        assert abs(x.var().item() / chain_var - 1) < 0.08
        assert 0.2 * posterior_var < x.var().item() < 0.5 * posterior_var  # DPS's known under-dispersion
    # without guidance the sampler draws from the prior
    x = dps_sample(
        y,
        _gaussian_toy(mu, s, abar),
        abar,
        lambda x0: 0 * x0,
        tuple(y.shape),
        sigma_y=1.0,
        generator=torch.Generator().manual_seed(1),
    )
    assert abs(x.mean().item() - mu) < 0.06 and abs(x.std().item() - s) < 0.06


def test_dps_zeta_step_is_per_sample_and_pulls_to_the_measurement():
    """The normalised step (no sigma_y): zeta 0 is the prior, zeta 0.1 ends at A x = y (x = 1.5) with a
    small spread; each sample's step uses its own residual norm, so the batch size does not change the
    samples' law (a norm over the whole batch would weaken the guidance by sqrt(B))."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.05, 200, dtype=torch.float64), 0)
    mu, s, a = 0.3, 1.0, 0.8

    def sample(batch: int, zeta: float) -> torch.Tensor:
        y = torch.full((batch, 1, 1, 1), 1.2, dtype=torch.float64)
        return dps_sample(
            y,
            _gaussian_toy(mu, s, abar),
            abar,
            lambda x0: a * x0,
            tuple(y.shape),
            zeta=zeta,
            generator=torch.Generator().manual_seed(0),
        )

    prior = sample(4000, 0.0)
    assert abs(prior.mean().item() - mu) < 0.06 and abs(prior.std().item() - s) < 0.06
    guided = sample(4000, 0.1)
    assert abs(guided.mean().item() - 1.5) < 0.01 and guided.std().item() < 0.1
    few = sample(250, 0.03)
    many = sample(4000, 0.03)
    assert abs(few.mean().item() - many.mean().item()) < 0.06 and abs(many.mean().item() - mu) > 0.5


def test_dps_with_the_degradation_model_as_measurement():
    """The model's requires_grad flags are off while sampling and restored after; a measurement of the
    wrong shape is refused."""
    model = default_model()
    flags = [p.requires_grad for p in model.parameters()]
    assert any(flags)
    y = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    measure = redegrader_measurement(model, y, torch.Generator().manual_seed(0))
    abar = torch.cumprod(1 - torch.linspace(1e-3, 0.2, 5, dtype=torch.float64), 0)
    seen = []
    x = dps_sample(
        2 * y - 1,
        _gaussian_toy(0.0, 0.5, abar),
        abar,
        measure,
        (1, 3, 16, 16),
        zeta=0.5,
        generator=torch.Generator().manual_seed(0),
        progress=lambda i: seen.append(any(p.requires_grad for p in model.parameters())),
    )
    assert x.shape == (1, 3, 16, 16) and torch.isfinite(x).all()
    assert seen == [False] * 5 and [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(ValueError, match="decreasing"):
        dps_sample(y, _gaussian_toy(0.0, 1.0, abar), abar.flip(0), measure, (1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"measurement\(x0\) has shape \[1, 3, 8, 8\], y has \[1, 3, 16, 16\]"):
        dps_sample(y, _gaussian_toy(0.0, 1.0, abar), abar, lambda x0: x0[..., :8, :8], (1, 3, 16, 16), zeta=0.5)
    assert [p.requires_grad for p in model.parameters()] == flags


def test_dps_with_a_diffusers_unet_end_to_end():
    """A tiny random diffusers UNet2DModel through DiffusersDenoiser, a DDPMScheduler's 10-step schedule and
    a tiny random UDM as measurement: one measurement call per step, a finite sample of the asked shape,
    the UNet's weights untouched, without gradients and with their requires_grad flags back."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=10)
    weights = [p.detach().clone() for p in unet.parameters()]
    y = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    measure = redegrader_measurement(_tiny_udm(), y, torch.Generator().manual_seed(0))
    measured = []
    measure.register_forward_hook(lambda module, inputs, output: measured.append(tuple(output.shape)))
    x = dps_sample(
        2 * y - 1,
        DiffusersDenoiser(unet),
        scheduler.alphas_cumprod,
        measure,
        (1, 3, 16, 16),
        zeta=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert x.shape == (1, 3, 16, 16) and torch.isfinite(x).all()
    assert measured == [(1, 3, 16, 16)] * 10
    for before, after in zip(weights, unet.parameters()):
        assert torch.equal(before, after) and after.grad is None and after.requires_grad


# ----------------------------------------------------------------------------- bench/restore_table.py


@pytest.fixture
def restore_table():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "restore_table.py")
    spec = importlib.util.spec_from_file_location("restore_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_restore_table_non_blind_operators_leave_the_noise_to_the_discrepancy_principle(restore_table):
    """The known operator has no noise (blur for blur+noise, the identity for noise); sigma is the noise
    level where noise is the last degradation and None otherwise."""
    from udm_fast.synthesis import degrade

    x = F.avg_pool2d(torch.rand(1, 3, 36, 36, generator=torch.Generator().manual_seed(0)), 5, 1)
    for task, level, expected_operator, expected_sigma in (
        (("noise",), 1, lambda t: t, 25 / 255),
        (("blur", "noise"), 2, operators.blur(3.0), 50 / 255),
        (("noise", "jpeg"), 0, lambda t: degrade.jpeg(t, 50, impl="tensor"), None),
        (("blur",), 0, operators.blur(1.0), None),
    ):
        y, operator, sigma = restore_table.degrade_with(x, task, level, torch.Generator().manual_seed(0))
        assert sigma == expected_sigma and y.shape == x.shape
        torch.testing.assert_close(operator(x), expected_operator(x), rtol=0, atol=1e-6)


def test_restore_table_metrics_add_lpips_and_dists_where_their_weights_load(restore_table, monkeypatch):
    from udm_fast.losses.pretrained import MissingWeightsError

    def missing(**kwargs):
        raise MissingWeightsError("VGG16 weights: not found")

    monkeypatch.setattr(restore_table, "LPIPS", missing)
    monkeypatch.setattr(restore_table, "DISTS", missing)
    assert list(restore_table.quality_metrics()) == ["psnr", "ms_ssim"]
    from udm_fast.losses import perceptual  # the package's own networks, with random weights

    monkeypatch.setattr(restore_table, "LPIPS", lambda **kwargs: perceptual.LPIPS(pretrained=False))
    monkeypatch.setattr(restore_table, "DISTS", lambda **kwargs: perceptual.DISTS(pretrained=False))
    metrics = restore_table.quality_metrics()
    assert list(metrics) == ["psnr", "ms_ssim", "lpips", "dists"]
    a = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert all(isinstance(metric(a, a.flip(-1)), float) for metric in metrics.values())
    assert metrics["lpips"](a, a) == pytest.approx(0.0, abs=1e-6)


def test_restore_table_methods_share_the_distance_and_only_non_blind_stops_by_discrepancy(restore_table, monkeypatch):
    from udm_fast.restore import Restoration

    calls = []

    def fake_invert(y, prior, redegrader, phases, **kwargs):
        calls.append((type(redegrader).__name__, kwargs["distance"], kwargs["discrepancy_sigma"]))
        return Restoration(y, y, {}, {}, [], [(5, y)])

    monkeypatch.setattr(restore_table, "invert", fake_invert)
    distance = PyramidL1()
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    results = restore_table.restore_methods(
        y, y, lambda t: t, 0.1, default_model(), ("naive", "ours_raw", "ours", "non_blind"), 8, distance
    )
    assert set(results) == {"naive", "naive_oracle", "ours_raw", "ours", "non_blind"}
    assert [(name, d is distance, sigma) for name, d, sigma in calls] == [
        ("Identity", True, None),
        ("LearnedRedegrader", True, None),
        ("LowBandCorrected", True, None),
        ("KnownOperator", True, 0.1),
    ]


# ----------------------------------------------------------------------------- the command


def test_cli_restore_writes_the_outputs(tmp_path, capsys):
    y = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    save_image(y, tmp_path / "y.png")
    code = cli.main(
        [
            "restore",
            "--degraded",
            str(tmp_path / "y.png"),
            "--out",
            str(tmp_path / "z.png"),
            "--steps",
            "4",
            "--device",
            "cpu",
            "--redegraded",
            str(tmp_path / "r.png"),
            "--curve",
            str(tmp_path / "c.png"),
        ]
    )
    assert code == 0
    from PIL import Image

    assert Image.open(tmp_path / "z.png").size == (20, 24) and Image.open(tmp_path / "r.png").size == (20, 24)
    assert Image.open(tmp_path / "c.png").format == "PNG"
    out = capsys.readouterr().out
    assert "4 steps (V 1, theta 3)" in out and "low-band correction 2 px" in out


def test_cli_restore_patience_stops_the_phases_early(tmp_path, capsys):
    save_image(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), tmp_path / "y.png")
    argv = ["restore", "--degraded", str(tmp_path / "y.png"), "--out", str(tmp_path / "z.png"), "--device", "cpu"]
    assert cli.main(argv + ["--steps", "40", "--patience", "2", "--tol", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "6 steps (V 3, theta 3; stopped early: V, theta)" in out


def test_cli_restore_curve_without_matplotlib_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    save_image(torch.rand(1, 3, 16, 16), tmp_path / "y.png")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a)
    )
    args = [
        "restore",
        "--degraded",
        str(tmp_path / "y.png"),
        "--out",
        str(tmp_path / "z.png"),
        "--curve",
        str(tmp_path / "c.png"),
    ]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "z.png").exists()


def _good_photo(d):
    save_image(torch.rand(1, 3, 16, 16), d / "bad.png")


def _weights_of_another_architecture(d):
    """A udm_fast model file whose config no longer fits its tensors (filters 8 against the saved ones)."""
    _good_photo(d)
    payload = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    payload["config"]["filters"] = 8
    torch.save(payload, d / "w.pt")


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        (lambda d: (d / "bad.png").write_bytes(b"not an image"), [], "not an image file"),
        (lambda d: save_image(torch.rand(1, 3, 8, 8), d / "bad.png"), [], "at least 16x16"),
        (lambda d: (_good_photo(d), (d / "w.pt").write_bytes(b"xx")), ["--weights", "w.pt"], "w.pt"),
        (
            lambda d: (_good_photo(d), torch.save({"weights": torch.zeros(2)}, d / "w.pt")),
            ["--weights", "w.pt"],
            "is neither a udm_fast model file (model.pt) nor a training checkpoint",
        ),
        (_weights_of_another_architecture, ["--weights", "w.pt"], "w.pt: checkpoint does not match the model"),
        (_good_photo, ["--seed", str(2**64)], "--seed must be an integer from 0 to 2**64 - 1"),
        (_good_photo, ["--seed", "-1"], "--seed must be an integer from 0 to 2**64 - 1"),
        (_good_photo, ["--patience", "-1"], "patience must be >= 0"),
        (_good_photo, ["--patience", "3", "--tol", "1.5"], "tol must be in [0, 1)"),
    ],
)
def test_cli_restore_errors_are_one_line(tmp_path, capsys, monkeypatch, setup, extra, message):
    """One error line, exit code 1, nothing written; a bad --seed is refused before the model is loaded."""
    from udm_fast.cli import restore as command

    setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    if "--seed" in extra:
        monkeypatch.setattr(
            command, "load_model", lambda *a: pytest.fail("the model was loaded before --seed was checked")
        )
    args = ["restore", "--degraded", "bad.png", "--out", "z.png", "--steps", "2", "--device", "cpu", *extra]
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("udm-fast: error:") and message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not os.path.exists(tmp_path / "z.png")


def test_cli_restore_refuses_a_negative_low_band_sigma(tmp_path, capsys):
    save_image(torch.rand(1, 3, 16, 16), tmp_path / "y.png")
    assert (
        cli.main(
            [
                "restore",
                "--degraded",
                str(tmp_path / "y.png"),
                "--out",
                str(tmp_path / "z.png"),
                "--steps",
                "2",
                "--device",
                "cpu",
                "--low-band-sigma",
                "-1",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--low-band-sigma must be >= 0" in err
    assert not os.path.exists(tmp_path / "z.png")


def test_cli_restore_interrupted_writes_nothing(tmp_path, capsys, monkeypatch):
    save_image(torch.rand(1, 3, 16, 16), tmp_path / "y.png")
    from udm_fast.cli import restore as command

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "restore", interrupt)
    assert (
        cli.main(
            ["restore", "--degraded", str(tmp_path / "y.png"), "--out", str(tmp_path / "z.png"), "--device", "cpu"]
        )
        == 130
    )
    assert sorted(os.listdir(tmp_path)) == ["y.png"]


def test_cli_restore_interrupted_between_writes_keeps_the_old_set(tmp_path, capsys, monkeypatch):
    """Ctrl-C while the second output (the re-degraded image) is written: no output is replaced, the old
    restoration stays as it was and no temporary file is left."""
    from udm_fast.utils import files

    save_image(torch.rand(1, 3, 16, 16), tmp_path / "y.png")
    (tmp_path / "z.png").write_bytes(b"old restoration")
    real_fsync, synced = files.os.fsync, []

    def fsync_then_interrupt(fd):
        synced.append(fd)
        if len(synced) == 2:
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync_then_interrupt)
    argv = ["restore", "--degraded", str(tmp_path / "y.png"), "--out", str(tmp_path / "z.png"), "--steps", "2"]
    argv += ["--device", "cpu", "--redegraded", str(tmp_path / "r.png"), "--curve", str(tmp_path / "c.png")]
    assert cli.main(argv) == 130
    assert len(synced) == 2
    assert sorted(os.listdir(tmp_path)) == ["y.png", "z.png"]
    assert (tmp_path / "z.png").read_bytes() == b"old restoration"
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert cli.main(argv) == 0
    assert sorted(os.listdir(tmp_path)) == ["c.png", "r.png", "y.png", "z.png"]
