"""``udm-fast eval``: measures how well a model re-applies degradations, on a paired set (--data) or
by transfer between seeded degradations of clean photos against two baselines (--clean)."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ..eval.figures import center_crop
from ..eval.metrics import SSIM_WINDOW
from ..models.loading import load_model
from ..train.data import DataError, ItemError, decode_image, list_images, read_pairs
from ..utils.device import parse_device
from ..utils.files import write_bytes_atomic
from .common import (
    IMAGE_EXTENSIONS,
    SEED_LIMIT,
    SYNTH_INDEX,
    TRANSFER_FIRST_SEED,
    ParentParsers,
    add_inference_arguments,
    apply_inference_arguments,
    check_seed,
    report,
)

TRANSFER_CROP = 128
TRANSFER_MIN_CROP = 32


def add_parser(commands: argparse._SubParsersAction, parents: ParentParsers) -> None:
    evaluate = commands.add_parser(
        "eval",
        parents=[parents.debug],
        help="measure how well a model re-applies degradations",
        description="Two modes. --data: for each (clean x, degraded y) pair of a paired set, ŷ = the model "
        "re-applies y's degradation to x; reports DISTS and LPIPS (when their weights are available), "
        "MS-SSIM and PSNR of ŷ against y, and the bits of the quantised codes. --clean: degrades each "
        "clean photo with --degradations seeded draws of udm_fast.degrade and compares the model with "
        "two baselines on the same pairs (identity ŷ = x, and the code of another degradation) on "
        "measures that do not depend on the noise realisation (power spectrum, noise level, blur "
        "width), on content after a low-pass, and on the codes (spread ratio, active dimensions, bits). "
        "Prints a table, writes JSON.",
    )
    evaluate.add_argument(
        "--weights",
        metavar="W",
        help="a model file (model.pt of a run), a training checkpoint, or with --official the "
        "authors' checkpoint (default: the bundled model)",
    )
    evaluate.add_argument("--official", action="store_true", help="W is the authors' checkpoint")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data", metavar="DIR|CSV", help=f"a paired CSV index, or a folder holding {SYNTH_INDEX} (as written by synth)"
    )
    source.add_argument(
        "--clean",
        metavar="DIR",
        help="a folder of clean photos (held out from training): "
        "transfer evaluation against the identity and mismatched baselines, and cross-content "
        "codes (another photo's) with the leakage of that photo into the result",
    )
    evaluate.add_argument("--distorted-column", default="name", metavar="NAME")
    evaluate.add_argument("--reference-column", default="ref_name", metavar="NAME")
    evaluate.add_argument("--out", default="eval.json", metavar="JSON", help="results file (default eval.json)")
    evaluate.add_argument("--device", default="auto", metavar="DEV", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument(
        "--crop",
        type=int,
        default=0,
        metavar="N",
        help=f"evaluate the central N x N crops, N >= {SSIM_WINDOW} (default: whole images; "
        f"--clean: N >= {TRANSFER_MIN_CROP}, default {TRANSFER_CROP})",
    )
    evaluate.add_argument(
        "--limit", type=int, default=0, metavar="N", help="only the first N pairs (--data) or photos (--clean)"
    )
    evaluate.add_argument(
        "--degradations",
        type=int,
        default=6,
        metavar="M",
        help="--clean: degradations per photo (default 6, at least 2)",
    )
    evaluate.add_argument(
        "--first-seed",
        type=int,
        default=TRANSFER_FIRST_SEED,
        metavar="S",
        help=f"--clean: seed of the first degradation, then S+1, ... (default {TRANSFER_FIRST_SEED}, "
        "far from the seeds a training run draws)",
    )
    evaluate.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the generator noise")
    evaluate.add_argument("--vgg-weights", metavar="PATH", help="torchvision VGG16 file for DISTS/LPIPS")
    evaluate.add_argument("--no-download", action="store_true", help="never download the VGG16 weights")
    add_inference_arguments(evaluate)
    evaluate.set_defaults(run=run)


def _index_path(data: str) -> str:
    if os.path.isdir(data):
        path = os.path.join(data, SYNTH_INDEX)
        if not os.path.isfile(path):
            raise DataError(f"{data} holds no {SYNTH_INDEX}; pass the CSV index itself")
        return path
    if not os.path.isfile(data):
        raise DataError(f"--data {data}: no such file or folder")
    return data


def _central_crop_chw(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> contiguous uint8 [3, size, size] of its central crop (size 0: the whole image).
    An image smaller than ``size`` raises ItemError (its item is skipped)."""
    chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if not size:
        return chw
    try:
        return center_crop(chw, size, what="--crop").contiguous()
    except ValueError as exc:
        raise ItemError(str(exc)) from None


def _eval_pairs(
    index: str, args: argparse.Namespace, device: torch.device, skipped: list
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    root = os.path.dirname(os.path.abspath(index))
    pairs = read_pairs(index, args.distorted_column, args.reference_column)
    if args.limit:
        pairs = pairs[: args.limit]
    for distorted, reference in pairs:
        try:
            y = decode_image(os.path.join(root, distorted))
            try:
                x = decode_image(os.path.join(root, reference))
            except ItemError as exc:
                raise ItemError(f"its reference {os.path.join(root, reference)}: {exc}") from exc
            if x.shape != y.shape:
                x = np.asarray(Image.fromarray(x).resize((y.shape[1], y.shape[0]), Image.BICUBIC))
            x, y = _central_crop_chw(x, args.crop), _central_crop_chw(y, args.crop)
        except ItemError as exc:
            skipped.append(f"{os.path.join(root, distorted)}: {exc}")
            report("warning", f"skipped {skipped[-1]}")
            continue
        yield distorted, x[None].to(device).float() / 255.0, y[None].to(device).float() / 255.0


def _perceptual_metrics(args: argparse.Namespace, device: torch.device) -> tuple[dict, dict]:
    """({name: module} of the perceptual metrics whose weights load, {name: why not} for the others).

    Both metrics need the VGG16 file: when it cannot be had for the first (not found, download failed),
    the second is reported unavailable for the same reason instead of trying again."""
    from ..losses import DISTS, LPIPS, MissingWeightsError
    from ..losses.pretrained import MissingVGG16Error

    modules, unavailable = {}, {}
    vgg16_problem = None
    for name, cls in (("dists", DISTS), ("lpips", LPIPS)):
        if vgg16_problem is not None:
            unavailable[name] = vgg16_problem
            continue
        try:
            modules[name] = cls(vgg_weights=args.vgg_weights, download=not args.no_download).to(device).eval()
        except MissingWeightsError as exc:
            reason = exc.problem  # its how-to speaks Python; the VGG16 file's gets a command-line one
            if isinstance(exc, MissingVGG16Error):
                reason += (
                    "; give --vgg-weights PATH (torchvision's vgg16-397923af.pth) or put that file in the "
                    "torch hub cache"
                )
                vgg16_problem = reason
            unavailable[name] = reason
    return modules, unavailable


def _clean_crops(folder: str, crop: int, limit: int, skipped: list) -> tuple[list, torch.Tensor]:
    """(paths, [n, 3, crop, crop] in [0, 1]): the central crop of every usable photo in the folder
    (sorted; the first ``limit`` if > 0). Unusable files are reported, appended to ``skipped`` and left out."""
    if not os.path.isdir(folder):
        raise DataError(f"--clean {folder}: no such folder")
    paths, crops = [], []
    for relative in list_images(folder, IMAGE_EXTENSIONS):
        path = os.path.join(folder, relative)
        try:
            crops.append(_central_crop_chw(decode_image(path), crop))
        except ItemError as exc:
            skipped.append(f"{path}: {exc}")
            report("warning", f"skipped {skipped[-1]}")
            continue
        paths.append(path)
        if len(paths) == limit:
            break
    if len(paths) < 2:
        raise DataError(
            f"--clean {folder}: needs at least 2 usable photos of at least {crop}x{crop} (the spread "
            f"ratio compares contents), found {len(paths)}"
        )
    return paths, torch.stack(crops).float() / 255.0


def run(args: argparse.Namespace) -> int:
    _check_eval_flags(args)
    device = parse_device(args.device)
    index = _index_path(args.data) if args.clean is None else None
    model = load_model(args.weights, args.official, device)
    apply_inference_arguments(model, args)
    perceptual, unavailable = _perceptual_metrics(args, device)
    for name, reason in unavailable.items():
        report("note", f"{name} not computed ({reason})")
    if args.clean is None:
        results, table = _eval_paired(model, index, args, device, perceptual)
    else:
        results, table = _eval_transfer(model, args, device, perceptual)
    results.update(
        weights=args.weights or "bundled",
        weights_hash=model.weights_hash(),
        global_code=model.global_code,
        data=index or args.clean,
        crop=results.get("crop", args.crop or None),
        seed=args.seed,
        unavailable=unavailable,
    )
    print(table)
    write_bytes_atomic(args.out, json.dumps(results, indent=2).encode("utf-8"))
    print(f"wrote {args.out}")
    return 0


def _check_eval_flags(args: argparse.Namespace) -> None:
    """Raises ValueError naming the first numeric flag out of range for the chosen mode."""
    if args.limit < 0:
        raise ValueError(f"--limit must be >= 0 (0: no limit), got {args.limit}")
    check_seed("--seed", args.seed)
    if args.clean is None:
        if args.crop < 0 or 0 < args.crop < SSIM_WINDOW:
            raise ValueError(
                f"--crop must be 0 (whole images) or at least {SSIM_WINDOW} (the MS-SSIM window), got {args.crop}"
            )
        return
    if args.crop < 0 or 0 < args.crop < TRANSFER_MIN_CROP:
        raise ValueError(
            f"--clean needs --crop 0 (the default {TRANSFER_CROP}) or at least {TRANSFER_MIN_CROP}, got {args.crop}"
        )
    if args.degradations < 2:
        raise ValueError(f"--clean needs --degradations >= 2, got {args.degradations}")
    last_seed = args.first_seed + args.degradations - 1
    if args.first_seed < 0 or last_seed >= SEED_LIMIT:
        raise ValueError(
            f"--clean draws the degradation seeds --first-seed .. --first-seed + --degradations - 1, "
            f"which must lie in 0 .. 2**64 - 1; got {args.first_seed} .. {last_seed}"
        )


def _eval_paired(model, index: str, args: argparse.Namespace, device: torch.device, perceptual: dict):
    from ..eval.metrics import evaluate_pairs

    skipped: list = []
    results = evaluate_pairs(
        model, _eval_pairs(index, args, device, skipped), perceptual=perceptual, noise_seed=args.seed
    )
    results["skipped"] = skipped
    return results, format_table(results)


def _eval_transfer(model, args: argparse.Namespace, device: torch.device, perceptual: dict):
    from tqdm import tqdm

    from ..eval.transfer import degradation_grid, format_transfer_table, transfer_table

    crop = args.crop or TRANSFER_CROP
    skipped: list = []
    paths, contents = _clean_crops(args.clean, crop, args.limit, skipped)
    seeds = list(range(args.first_seed, args.first_seed + args.degradations))
    degraded, params = degradation_grid(contents, seeds)
    start = time.perf_counter()
    with tqdm(total=len(paths) * len(seeds), desc="pairs", unit="pair", disable=None) as bar:
        table = transfer_table(
            model,
            contents.to(device),
            degraded.to(device),
            noise_seed=args.seed,
            perceptual=perceptual,
            progress=bar.update,
        )
    elapsed = time.perf_counter() - start
    text = (
        format_transfer_table(table) + f"\n({len(paths)} photos x {len(seeds)} degradations, {crop}x{crop} "
        f"central crops, degradation seeds {seeds[0]}..{seeds[-1]}, {elapsed:.1f} s on {device})"
    )
    table.update(photos=paths, crop=crop, degradation_seeds=seeds, degradations=params, skipped=skipped)
    return table, text


METRIC_LABELS = {
    "dists": "DISTS (lower is better)",
    "lpips": "LPIPS (lower is better)",
    "ms_ssim": "MS-SSIM (higher is better)",
    "psnr": "PSNR dB (higher is better)",
    "bits_global_per_image": "e_g bits per image",
    "bits_local_per_pixel": "e_l bits per pixel",
}


def format_table(results: dict) -> str:
    """The mean metrics as an aligned two-column table."""
    means = results["mean"]
    order = [k for k in METRIC_LABELS if k in means or k in results.get("unavailable", {})]
    width = max(len(METRIC_LABELS[k]) for k in order)
    lines = [f"{'metric':<{width}}  mean over {results['count']} pairs", "-" * (width + 24)]
    for key in order:
        value = f"{means[key]:.4f}" if key in means else "n/a (weights missing)"
        lines.append(f"{METRIC_LABELS[key]:<{width}}  {value}")
    return "\n".join(lines)
