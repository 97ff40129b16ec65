"""Restoration table in the shape of the report's Table 1: tasks x levels on held-out photos.

    python bench/embedded_photos.py --out /tmp/photos
    python bench/restore_table.py --photos /tmp/photos/heldout --size 64 --steps 60

Cells: PSNR / MS-SSIM of the restoration against the clean crop, then LPIPS / DISTS when their weights
load (no download), averaged over the photos. Columns: degraded input; naive blind inversion (the
deep image prior fits y directly; its final result, and its best snapshot by PSNR against the clean
image, an oracle early stop that favours it); ours (blind, the bundled model as learned re-degrader
with the low-band correction of ``udm_fast.restore.restore``, its phases; ``--raw`` adds the
uncorrected re-degrader as a column); the non-blind inversion through the true operator without its
noise (blur, JPEG with the float JPEG's gradient; identity for noise alone) that stops by the
discrepancy principle at the known noise sigma when noise is the last degradation (docs/restore.md).
Same prior, optimiser, steps, seed and distance (``default_distance``, the one ``restore`` ships) for
every method.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Optional

import torch

from udm_fast import default_model
from udm_fast.eval.metrics import ms_ssim, psnr
from udm_fast.losses.perceptual import DISTS, LPIPS
from udm_fast.losses.pretrained import MissingWeightsError
from udm_fast.restore import (
    DEFAULT_LOW_BAND_SIGMA,
    DeepImagePrior,
    Identity,
    KnownOperator,
    LearnedRedegrader,
    LowBandCorrected,
    default_distance,
    default_phases,
    invert,
    operators,
)
from udm_fast.synthesis import degrade
from udm_fast.utils.io import load_image

LEVELS = {"noise": (10 / 255, 25 / 255, 50 / 255), "blur": (1.0, 2.0, 3.0), "jpeg": (50, 25, 10)}
TASKS = (("noise",), ("blur",), ("jpeg",), ("blur", "noise"), ("blur", "jpeg"), ("noise", "jpeg"))


def degrade_with(x: torch.Tensor, task: tuple, level: int, generator: torch.Generator):
    """(y, operator, sigma): the degraded image, the known differentiable operator of the same degradation
    without its noise (the noise is not re-drawn), and the noise's sigma when noise is the last
    degradation (y - operator(x) is then the noise, for the discrepancy principle), else None."""
    y, ops, sigma = x, [], None
    for kind in task:
        value = LEVELS[kind][level]
        sigma = value if kind == "noise" else None
        if kind == "noise":
            y = degrade.gaussian_noise(y, value, generator=generator)
        elif kind == "blur":
            y = degrade.gaussian_blur(y, value)
            ops.append(operators.blur(value))
        else:
            y = degrade.jpeg(y, value)
            ops.append(operators.jpeg(value))
    return y, operators.chain(ops), sigma


def quality_metrics(device: torch.device | str = "cpu") -> dict:
    """{name: metric(a, b) -> float}: PSNR and MS-SSIM, then LPIPS and DISTS where their weights load."""
    metrics = {"psnr": lambda a, b: float(psnr(a, b)), "ms_ssim": lambda a, b: float(ms_ssim(a, b))}
    for name, build in (("lpips", LPIPS), ("dists", DISTS)):
        try:
            network = build(download=False).to(device)
        except MissingWeightsError:
            continue
        metrics[name] = lambda a, b, network=network: float(network(a, b))
    return metrics


def restore_methods(
    y: torch.Tensor,
    x: torch.Tensor,
    operator: Callable[[torch.Tensor], torch.Tensor],
    sigma: Optional[float],
    model,
    methods: tuple,
    steps: int,
    distance: torch.nn.Module,
) -> dict:
    """{method: restoration [1, 3, H, W]} for the inverted ``methods`` and the naive oracle stop (x is
    only used to pick that snapshot)."""
    results = {}
    for name in methods:
        g = torch.Generator().manual_seed(0)
        if name == "naive":
            redegrader = Identity()
        elif name == "ours_raw":
            redegrader = LearnedRedegrader(model, y, g)
        elif name == "ours":
            redegrader = LowBandCorrected(LearnedRedegrader(model, y, g), DEFAULT_LOW_BAND_SIGMA)
        else:
            redegrader = KnownOperator(operator)
        prior = DeepImagePrior()
        r = invert(
            y,
            prior,
            redegrader,
            default_phases(prior, steps),
            distance=distance,
            generator=g,
            snapshot_every=5 if name == "naive" else 0,
            discrepancy_sigma=sigma if name == "non_blind" else None,
        )
        results[name] = r.image
        if name == "naive":
            candidates = [im for _, im in r.snapshots] + [r.image]
            results["naive_oracle"] = max(candidates, key=lambda im: float(psnr(im, x)))
    return results


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return x[..., (h - size) // 2 : (h - size) // 2 + size, (w - size) // 2 : (w - size) // 2 + size]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", required=True, help="folder of held-out clean photos")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N photos (0 = all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tasks", default="", help="comma-separated tasks such as noise,blur+noise (default: all)")
    parser.add_argument("--raw", action="store_true", help="also run ours without the low-band correction")
    args = parser.parse_args()
    tasks = TASKS if not args.tasks else [tuple(t.split("+")) for t in args.tasks.split(",")]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown tasks {['+'.join(t) for t in unknown]}; known: {['+'.join(t) for t in TASKS]}")
    torch.set_num_threads(args.threads)
    names = sorted(os.listdir(args.photos))[: args.limit or None]
    cleans = [center_crop(load_image(os.path.join(args.photos, n)), args.size) for n in names]
    model = default_model()
    distance, distance_name = default_distance()
    metrics = quality_metrics()
    methods = ("degraded", "naive", "naive_oracle", *(("ours_raw",) if args.raw else ()), "ours", "non_blind")
    inverted = tuple(m for m in methods if m not in ("degraded", "naive_oracle"))
    print(
        f"# {len(cleans)} photos ({', '.join(names)}), {args.size}x{args.size} crops, {args.steps} steps, "
        f"{args.threads} thread(s), distance {distance_name}; cells: {' / '.join(metrics)}"
    )
    print("| task | level | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    start = time.perf_counter()
    for task in tasks:
        for level in range(3):
            scores = {m: [] for m in methods}
            for i, x in enumerate(cleans):
                y, operator, sigma = degrade_with(x, task, level, torch.Generator().manual_seed(1000 + i))
                results = {
                    "degraded": y,
                    **restore_methods(y, x, operator, sigma, model, inverted, args.steps, distance),
                }
                for m in methods:
                    scores[m].append([metric(results[m], x) for metric in metrics.values()])
            cells = [
                " / ".join(
                    f"{sum(column) / len(column):{'.2f' if k == 0 else '.3f'}}" for k, column in enumerate(zip(*s))
                )
                for s in scores.values()
            ]
            print(f"| {'+'.join(task)} | {'SML'[level]} | " + " | ".join(cells) + " |", flush=True)
    print(f"# {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
