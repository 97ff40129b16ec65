"""``udm-fast synth``: degrades a folder of clean images into a paired training set (ref/, degraded/, pairs.csv)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections import Counter
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..synthesis.degrade import DegradeConfig, degrade
from ..train.config import load_config
from ..train.data import DataError, derive_seed, list_images
from ..utils.io import ImageError, load_image
from .common import IMAGE_EXTENSIONS, SYNTH_INDEX, ParentParsers, check_seed, report


def add_parser(commands: argparse._SubParsersAction, parents: ParentParsers) -> None:
    synth = commands.add_parser(
        "synth",
        parents=[parents.debug],
        help="make a paired training set from clean images",
        description=f"Degrades every image of --clean --per-image times and writes OUT/ref/STEM.png, "
        f"OUT/degraded/STEM-K.png (K = 0 .. N-1) and OUT/{SYNTH_INDEX} (columns name, ref_name, params) "
        f"in the reference's format. STEM is the image's path under --clean without its extension; "
        f"images that would share a STEM (x.jpg and x.png) keep their extension in it (x_jpg, x_png). "
        f"Grayscale, palette, transparent and other non-RGB images are converted to RGB with a note.",
    )
    synth.add_argument(
        "--clean",
        required=True,
        metavar="DIR",
        help="folder of clean images (searched recursively, except --out when it lies inside)",
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="output folder (not --clean itself)")
    synth.add_argument("--per-image", type=int, default=1, metavar="N", help="degraded versions per image (default 1)")
    synth.add_argument("--seed", type=int, default=0, metavar="S", help="seed, >= 0 (default 0)")
    synth.add_argument(
        "--config",
        metavar="CONFIG",
        help="take the degradation settings from this training config's data.degrade (default: DegradeConfig defaults)",
    )
    synth.add_argument(
        "--max-side",
        type=int,
        default=0,
        metavar="N",
        help="downscale images whose longer side exceeds N pixels first (default 0: keep sizes)",
    )
    synth.set_defaults(run=run)


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
        raise ValueError(
            f"--out {out} is the --clean folder itself; write to another folder, e.g. {os.path.join(clean, 'synth')}"
        )
    files = list_images(clean, IMAGE_EXTENSIONS)
    if out_under_clean == os.pardir or out_under_clean.startswith(os.pardir + os.sep):
        return files
    files = [relative for relative in files if not relative.startswith(out_under_clean + os.sep)]
    if not files:
        raise DataError(f"no images under {clean} outside --out {out}")
    return files


def _load_rgb8(path: str) -> np.ndarray:
    """uint8 [H, W, 3] of an image file, read by ``udm_fast.utils.io.load_image``, which notes each conversion
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


def run(args: argparse.Namespace) -> int:
    if args.per_image < 1:
        raise ValueError(f"--per-image must be >= 1, got {args.per_image}")
    if args.max_side < 0:
        raise ValueError(f"--max-side must be a positive number of pixels, or 0 to keep sizes, got {args.max_side}")
    check_seed("--seed", args.seed)
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
            report("warning", f"skipped {skipped[-1]}")
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
    print(
        f"wrote {len(rows)} pairs from {len(files) - len(skipped)} images to {args.out} "
        f"({time.perf_counter() - start:.1f} s); index {index_path}"
        + (f"; {len(skipped)} unusable files skipped" if skipped else "")
    )
    return 0
