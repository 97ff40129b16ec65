"""Blind restoration by inversion with a learned re-degrader (docs/restore.md).

Given a degraded photo y, ``invert`` optimises the latent of an image prior G together with the
re-degrader's code so that ``redegrader(G(latent))`` matches y under a distance:

    min over latent, e_g, e_l, n of  distance(y, f(G(latent), e_g, e_l, n))

where f is the degradation model's ``synthesize``, the code starts at (e_g, e_l) = encode(y) and the
random state n ~ N(0, I) (explicit noise maps, ``model.noise_shapes``). The optimisation runs in
phases: V (the prior's first space, code frozen), then one phase per prior space with the code
optimised too (W, W+, W++ for a StyleGAN-like prior; "theta" for the deep image prior).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .prior import DeepImagePrior, Prior

MIN_SIDE = 16  # smallest image side restore accepts (the pyramid distance and the DIP need it)
MAX_SIDE = 1024  # largest image side restore accepts (cost grows with the pixel count; see docs/restore.md)
PYRAMID_LEVELS = 4
DEFAULT_LOW_BAND_SIGMA = 2.0  # pixels; the band the learned re-degrader's fit ignores (docs/restore.md)
DEFAULT_TOL = 1e-3  # relative improvement that resets the early-stopping patience (Phase)
DEFAULT_NOISE_LR = 0.02  # Adam step of the noise maps, 20x the code's: they take y's noise over (docs/restore.md)


# ----------------------------------------------------------------------------- distances


class PyramidL1(nn.Module):
    """Mean absolute difference averaged over a Gaussian-like pyramid: levels 2x2-average-pooled 0..L-1
    times, [B, 3, H, W] pairs -> scalar.

    The offline default distance. The re-degrader's noise realisation never matches y's pixel by
    pixel, so a pure pixel loss mostly measures that mismatch; the coarser levels average the noise
    out and compare content and blur, while the finest level still matches edges. L1 rather than L2
    keeps JPEG's blocking and rare outliers from dominating. Needs no weights, unlike LPIPS.
    """

    def __init__(self, levels: int = PYRAMID_LEVELS):
        super().__init__()
        self.levels = levels

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for level in range(self.levels):
            if level:
                if min(a.shape[-2:]) < 2:
                    break
                a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
            total = total + (a - b).abs().mean()
        return total / self.levels


def default_distance(device: torch.device | str = "cpu") -> tuple[nn.Module, str]:
    """(distance, name): LPIPS-VGG when its weights are available locally (no download), else ``PyramidL1``."""
    from ..losses.perceptual import LPIPS
    from ..losses.pretrained import MissingWeightsError

    try:
        return LPIPS(download=False).to(device), "lpips"
    except (MissingWeightsError, ImportError, OSError):
        return PyramidL1(), "pyramid-l1"


# ----------------------------------------------------------------------------- re-degraders


class Redegrader(nn.Module):
    """Maps the prior's image x [B, 3, H, W] to a degraded image like y; ``variables()`` are the leaf
    tensors of its code (optimised in the phases that optimise the code), ``noise_variables()`` the
    subset that are random-state maps (their own learning rate, ``Phase.noise_lr``), ``code()`` their
    values."""

    def variables(self) -> list:
        return []

    def noise_variables(self) -> list:
        return []

    def code(self) -> dict:
        return {}


class Identity(Redegrader):
    """No re-degradation: the prior fits y itself (the naive blind inversion)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class KnownOperator(Redegrader):
    """A known degradation operator ``operator(x) -> y_hat`` (non-blind inversion); no code."""

    def __init__(self, operator: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.operator = operator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator(x)


class LearnedRedegrader(Redegrader):
    """The degradation model as re-degrader: x -> model.synthesize(x, e_g, e_l, noise).

    e_g, e_l start at ``model.encode(y)`` (quantised) and the noise maps at N(0, I) with the shapes of
    ``model.noise_shapes``, drawn from ``generator``; all three are optimisable leaves. The model's own
    weights are not optimised.
    """

    def __init__(self, model, y: torch.Tensor, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.model = model
        with torch.no_grad():
            e_g, e_l = model.encode(y)
        self.e_g = e_g.detach().clone().requires_grad_(True)
        self.e_l = e_l.detach().clone().requires_grad_(True)
        b, _, h, w = y.shape
        self.noise = [
            torch.randn(shape, generator=generator, dtype=y.dtype).to(y.device).requires_grad_(True)
            for shape in model.noise_shapes(b, h, w)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.synthesize(x, self.e_g, self.e_l, self.noise)

    def variables(self) -> list:
        return [self.e_g, self.e_l, *self.noise]

    def noise_variables(self) -> list:
        return list(self.noise)

    def code(self) -> dict:
        return {
            "e_g": self.e_g.detach().clone(),
            "e_l": self.e_l.detach().clone(),
            "noise": [n.detach().clone() for n in self.noise],
        }


def gaussian_lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of width ``sigma`` pixels (radius ceil(3 sigma)) with reflected borders,
    [B, C, H, W] -> same shape; any real values (unlike ``udm_fast.degrade.gaussian_blur``, which checks
    for [0, 1] images), differentiable."""
    if not sigma > 0:
        raise ValueError(f"gaussian_lowpass: sigma must be positive, got {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    if min(x.shape[-2:]) <= radius:
        raise ValueError(
            f"gaussian_lowpass: sigma {sigma} needs images larger than {radius} pixels, got {list(x.shape[-2:])}"
        )
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class LowBandCorrected(Redegrader):
    """A re-degrader whose low band is replaced by that of its input:
    x -> r(x) - lowpass(r(x)) + lowpass(x), Gaussian ``sigma`` pixels; same code as r.

    The degradations the model handles (noise, blur, JPEG) keep an image's low frequencies, so the low
    band of y is the low band of the clean image; what a learned re-degrader changes there (a colour or
    contrast shift of a few percent with the bundled model) is its bias, not information about y, and
    the prior would compensate it with a shifted restoration. With the correction the low band of the
    restoration is fitted to y's directly and the re-degrader only explains the band above ``sigma``
    (docs/restore.md).
    """

    def __init__(self, inner: Redegrader, sigma: float = DEFAULT_LOW_BAND_SIGMA):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"LowBandCorrected: sigma must be positive, got {sigma}")
        self.inner, self.sigma = inner, float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        degraded = self.inner(x)
        return degraded - gaussian_lowpass(degraded, self.sigma) + gaussian_lowpass(x, self.sigma)

    def variables(self) -> list:
        return self.inner.variables()

    def noise_variables(self) -> list:
        return self.inner.noise_variables()

    def code(self) -> dict:
        return self.inner.code()


@contextlib.contextmanager
def frozen(*modules: nn.Module, keep: Sequence[torch.Tensor] = ()):
    """Turns off requires_grad on the parameters of those arguments that are modules, except the
    tensors in ``keep``, for the block, then restores the flags."""
    params = [p for m in modules if isinstance(m, nn.Module) for p in m.parameters() if not any(p is k for k in keep)]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------- phases and the record


@dataclasses.dataclass
class Phase:
    """One optimisation phase: the prior ``space``, Adam ``steps`` at learning rate ``lr`` for the prior's
    variables and ``code_lr`` for the re-degrader's (0 freezes the code, as in the V phase);
    ``noise_lr`` for its noise maps (None: ``code_lr``; 0 freezes them).

    Early stopping: the phase ends once its loss has not fallen below ``(1 - tol)`` times its best value
    for ``patience`` consecutive steps (``patience=0`` never stops early)."""

    name: str
    space: str
    steps: int
    lr: float
    code_lr: float = 0.0
    noise_lr: Optional[float] = None
    patience: int = 0
    tol: float = DEFAULT_TOL


def check_early_stopping(patience: int, tol: float) -> None:
    """Raises ValueError unless ``patience`` >= 0 and 0 <= ``tol`` < 1."""
    if patience < 0:
        raise ValueError(f"patience must be >= 0 (0 never stops early), got {patience}")
    if not 0 <= tol < 1:
        raise ValueError(f"tol must be in [0, 1), got {tol:g}")


def default_phases(
    prior: Prior,
    steps: int,
    lr: float = 0.01,
    code_lr: float = 0.001,
    patience: int = 0,
    noise_lr: float = DEFAULT_NOISE_LR,
    tol: float = DEFAULT_TOL,
) -> list:
    """The report's schedule for ``prior.spaces``: V (first space, code and noise maps frozen) then one
    phase per space with the code (``code_lr``) and the noise maps (``noise_lr``) optimised, named by the
    space; ``steps`` split as 1/4 for V and the rest evenly; every phase stops early by ``patience`` and
    ``tol`` (see ``Phase``)."""
    check_early_stopping(patience, tol)
    if steps < len(prior.spaces) + 1:
        raise ValueError(f"need at least {len(prior.spaces) + 1} steps for {len(prior.spaces) + 1} phases, got {steps}")
    v_steps = max(1, steps // 4)
    rest = steps - v_steps
    per_space = [rest // len(prior.spaces) + (i < rest % len(prior.spaces)) for i in range(len(prior.spaces))]
    phases = [Phase("V", prior.spaces[0], v_steps, lr, 0.0, 0.0, patience, tol)]
    phases += [
        Phase(space, space, n, lr, code_lr, noise_lr, patience, tol) for space, n in zip(prior.spaces, per_space)
    ]
    return phases


@dataclasses.dataclass
class PhaseRecord:
    """A phase's loss at every step it ran; ``stopped_early``: it ended before its steps (by patience or
    by the discrepancy principle); ``discrepancy_reached``: by the latter, which ends the inversion."""

    name: str
    losses: list
    stopped_early: bool
    discrepancy_reached: bool = False


@dataclasses.dataclass
class Restoration:
    """What ``invert`` returns: the restoration G(latent) [B, 3, H, W], the re-degraded image
    f(G(latent)) (both detached, clamped to [0, 1]), the prior's latent, the re-degrader's code and the
    per-phase loss curves; ``snapshots``: (global step, restoration) every ``snapshot_every`` steps."""

    image: torch.Tensor
    redegraded: torch.Tensor
    latent: dict
    code: dict
    record: list
    snapshots: list


# ----------------------------------------------------------------------------- the inverter


def _check_image(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != 3 or not t.is_floating_point():
        raise ValueError(
            f"{name} must be a float image batch [B, 3, H, W], got "
            f"{getattr(t, 'dtype', type(t).__name__)} {list(getattr(t, 'shape', []))}"
        )


def invert(
    y: torch.Tensor,
    prior: Prior,
    redegrader: Redegrader,
    phases: Sequence[Phase],
    *,
    distance: Optional[nn.Module] = None,
    generator: Optional[torch.Generator] = None,
    progress: Optional[Callable[[int, float], None]] = None,
    snapshot_every: int = 0,
    discrepancy_sigma: Optional[float] = None,
) -> Restoration:
    """Fits ``redegrader(prior())`` to y [B, 3, H, W] in [0, 1] phase by phase (see ``Phase``).

    ``distance(a, b)`` -> scalar (default ``PyramidL1``); ``progress(steps_done, loss)`` is called after
    every step. Only the prior's ``variables()`` and the re-degrader's code are optimised: the parameters
    of the distance, of the re-degrader's modules and of the prior (those that are not its variables)
    have requires_grad off during the phases and get their flags back after. A prior whose image
    differs in shape from y raises ValueError.

    ``discrepancy_sigma`` (the known standard deviation of y's noise, for a re-degrader without that
    noise): the discrepancy principle; the inversion ends at the first iterate whose mean squared
    residual per pixel, mean((y - redegrader(G))^2), is at most sigma^2, and returns that iterate.
    """
    _check_image("y", y)
    if discrepancy_sigma is not None and not discrepancy_sigma > 0:
        raise ValueError(f"discrepancy_sigma must be positive, got {discrepancy_sigma}")
    distance = PyramidL1() if distance is None else distance
    prior.initialise(y, generator)
    record, snapshots = [], []
    run = _PhaseRun(y, prior, redegrader, distance, discrepancy_sigma, progress, snapshot_every, snapshots)
    spaces = list(prior.spaces)
    entered = None
    with frozen(distance, *(m for m in redegrader.children())):
        for phase in phases:
            if phase.space not in spaces:
                raise ValueError(f"phase {phase.name!r}: the prior has no space {phase.space!r} (it has {spaces})")
            if phase.space != entered:
                prior.enter(phase.space)
                entered = phase.space
            variables = prior.variables()
            groups = [{"params": variables, "lr": phase.lr}]
            noise = redegrader.noise_variables()
            code = [v for v in redegrader.variables() if not any(v is n for n in noise)]
            noise_lr = phase.code_lr if phase.noise_lr is None else phase.noise_lr
            if phase.code_lr > 0 and code:
                groups.append({"params": code, "lr": phase.code_lr})
            if noise_lr > 0 and noise:
                groups.append({"params": noise, "lr": noise_lr})
            with frozen(prior, keep=variables):  # the prior's own weights, unless they are its latent
                record.append(run.steps(phase, torch.optim.Adam(groups), sum(len(r.losses) for r in record)))
            if record[-1].discrepancy_reached:
                break
        with torch.no_grad():
            image = prior()
            redegraded = redegrader(image)
    for v in redegrader.variables():
        v.grad = None
    return Restoration(image.clamp(0, 1), redegraded.clamp(0, 1), prior.latent(), redegrader.code(), record, snapshots)


@dataclasses.dataclass
class _PhaseRun:
    """The optimisation loop of ``invert``'s phases, with its fixed arguments."""

    y: torch.Tensor
    prior: Prior
    redegrader: Redegrader
    distance: nn.Module
    discrepancy_sigma: Optional[float]
    progress: Optional[Callable[[int, float], None]]
    snapshot_every: int
    snapshots: list

    def steps(self, phase: Phase, optimiser: torch.optim.Optimizer, done: int) -> PhaseRecord:
        """Runs ``phase``'s steps with ``optimiser``, ``done`` steps having run before."""
        losses, best, since_best = [], math.inf, 0
        for _ in range(phase.steps):
            image = self.prior()
            if image.shape != self.y.shape:
                raise ValueError(
                    f"the prior returned an image of shape {list(image.shape)}, expected y's {list(self.y.shape)}"
                )
            degraded = self.redegrader(image)
            loss = self.distance(degraded, self.y)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise RuntimeError(f"phase {phase.name!r}: the loss became {value} (lower the learning rates)")
            reached = (
                self.discrepancy_sigma is not None
                and float((degraded.detach() - self.y).pow(2).mean()) <= self.discrepancy_sigma**2
            )
            if not reached:  # the iterate that meets the discrepancy principle is kept as it is
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            losses.append(value)
            done += 1
            if self.progress is not None:
                self.progress(done, value)
            if reached:
                return PhaseRecord(phase.name, losses, True, discrepancy_reached=True)
            if self.snapshot_every and done % self.snapshot_every == 0:
                with torch.no_grad():
                    self.snapshots.append((done, self.prior().clamp(0, 1)))
            if value < best * (1 - phase.tol):
                best, since_best = value, 0
            else:
                since_best += 1
                if phase.patience and since_best >= phase.patience:
                    return PhaseRecord(phase.name, losses, True)
        return PhaseRecord(phase.name, losses, False)


def check_size(y: torch.Tensor) -> None:
    """Raises ValueError when y's sides are outside [MIN_SIDE, MAX_SIDE] (see docs/restore.md)."""
    h, w = y.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"the degraded image is {w}x{h}; restore needs at least {MIN_SIDE}x{MIN_SIDE} pixels")
    if max(h, w) > MAX_SIDE:
        raise ValueError(
            f"the degraded image is {w}x{h}; restore works on sides up to {MAX_SIDE} pixels "
            f"(the cost grows with the pixel count): downscale or crop it first"
        )


DEFAULT_STEPS = 80


def restore(
    y: torch.Tensor,
    model=None,
    *,
    prior: Optional[Prior] = None,
    steps: int = DEFAULT_STEPS,
    phases: Optional[Sequence[Phase]] = None,
    distance: Optional[nn.Module] = None,
    seed: int = 0,
    low_band_sigma: float = DEFAULT_LOW_BAND_SIGMA,
    patience: int = 0,
    tol: float = DEFAULT_TOL,
    progress: Optional[Callable[[int, float], None]] = None,
) -> Restoration:
    """Blind restoration of y [B, 3, H, W] in [0, 1]: ``invert`` with the degradation model (default: the
    bundled one) as re-degrader and ``prior`` (default: ``DeepImagePrior()``) under ``default_phases``
    with ``steps`` in all and early stopping by ``patience``, ``tol`` (or explicit ``phases``, which
    carry their own); ``distance`` default from ``default_distance``.
    ``low_band_sigma`` > 0 wraps the re-degrader in ``LowBandCorrected`` of that width; 0 uses it as is."""
    from ..models.pretrained import default_model

    _check_image("y", y)
    check_size(y)
    model = default_model(y.device) if model is None else model
    y = y.to(model.dtype)
    prior = DeepImagePrior() if prior is None else prior
    distance = default_distance(y.device)[0] if distance is None else distance
    generator = torch.Generator().manual_seed(seed)
    if low_band_sigma < 0:
        raise ValueError(f"low_band_sigma must be >= 0 (0 turns the correction off), got {low_band_sigma}")
    redegrader = LearnedRedegrader(model, y, generator)
    if low_band_sigma > 0:
        redegrader = LowBandCorrected(redegrader, low_band_sigma)
    phases = default_phases(prior, steps, patience=patience, tol=tol) if phases is None else phases
    return invert(y, prior, redegrader, phases, distance=distance, generator=generator, progress=progress)
