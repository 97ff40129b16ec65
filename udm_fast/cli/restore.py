"""``udm-fast restore``: blind restoration of a photo with the deep image prior and the degradation model
as re-degrader (docs/restore.md). The outputs are written all or nothing (``write_all_atomic``), so an
interrupted run leaves neither a partial file nor a partial set."""

from __future__ import annotations

import argparse
import importlib.util
import io
import time

from tqdm import tqdm

from ..models.loading import load_model
from ..restore.invert import (
    DEFAULT_LOW_BAND_SIGMA,
    DEFAULT_STEPS,
    DEFAULT_TOL,
    check_early_stopping,
    check_size,
    default_distance,
    restore,
)
from ..restore.prior import DeepImagePrior
from ..utils.device import parse_device
from ..utils.files import write_all_atomic
from ..utils.io import format_for_path, image_writer, load_image
from .common import ParentParsers, check_seed, set_tile_size


def add_parser(commands: argparse._SubParsersAction, parents: ParentParsers) -> None:
    p = commands.add_parser(
        "restore",
        parents=[parents.debug, parents.model, parents.run],
        help="restore a degraded photo blindly (deep image prior + the model)",
        description="Fits a deep image prior G so that the model's re-degradation of G's image matches --degraded, "
        "optimising G together with the degradation code (started at encode(Y)) and the noise maps, "
        "and writes G's image to --out. Images from 16 to 1024 pixels a side.",
    )
    p.add_argument("--degraded", required=True, metavar="Y", help="the degraded photo")
    p.add_argument("--out", required=True, metavar="Z", help="the restoration (.png, .jpg or .jpeg)")
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        metavar="N",
        help=f"optimisation steps in all phases (default {DEFAULT_STEPS})",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the prior and the noise maps (default 0)")
    p.add_argument(
        "--low-band-sigma",
        type=float,
        default=DEFAULT_LOW_BAND_SIGMA,
        metavar="PX",
        help="fit the restoration's low band (Gaussian, PX pixels) to the photo's and let the model "
        f"re-degrade only the band above (default {DEFAULT_LOW_BAND_SIGMA:g}; 0 turns it off)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=0,
        metavar="N",
        help="end a phase once its loss has not improved by the relative --tol for N steps (default 0: never)",
    )
    p.add_argument(
        "--tol",
        type=float,
        default=DEFAULT_TOL,
        metavar="T",
        help=f"relative improvement that counts for --patience (default {DEFAULT_TOL:g})",
    )
    p.add_argument("--redegraded", metavar="PATH", help="also write the final re-degraded image")
    p.add_argument("--curve", metavar="PATH.png", help="also write the loss curve of every phase as a PNG plot")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_seed("--seed", args.seed)
    for path in (args.out, args.redegraded):
        if path is not None:
            format_for_path(path)
    if args.curve is not None and not args.curve.lower().endswith(".png"):
        raise ValueError(f"--curve must name a .png file, got {args.curve!r}")
    if args.curve is not None and importlib.util.find_spec("matplotlib") is None:
        raise ValueError(
            "--curve draws with matplotlib, which is not installed: pip install matplotlib (or the plot extra)"
        )
    if args.low_band_sigma < 0:
        raise ValueError(f"--low-band-sigma must be >= 0 (0 turns the correction off), got {args.low_band_sigma:g}")
    check_early_stopping(args.patience, args.tol)
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2 (one per phase), got {args.steps}")
    device = parse_device(args.device)
    y = load_image(args.degraded)
    check_size(y)
    model = load_model(args.weights, args.official, device)
    set_tile_size(model, args.tile_size)
    y = y.to(device=device, dtype=model.dtype)
    distance, distance_name = default_distance(device)
    start = time.perf_counter()
    with tqdm(total=args.steps, desc="restore", unit="step") as bar:

        def progress(done: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        result = restore(
            y,
            model,
            prior=DeepImagePrior(),
            steps=args.steps,
            distance=distance,
            seed=args.seed,
            low_band_sigma=args.low_band_sigma,
            patience=args.patience,
            tol=args.tol,
            progress=progress,
        )
    elapsed = time.perf_counter() - start
    outputs = {args.out: image_writer(result.image.cpu(), args.out)}
    if args.redegraded:
        outputs[args.redegraded] = image_writer(result.redegraded.cpu(), args.redegraded)
    if args.curve:
        curve = loss_curve_png(result.record, distance_name)
        outputs[args.curve] = lambda f: f.write(curve)
    write_all_atomic(outputs)
    steps = sum(len(r.losses) for r in result.record)
    early = [r.name for r in result.record if r.stopped_early]
    print(
        f"wrote {args.out} ({y.shape[-1]}x{y.shape[-2]}): {steps} steps "
        f"({', '.join(f'{r.name} {len(r.losses)}' for r in result.record)}"
        f"{'; stopped early: ' + ', '.join(early) if early else ''}), distance {distance_name}, low-band "
        f"correction {f'{args.low_band_sigma:g} px' if args.low_band_sigma > 0 else 'off'}, "
        f"final loss {result.record[-1].losses[-1]:.4f}, on {device} in {elapsed:.1f} s"
    )
    return 0


def loss_curve_png(record, distance_name: str) -> bytes:
    """A PNG plot of every phase's loss against the global step (phases in colours, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    first = 0
    for phase in record:
        steps = range(first + 1, first + len(phase.losses) + 1)
        ax.plot(list(steps), phase.losses, label=f"{phase.name}{' (stopped early)' if phase.stopped_early else ''}")
        first += len(phase.losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss ({distance_name})")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
