"""Transfer-quality measures that do not depend on the noise realisation.

Pixel-wise scores such as PSNR or SSIM of ŷ against y prefer a clean image to one carrying the right
noise (the generator draws its own, docs/architecture.md §7.4), so the degradation itself is measured through
statistics that two
images with the same degradation share even when their noise samples differ:

* ``spectrum_distance``: RMS difference in dB of the radially averaged power spectra;
* ``noise_level``: the noise σ, from the median absolute Laplacian residual;
* ``blur_width``: the Gaussian σ (pixels) of the low-pass that maps the clean x onto the image,
  fitted on the ratio of their spectra above the noise floor.

Content is checked by ``lowpass_fidelity`` (PSNR and MS-SSIM after a strong Gaussian low-pass, which
removes noise and fine blur differences). ``transfer_table`` compares a model with two baselines on
the same pairs: identity (ŷ = x) and mismatched (the code of another degradation of the same photo);
cross_content applies the code of *another photo* under the same degradation, and ``content_leakage``
(udm_fast/eval/leakage.py) measures how much of that other photo it prints into the result.
``code_spread_ratio``, ``active_dimensions`` and ``code_bits`` measure the codes themselves.

Images are float tensors [B, 3, H, W] in [0, 1]; the statistics are computed in float64.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..entropy.degradation_code import parse
from ..losses.spectral import SPECTRUM_FLOOR
from ..losses.spectral import radial_power_spectrum as _radial_power_spectrum
from ..synthesis.degrade import gaussian_blur
from .leakage import content_leakage
from .metrics import ms_ssim, psnr

LAPLACIAN = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))  # Immerkaer's noise kernel, norm 6
MAD_TO_SIGMA = 1.0 / 0.6744897501960817  # median |N(0, 1)| = Phi^-1(3/4)
LOWPASS_SIGMA = 3.0  # pixels: removes noise and blur differences, keeps layout, shading and colour
NOISE_MARGIN = 2.0  # spectrum bins used by blur_width: image power above this many noise floors
MIN_FIT_BINS = 3
ACTIVE_VARIANCE = 0.1  # quantised e_g: a dimension whose values vary less than this is inactive
METHODS = ("model", "identity", "mismatched", "cross_content")


def _check_batch(images: torch.Tensor, where: str, min_side: int = 8) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"{where}: expected a float image batch [B, C, H, W], got {getattr(images, 'shape', type(images).__name__)}"
        )
    if min(images.shape[-2:]) < min_side:
        raise ValueError(
            f"{where}: images must be at least {min_side}x{min_side}, got {images.shape[-2]}x{images.shape[-1]}"
        )
    return images.double()


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, where: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{where}: the two batches differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")


# ----------------------------------------------------------------------------- degradation statistics


def radial_power_spectrum(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequencies [n], power [B, n]) in float64: ``udm_fast.losses.radial_power_spectrum`` (Hann
    window, channel and ring average, white noise of variance s² has power s² in every ring)."""
    return _radial_power_spectrum(_check_batch(images, "radial_power_spectrum"))


def spectrum_distance(a: torch.Tensor, b: torch.Tensor, floor: float = SPECTRUM_FLOOR) -> torch.Tensor:
    """RMS over frequency rings of 10 log10(max(P_a, floor) / max(P_b, floor)) in dB, per image [B]
    (~0 for equal spectra: 1e-10 at least, so the gradient stays finite there); the floor keeps invisible
    high-frequency residues from dominating."""
    _check_same_shape(a, b, "spectrum_distance")
    _, pa = radial_power_spectrum(a)
    _, pb = radial_power_spectrum(b)
    ratio_db = 10.0 * torch.log10(pa.clamp_min(floor) / pb.clamp_min(floor))
    return ratio_db.pow(2).mean(dim=1).clamp_min(1e-20).sqrt()


def noise_level(images: torch.Tensor) -> torch.Tensor:
    """Estimated σ of additive white noise per image [B]: the median absolute response to the 3x3
    Laplacian-like kernel ``LAPLACIAN`` (valid positions, all channels), divided by the kernel's norm
    6 and by the median of |N(0, 1)|. Image structure adds to it, so compare images of one content."""
    x = _check_batch(images, "noise_level", min_side=3)
    kernel = torch.tensor(LAPLACIAN, dtype=torch.float64, device=x.device)
    c = x.shape[1]
    residual = torch.nn.functional.conv2d(x, kernel.expand(c, 1, 3, 3), groups=c)
    return residual.abs().flatten(1).median(dim=1).values * (MAD_TO_SIGMA / 6.0)


def blur_width(images: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Estimated σ (pixels) of a Gaussian low-pass from ``clean`` to ``images`` per image [B].

    With P the ring powers of ``radial_power_spectrum`` and s the ``noise_level`` of the image, it fits
    ln((P_image - s²) / P_clean) = a - 4π²σ² f² by least squares on the rings where P_image exceeds
    ``NOISE_MARGIN`` s²; the constant a absorbs contrast changes. 0 when the fit finds no fall-off,
    NaN when fewer than ``MIN_FIT_BINS`` rings rise above the noise.
    """
    _check_same_shape(images, clean, "blur_width")
    freqs, p_img = radial_power_spectrum(images)
    _, p_clean = radial_power_spectrum(clean)
    floor = noise_level(images).pow(2)[:, None]
    usable = (p_img > NOISE_MARGIN * floor) & (p_clean > 0)
    f2 = freqs.pow(2).expand_as(p_img)
    log_ratio = torch.log(((p_img - floor) / p_clean).clamp_min(1e-300))
    widths = []
    for b in range(p_img.shape[0]):
        m = usable[b]
        if int(m.sum()) < MIN_FIT_BINS:
            widths.append(math.nan)
            continue
        design = torch.stack([torch.ones_like(f2[b, m]), f2[b, m]], dim=1)
        slope = torch.linalg.lstsq(design, log_ratio[b, m, None]).solution[1, 0]
        widths.append(math.sqrt(max(0.0, -float(slope))) / (2 * math.pi))
    return torch.tensor(widths, dtype=torch.float64)


def lowpass_fidelity(a: torch.Tensor, b: torch.Tensor, sigma: float = LOWPASS_SIGMA) -> dict:
    """{"psnr_lowpass": [B] dB, "ms_ssim_lowpass": [B]} of a against b after a Gaussian blur of ``sigma``."""
    _check_same_shape(a, b, "lowpass_fidelity")
    la = gaussian_blur(_check_batch(a, "lowpass_fidelity"), sigma)
    lb = gaussian_blur(_check_batch(b, "lowpass_fidelity"), sigma)
    return {"psnr_lowpass": psnr(la, lb), "ms_ssim_lowpass": ms_ssim(la, lb)}


def degradation_measures(y_hat: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> dict:
    """Per-image [B] measures of how well ŷ reproduces the degradation that turned x into y:
    spectrum distance (dB), |noise σ error| (in 1/255 units), |blur σ error| (pixels), and the content
    fidelity after the low-pass. Lower is better for the first three, higher for the last two."""
    _check_same_shape(y_hat, y, "degradation_measures")
    _check_same_shape(x, y, "degradation_measures")
    y_hat = y_hat.clamp(0.0, 1.0)
    return {
        "spectrum_db": spectrum_distance(y_hat, y),
        "noise_error_255": 255.0 * (noise_level(y_hat) - noise_level(y)).abs(),
        "blur_error_px": (blur_width(y_hat, x) - blur_width(y, x)).abs(),
        **lowpass_fidelity(y_hat, y),
    }


# ----------------------------------------------------------------------------- codes


def code_spread_ratio(codes: torch.Tensor) -> float:
    """Content spread over degradation spread of codes [n_contents, n_degradations, D]: the mean over
    degradations of the total variance across contents, divided by the mean over contents of the
    total variance across degradations. Below 1: the codes follow the degradation more than the content.
    inf when the codes vary only across contents, NaN when they do not vary at all."""
    if not isinstance(codes, torch.Tensor) or codes.dim() != 3 or min(codes.shape[:2]) < 2:
        raise ValueError(
            "code_spread_ratio: expected codes [n_contents >= 2, n_degradations >= 2, D], got "
            f"{getattr(codes, 'shape', type(codes).__name__)}"
        )
    c = codes.double()
    across_contents = c.var(dim=0, unbiased=False).sum(dim=-1).mean()
    across_degradations = c.var(dim=1, unbiased=False).sum(dim=-1).mean()
    if across_degradations == 0:  # constant codes (e.g. an untrained, collapsed bottleneck)
        return math.nan if across_contents == 0 else math.inf
    return float(across_contents / across_degradations)


def active_dimensions(codes: torch.Tensor, threshold: float = ACTIVE_VARIANCE) -> int:
    """Number of code dimensions whose variance over the codes [N, D] (N >= 2) exceeds ``threshold``."""
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.shape[0] < 2:
        raise ValueError(
            f"active_dimensions: expected codes [N >= 2, D], got {getattr(codes, 'shape', type(codes).__name__)}"
        )
    return int((codes.double().var(dim=0, unbiased=False) > threshold).sum())


def code_bits(model, y: torch.Tensor) -> dict:
    """Sizes in bits of ``model.compress_degradation(y)`` for one image y [1, 3, H, W]: the whole
    file ("total", header and checksum included), and its e_g and e_l streams."""
    if y.dim() != 4 or y.shape[0] != 1:
        raise ValueError(f"code_bits: expected one image [1, 3, H, W], got {tuple(y.shape)}")
    data = model.compress_degradation(y)
    fields = parse(data)
    return {
        "total": 8 * len(data),
        "global": 8 * len(fields["global_stream"]),
        "local": 8 * len(fields["local_stream"]),
    }


# ----------------------------------------------------------------------------- model vs baselines


@torch.no_grad()
def transfer_table(
    model,
    contents: torch.Tensor,
    degraded: torch.Tensor,
    noise_seed: int = 0,
    *,
    perceptual: Optional[dict] = None,
    progress: Optional[Callable[[], None]] = None,
) -> dict:
    """The model against the identity and mismatched baselines on a grid of pairs.

    contents [n, 3, H, W]: clean photos; degraded [n, m, 3, H, W]: degraded[i, j] is content i under
    degradation j (m >= 2, the same degradation j for every content). For each pair (i, j):
    model ŷ = synthesize(x_i, codes of degraded[i, j]); identity ŷ = x_i; mismatched
    ŷ = synthesize(x_i, codes of degraded[i, (j + 1) % m]); cross_content (n >= 2)
    ŷ = synthesize(x_i, codes of degraded[(i + 1) % n, j]), scored against degraded[i, j]. Every method's
    "leakage" is ``content_leakage`` against the photo (i + 1) % n (the cross-content code's source; for
    the other methods a chance level); "leakage_reference" is that of the true pair degraded[i, j] - x_i
    (about 0). The spread ratio uses the unquantised e_g,
    the active dimensions the quantised one. ``perceptual`` maps names ("dists", "lpips") to distance
    modules ([0, 1] images, ``reduction="none"``) added to the measures; ``progress`` is called per pair.
    Returns {"methods": {method: {measure: mean}}, "leakage_reference": mean,
    "cross_leakage_by_degradation": [m] (cross_content leakage per degradation j, empty for n = 1),
    "spectrum_ratio_by_degradation": [m] (the model's mean spectrum distance over the identity's, per j),
    "codes": {"spread_ratio", "active_dimensions", "global_dim", "bits_total", "bits_global", "bits_local"},
    "pairs": n * m, "per_pair": [{"content": i, "degradation": j, method: {measure: value}}]}.
    """
    if (
        degraded.dim() != 5
        or contents.dim() != 4
        or degraded.shape[0] != contents.shape[0]
        or degraded.shape[2:] != contents.shape[1:]
        or degraded.shape[1] < 2
    ):
        raise ValueError(
            f"transfer_table: expected contents [n, 3, H, W] and degraded [n, m >= 2, 3, H, W], got "
            f"{tuple(contents.shape)} and {tuple(degraded.shape)}"
        )
    model.eval()
    n, m = degraded.shape[:2]
    methods_used = METHODS if n >= 2 else METHODS[:-1]
    rows: dict = {method: [] for method in methods_used}
    per_pair, reference = [], []
    raw_codes, codes, bits = [], [], []
    encoded = [[model.encode(degraded[i, j : j + 1]) for j in range(m)] for i in range(n)]
    for i in range(n):
        x, other = contents[i : i + 1], contents[(i + 1) % n : (i + 1) % n + 1]
        codes.append(torch.cat([e_g for e_g, _ in encoded[i]]))
        raw_codes.append(model.encode(degraded[i], quantize=False)[0])
        for j in range(m):
            y = degraded[i, j : j + 1]
            outputs = {"identity": x}
            sources = [("model", i, j), ("mismatched", i, (j + 1) % m)]
            if n >= 2:
                sources.append(("cross_content", (i + 1) % n, j))
            for method, code_content, code_degradation in sources:
                noise = torch.Generator(device=x.device).manual_seed(noise_seed)
                outputs[method] = model.synthesize(x, *encoded[code_content][code_degradation], noise=noise)
            pair = {"content": i, "degradation": j}
            reference.append(content_leakage(y, x, other))
            for method, y_hat in outputs.items():
                measures = degradation_measures(y_hat, y, x)
                measures["leakage"] = content_leakage(y_hat.clamp(0.0, 1.0), x, other)
                for name, module in (perceptual or {}).items():
                    measures[name] = module(y_hat.clamp(0.0, 1.0), y, reduction="none").double()
                rows[method].append(measures)
                pair[method] = {key: float(value[0]) for key, value in rows[method][-1].items()}
            per_pair.append(pair)
            bits.append(code_bits(model, y))
            if progress is not None:
                progress()
    methods = {
        method: {key: float(np.nanmean(torch.cat([r[key] for r in per]).cpu().numpy())) for key in per[0]}
        for method, per in rows.items()
    }
    codes_grid = torch.stack(codes)  # [n, m, global_dim]

    def mean_by_degradation(method: str, key: str) -> list:
        return [float(np.nanmean([p[method][key] for p in per_pair if p["degradation"] == j])) for j in range(m)]

    by_degradation = mean_by_degradation("cross_content", "leakage") if n >= 2 else []
    spectrum_ratio = [
        model_db / identity_db if identity_db > 0 else float("nan")
        for model_db, identity_db in zip(
            mean_by_degradation("model", "spectrum_db"), mean_by_degradation("identity", "spectrum_db")
        )
    ]
    return {
        "pairs": n * m,
        "methods": methods,
        "per_pair": per_pair,
        "leakage_reference": float(torch.cat(reference).mean()),
        "cross_leakage_by_degradation": by_degradation,
        "spectrum_ratio_by_degradation": spectrum_ratio,
        "codes": {
            "spread_ratio": code_spread_ratio(torch.stack(raw_codes)),
            "active_dimensions": active_dimensions(codes_grid.flatten(0, 1)),
            "global_dim": int(codes_grid.shape[-1]),
            **{f"bits_{k}": sum(b[k] for b in bits) / len(bits) for k in ("total", "global", "local")},
        },
    }


MEASURE_LABELS = {
    "spectrum_db": "spectrum distance dB (lower better)",
    "noise_error_255": "|noise σ error| /255 (lower better)",
    "blur_error_px": "|blur σ error| px (lower better)",
    "psnr_lowpass": "low-pass PSNR dB (higher better)",
    "ms_ssim_lowpass": "low-pass MS-SSIM (higher better)",
    "leakage": "leakage of the other photo (lower better)",
    "dists": "DISTS (lower better)",
    "lpips": "LPIPS (lower better)",
}


def _per_degradation_line(label: str, values: Optional[list], digits: int) -> list:
    """[] without values, else one line: the label, each degradation's value and the worst (largest) one."""
    if not values:
        return []
    return [f"{label}: " + " ".join(f"{v:.{digits}f}" for v in values) + f" (worst {np.nanmax(values):.{digits}f})"]


def format_transfer_table(table: dict) -> str:
    """``transfer_table``'s result as aligned text: one row per measure, one column per method."""
    width = max(len(label) for label in MEASURE_LABELS.values())
    methods = [m for m in METHODS if m in table["methods"]]
    lines = [
        f"{'measure (' + str(table['pairs']) + ' pairs)':<{width}}" + "".join(f"{m:>14}" for m in methods),
        "-" * (width + 14 * len(methods)),
    ]
    for key, label in MEASURE_LABELS.items():
        if key not in table["methods"]["model"]:  # DISTS / LPIPS without their weights
            continue
        lines.append(f"{label:<{width}}" + "".join(f"{table['methods'][m][key]:>14.4f}" for m in methods))
    c = table["codes"]
    lines += [
        "",
        f"leakage of the true degraded pair (y - x against the other photo, the reference level): "
        f"{table['leakage_reference']:.4f}",
        *_per_degradation_line("cross-content leakage per degradation", table.get("cross_leakage_by_degradation"), 3),
        *_per_degradation_line(
            "spectrum distance per degradation, model / identity", table.get("spectrum_ratio_by_degradation"), 2
        ),
        f"e_g spread ratio (contents / degradations, lower better): {c['spread_ratio']:.4f}",
        f"active e_g dimensions (variance > {ACTIVE_VARIANCE}): {c['active_dimensions']} of {c['global_dim']}",
        f"bits per image of the .udm code: {c['bits_total']:.0f} "
        f"(e_g stream {c['bits_global']:.0f}, e_l stream {c['bits_local']:.0f})",
    ]
    return "\n".join(lines)


def degradation_grid(contents: torch.Tensor, seeds: Sequence[int], config=None) -> tuple[torch.Tensor, list]:
    """(degraded [n, m, 3, H, W], params [m]): content i under the degradation drawn by
    ``udm_fast.degrade`` with seed ``seeds[j]``, whose parameters ``params[j]`` are the same for every
    content (image b's parameters depend only on the seed and b, and each content is degraded alone)."""
    from ..synthesis.degrade import degrade

    if len(seeds) < 2:
        raise ValueError("degradation_grid: give at least two seeds")
    rows, params = [], []
    for i in range(contents.shape[0]):
        results = [degrade(contents[i : i + 1], config=config, generator=int(s)) for s in seeds]
        rows.append(torch.cat([y for y, _ in results]))
        params = [plan[0] for _, plan in results]
    return torch.stack(rows), params
