"""The ``udm-fast train``, ``synth`` and ``eval`` subcommands (registered by ``add_commands``).

Handlers return an exit code and raise ``ValueError`` / ``OSError`` for expected failures, which
the ``udm-fast`` entry point prints as one error line.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections import Counter
from typing import Iterator, Sequence

import numpy as np
import torch
import yaml
from PIL import Image

from ..degrade import DegradeConfig, degrade
from ..files import write_bytes_atomic
from ..io import ImageError, load_image
from .config import ConfigError, load_config
from .data import DataError, ItemError, decode_image, derive_seed, list_images, read_pairs
from .metrics import SSIM_WINDOW

SYNTH_INDEX = "pairs.csv"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
TRANSFER_CROP = 128
TRANSFER_MIN_CROP = 32
TRANSFER_FIRST_SEED = 1_000_000
SEED_LIMIT = 2 ** 64  # torch.Generator.manual_seed takes seeds in 0 .. 2**64 - 1


def add_commands(commands: argparse._SubParsersAction, parents: Sequence[argparse.ArgumentParser]) -> None:
    """Adds ``train``, ``synth`` and ``eval`` to the ``udm-fast`` subcommands."""
    train = commands.add_parser(
        "train", parents=list(parents), help="train a model from a YAML config",
        description="Trains a model as CONFIG says (see configs/default.yaml for every key). Flags override the "
                    "config. Multi-GPU: torchrun --nproc_per_node N --no-python udm-fast train CONFIG.")
    train.add_argument("config", metavar="CONFIG", nargs="?", help="YAML training config (required)")
    train.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                       help="continue the run in the output folder from its newest checkpoint, or from CHECKPOINT")
    train.add_argument("--out", metavar="DIR", help="output folder (log.out_dir)")
    train.add_argument("--max-steps", type=int, metavar="N", help="stop after N iterations (run.max_steps)")
    train.add_argument("--data", metavar="DIR|CSV",
                       help="a folder of clean images (data.kind folder) or a paired CSV index (data.kind csv)")
    train.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N (run.device)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key with a YAML value, e.g. --set run.amp=bf16 (repeatable)")
    train.set_defaults(run=run_train)

    synth = commands.add_parser(
        "synth", parents=list(parents), help="make a paired training set from clean images",
        description=f"Degrades every image of --clean --per-image times and writes OUT/ref/STEM.png, "
                    f"OUT/degraded/STEM-K.png (K = 0 .. N-1) and OUT/{SYNTH_INDEX} (columns name, ref_name, params) "
                    f"in the reference's format. STEM is the image's path under --clean without its extension; "
                    f"images that would share a STEM (x.jpg and x.png) keep their extension in it (x_jpg, x_png). "
                    f"Grayscale, palette, transparent and other non-RGB images are converted to RGB with a note.")
    synth.add_argument("--clean", required=True, metavar="DIR",
                       help="folder of clean images (searched recursively, except --out when it lies inside)")
    synth.add_argument("--out", required=True, metavar="DIR", help="output folder (not --clean itself)")
    synth.add_argument("--per-image", type=int, default=1, metavar="N", help="degraded versions per image (default 1)")
    synth.add_argument("--seed", type=int, default=0, metavar="S", help="seed, >= 0 (default 0)")
    synth.add_argument("--config", metavar="CONFIG", help="take the degradation settings from this training "
                       "config's data.degrade (default: DegradeConfig defaults)")
    synth.add_argument("--max-side", type=int, default=0, metavar="N",
                       help="downscale images whose longer side exceeds N pixels first (default 0: keep sizes)")
    synth.set_defaults(run=run_synth)

    evaluate = commands.add_parser(
        "eval", parents=list(parents), help="measure how well a model re-applies degradations",
        description="Two modes. --data: for each (clean x, degraded y) pair of a paired set, ŷ = the model "
                    "re-applies y's degradation to x; reports DISTS and LPIPS (when their weights are available), "
                    "MS-SSIM and PSNR of ŷ against y, and the bits of the quantised codes. --clean: degrades each "
                    "clean photo with --degradations seeded draws of udm_fast.degrade and compares the model with "
                    "two baselines on the same pairs (identity ŷ = x, and the code of another degradation) on "
                    "measures that do not depend on the noise realisation (power spectrum, noise level, blur "
                    "width), on content after a low-pass, and on the codes (spread ratio, active dimensions, bits). "
                    "Prints a table, writes JSON.")
    evaluate.add_argument("--weights", metavar="W",
                          help="a model file (model.pt of a run), a training checkpoint, or with --official the "
                               "authors' checkpoint (default: the bundled model)")
    evaluate.add_argument("--official", action="store_true", help="W is the authors' checkpoint")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DIR|CSV",
                        help=f"a paired CSV index, or a folder holding {SYNTH_INDEX} (as written by synth)")
    source.add_argument("--clean", metavar="DIR", help="a folder of clean photos (held out from training): "
                        "transfer evaluation against the identity and mismatched baselines, and cross-content "
                        "codes (another photo's) with the leakage of that photo into the result")
    evaluate.add_argument("--distorted-column", default="name", metavar="NAME")
    evaluate.add_argument("--reference-column", default="ref_name", metavar="NAME")
    evaluate.add_argument("--out", default="eval.json", metavar="JSON", help="results file (default eval.json)")
    evaluate.add_argument("--device", default="auto", metavar="DEV", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--crop", type=int, default=0, metavar="N",
                          help=f"evaluate the central N x N crops, N >= {SSIM_WINDOW} (default: whole images; "
                               f"--clean: N >= {TRANSFER_MIN_CROP}, default {TRANSFER_CROP})")
    evaluate.add_argument("--limit", type=int, default=0, metavar="N", help="only the first N pairs (--data) or "
                          "photos (--clean)")
    evaluate.add_argument("--degradations", type=int, default=6, metavar="M",
                          help="--clean: degradations per photo (default 6, at least 2)")
    evaluate.add_argument("--first-seed", type=int, default=TRANSFER_FIRST_SEED, metavar="S",
                          help=f"--clean: seed of the first degradation, then S+1, ... (default {TRANSFER_FIRST_SEED}, "
                               "far from the seeds a training run draws)")
    evaluate.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the generator noise")
    evaluate.add_argument("--vgg-weights", metavar="PATH", help="torchvision VGG16 file for DISTS/LPIPS")
    evaluate.add_argument("--no-download", action="store_true", help="never download the VGG16 weights")
    evaluate.set_defaults(run=run_eval)


def _configure_logging() -> None:
    root = logging.getLogger("udm_fast")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("udm-fast: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


# ----------------------------------------------------------------------------- train


def train_overrides(args: argparse.Namespace) -> dict:
    """The dotted config keys the command-line flags set."""
    overrides = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(text)
    if args.out is not None:
        overrides["log.out_dir"] = args.out
    if args.max_steps is not None:
        overrides["run.max_steps"] = args.max_steps
    if args.device is not None:
        overrides["run.device"] = args.device
    if args.data is not None:
        data = os.path.abspath(args.data)  # the run's config.yaml must still find it from elsewhere
        index = os.path.join(data, SYNTH_INDEX)
        if os.path.isdir(data) and os.path.isfile(index):
            print(f"udm-fast: note: --data {args.data} holds {SYNTH_INDEX}: training on its pairs "
                  f"(give a folder without it to train on plain photos)", file=sys.stderr)
            data = index
        if os.path.isfile(data) and data.lower().endswith(".csv"):
            overrides.update({"data.kind": "csv", "data.csv": data, "data.root": None})
        elif os.path.isdir(data):
            overrides.update({"data.kind": "folder", "data.root": data})
        else:
            raise DataError(f"--data {args.data}: not a folder of images nor a .csv index")
    return overrides


def run_train(args: argparse.Namespace) -> int:
    from ..losses import MissingWeightsError
    from . import distributed
    from .trainer import Trainer

    if args.config is None:  # optional for argparse only, to explain the --resume mix-up below
        if isinstance(args.resume, str) and args.resume.lower().endswith((".yaml", ".yml")):
            raise ConfigError(f"--resume took {args.resume} as its checkpoint; put the config first: "
                              f"udm-fast train {args.resume} --resume")
        raise ConfigError("train needs a CONFIG (a YAML file such as configs/tiny.yaml)")
    _configure_logging()
    config = load_config(args.config, train_overrides(args))
    try:
        trainer = Trainer(config, resume=args.resume)
        summary = trainer.run()
    except MissingWeightsError as exc:  # its how-to speaks Python: say it in config keys
        raise MissingWeightsError(
            exc.problem, "set loss.vgg_weights (torchvision's vgg16-397923af.pth), loss.dists_weights or "
            "loss.lpips_weights to the file (--set KEY=PATH), allow loss.download on a machine that is online, "
            "or for a smoke test without weights set loss.pretrained: false") from exc
    finally:
        distributed.shutdown()
    if trainer.dist.is_main:
        state = "finished" if summary["finished"] else "stopped (resume with --resume)"
        losses = ", ".join(f"{k} {v:.4g}" for k, v in summary["losses"].items())
        print(f"{state} at step {summary['step']} (epoch {summary['epoch']:.2f}); {losses}; "
              f"outputs in {summary['out_dir']}" + (f"; unusable files skipped {summary['skipped']} times"
                                                    if summary["skipped"] else ""))
    return 0


# ----------------------------------------------------------------------------- synth


def _check_seed(flag: str, seed: int) -> None:
    """Raises ValueError unless ``seed`` is one that torch generators (and ``derive_seed``) take."""
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{flag} must be an integer from 0 to 2**64 - 1, got {seed}")


def _relative_stem(relative: str) -> str:
    return os.path.splitext(relative)[0].replace(os.sep, "/")


def _output_stems(files: Sequence[str]) -> list:
    """The output stem of each file (``_relative_stem``), unique even on a case-insensitive file system:
    files whose stems clash keep their extension in it (x.jpg, x.png -> x_jpg, x_png), numbered
    (x_jpg_2, ...) in the rare case that this still clashes."""
    stems = [_relative_stem(relative) for relative in files]
    clashes = Counter(stem.casefold() for stem in stems)
    taken = {stem.casefold() for stem in stems if clashes[stem.casefold()] == 1}
    unique = []
    for relative, stem in zip(files, stems):
        if clashes[stem.casefold()] > 1:
            base = f"{stem}_{os.path.splitext(relative)[1][1:].lower()}"
            stem, number = base, 1
            while stem.casefold() in taken:
                number += 1
                stem = f"{base}_{number}"
            taken.add(stem.casefold())
        unique.append(stem)
    return unique


def _clean_files(clean: str, out: str) -> list:
    """The images under ``clean`` (``list_images``) minus those inside ``out``, so that a rerun does not
    read its own earlier output back as clean images."""
    out_under_clean = os.path.relpath(os.path.realpath(out), os.path.realpath(clean))
    if out_under_clean == os.curdir:
        raise ValueError(f"--out {out} is the --clean folder itself; write to another folder, e.g. "
                         f"{os.path.join(clean, 'synth')}")
    files = list_images(clean, IMAGE_EXTENSIONS)
    if out_under_clean == os.pardir or out_under_clean.startswith(os.pardir + os.sep):
        return files
    files = [relative for relative in files if not relative.startswith(out_under_clean + os.sep)]
    if not files:
        raise DataError(f"no images under {clean} outside --out {out}")
    return files


def _load_rgb8(path: str) -> np.ndarray:
    """uint8 [H, W, 3] of an image file, read by ``udm_fast.io.load_image``, which notes each conversion
    to RGB (grayscale, palette, alpha) as ``transfer`` does."""
    return (load_image(path)[0] * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _save_png(array: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _limit_side(array: np.ndarray, max_side: int) -> np.ndarray:
    if not max_side or max(array.shape[:2]) <= max_side:
        return array
    scale = max_side / max(array.shape[:2])
    size = (max(1, round(array.shape[1] * scale)), max(1, round(array.shape[0] * scale)))
    return np.array(Image.fromarray(array).resize(size, Image.LANCZOS))


def run_synth(args: argparse.Namespace) -> int:
    if args.per_image < 1:
        raise ValueError(f"--per-image must be >= 1, got {args.per_image}")
    if args.max_side < 0:
        raise ValueError(f"--max-side must be a positive number of pixels, or 0 to keep sizes, got {args.max_side}")
    _check_seed("--seed", args.seed)
    config = load_config(args.config).data.degrade if args.config else DegradeConfig()
    files = _clean_files(args.clean, args.out)
    rows, skipped = [], []
    start = time.perf_counter()
    for index, (relative, stem) in enumerate(zip(files, _output_stems(files))):
        path = os.path.join(args.clean, relative)
        try:
            clean = _limit_side(_load_rgb8(path), args.max_side)
            x = torch.from_numpy(np.ascontiguousarray(clean.transpose(2, 0, 1)))[None].float() / 255.0
            ref_name = f"ref/{stem}.png"
            outputs = []
            for variant in range(args.per_image):
                y, params = degrade(x, config=config, generator=derive_seed(args.seed, index, variant))
                pixels = (y[0] * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                outputs.append((f"degraded/{stem}-{variant}.png", pixels, params[0]))
        except ValueError as exc:  # unreadable (an ImageError, which names the file) or too small to degrade
            skipped.append(str(exc) if isinstance(exc, ImageError) else f"{path}: {exc}")
            print(f"udm-fast: warning: skipped {skipped[-1]}", file=sys.stderr)
            continue
        _save_png(clean, os.path.join(args.out, ref_name))
        for name, pixels, params in outputs:
            _save_png(pixels, os.path.join(args.out, name))
            rows.append({"name": name, "ref_name": ref_name, "params": json.dumps(params)})
    if not rows:
        raise DataError(f"no usable images in {args.clean} ({len(skipped)} skipped)")
    index_path = os.path.join(args.out, SYNTH_INDEX)
    with open(index_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["name", "ref_name", "params"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} pairs from {len(files) - len(skipped)} images to {args.out} "
          f"({time.perf_counter() - start:.1f} s); index {index_path}"
          + (f"; {len(skipped)} unusable files skipped" if skipped else ""))
    return 0


# ----------------------------------------------------------------------------- eval


def _index_path(data: str) -> str:
    if os.path.isdir(data):
        path = os.path.join(data, SYNTH_INDEX)
        if not os.path.isfile(path):
            raise DataError(f"{data} holds no {SYNTH_INDEX}; pass the CSV index itself")
        return path
    if not os.path.isfile(data):
        raise DataError(f"--data {data}: no such file or folder")
    return data


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    if not size:
        return a
    h, w = a.shape[:2]
    if min(h, w) < size:
        raise ItemError(f"{w}x{h} is smaller than --crop {size}")
    top, left = (h - size) // 2, (w - size) // 2
    return a[top:top + size, left:left + size]


def _eval_pairs(index: str, args: argparse.Namespace, device: torch.device,
                skipped: list) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    root = os.path.dirname(os.path.abspath(index))
    pairs = read_pairs(index, args.distorted_column, args.reference_column)
    if args.limit:
        pairs = pairs[:args.limit]
    for distorted, reference in pairs:
        try:
            y = decode_image(os.path.join(root, distorted))
            try:
                x = decode_image(os.path.join(root, reference))
            except ItemError as exc:
                raise ItemError(f"its reference {os.path.join(root, reference)}: {exc}") from exc
            if x.shape != y.shape:
                x = np.asarray(Image.fromarray(x).resize((y.shape[1], y.shape[0]), Image.BICUBIC))
            x, y = _center_crop(x, args.crop), _center_crop(y, args.crop)
        except ItemError as exc:
            skipped.append(f"{os.path.join(root, distorted)}: {exc}")
            print(f"udm-fast: warning: skipped {skipped[-1]}", file=sys.stderr)
            continue
        to_tensor = lambda a: (torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]  # noqa: E731
                               .to(device).float() / 255.0)
        yield distorted, to_tensor(x), to_tensor(y)


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
                reason += ("; give --vgg-weights PATH (torchvision's vgg16-397923af.pth) or put that file in the "
                           "torch hub cache")
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
            crops.append(_center_crop(decode_image(path), crop).transpose(2, 0, 1))
        except ItemError as exc:
            skipped.append(f"{path}: {exc}")
            print(f"udm-fast: warning: skipped {skipped[-1]}", file=sys.stderr)
            continue
        paths.append(path)
        if len(paths) == limit:
            break
    if len(paths) < 2:
        raise DataError(f"--clean {folder}: needs at least 2 usable photos of at least {crop}x{crop} (the spread "
                        f"ratio compares contents), found {len(paths)}")
    return paths, torch.from_numpy(np.ascontiguousarray(np.stack(crops))).float() / 255.0


def run_eval(args: argparse.Namespace) -> int:
    from ..cli import load_model, parse_device

    _check_eval_flags(args)
    device = parse_device(args.device)
    index = _index_path(args.data) if args.clean is None else None
    model = load_model(args.weights, args.official, device)
    perceptual, unavailable = _perceptual_metrics(args, device)
    for name, reason in unavailable.items():
        print(f"udm-fast: note: {name} not computed ({reason})", file=sys.stderr)
    if args.clean is None:
        results, table = _eval_paired(model, index, args, device, perceptual)
    else:
        results, table = _eval_transfer(model, args, device, perceptual)
    results.update(weights=args.weights or "bundled", weights_hash=model.weights_hash(), data=index or args.clean,
                   crop=results.get("crop", args.crop or None), seed=args.seed, unavailable=unavailable)
    print(table)
    write_bytes_atomic(args.out, json.dumps(results, indent=2).encode("utf-8"))
    print(f"wrote {args.out}")
    return 0


def _check_eval_flags(args: argparse.Namespace) -> None:
    """Raises ValueError naming the first numeric flag out of range for the chosen mode."""
    if args.limit < 0:
        raise ValueError(f"--limit must be >= 0 (0: no limit), got {args.limit}")
    _check_seed("--seed", args.seed)
    if args.clean is None:
        if args.crop < 0 or 0 < args.crop < SSIM_WINDOW:
            raise ValueError(f"--crop must be 0 (whole images) or at least {SSIM_WINDOW} (the MS-SSIM window), "
                             f"got {args.crop}")
        return
    if args.crop < 0 or 0 < args.crop < TRANSFER_MIN_CROP:
        raise ValueError(f"--clean needs --crop 0 (the default {TRANSFER_CROP}) or at least {TRANSFER_MIN_CROP}, "
                         f"got {args.crop}")
    if args.degradations < 2:
        raise ValueError(f"--clean needs --degradations >= 2, got {args.degradations}")
    last_seed = args.first_seed + args.degradations - 1
    if args.first_seed < 0 or last_seed >= SEED_LIMIT:
        raise ValueError(f"--clean draws the degradation seeds --first-seed .. --first-seed + --degradations - 1, "
                         f"which must lie in 0 .. 2**64 - 1; got {args.first_seed} .. {last_seed}")


def _eval_paired(model, index: str, args: argparse.Namespace, device: torch.device, perceptual: dict):
    from .metrics import evaluate_pairs

    skipped: list = []
    results = evaluate_pairs(model, _eval_pairs(index, args, device, skipped), perceptual=perceptual,
                             noise_seed=args.seed)
    results["skipped"] = skipped
    return results, format_table(results)


def _eval_transfer(model, args: argparse.Namespace, device: torch.device, perceptual: dict):
    from ..evaluation import degradation_grid, format_transfer_table, transfer_table
    from tqdm import tqdm

    crop = args.crop or TRANSFER_CROP
    skipped: list = []
    paths, contents = _clean_crops(args.clean, crop, args.limit, skipped)
    seeds = list(range(args.first_seed, args.first_seed + args.degradations))
    degraded, params = degradation_grid(contents, seeds)
    start = time.perf_counter()
    with tqdm(total=len(paths) * len(seeds), desc="pairs", unit="pair", disable=None) as bar:
        table = transfer_table(model, contents.to(device), degraded.to(device), noise_seed=args.seed,
                               perceptual=perceptual, progress=bar.update)
    text = (format_transfer_table(table) + f"\n({len(paths)} photos x {len(seeds)} degradations, {crop}x{crop} "
            f"central crops, degradation seeds {seeds[0]}..{seeds[-1]}, {time.perf_counter() - start:.1f} s on {device})")
    table.update(photos=paths, crop=crop, degradation_seeds=seeds, degradations=params, skipped=skipped)
    return table, text


METRIC_LABELS = {"dists": "DISTS (lower is better)", "lpips": "LPIPS (lower is better)",
                 "ms_ssim": "MS-SSIM (higher is better)", "psnr": "PSNR dB (higher is better)",
                 "bits_global_per_image": "e_g bits per image", "bits_local_per_pixel": "e_l bits per pixel"}


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
