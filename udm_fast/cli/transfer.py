"""``udm-fast transfer``: applies the degradation of one photo (or of a .udm code) to another."""

from __future__ import annotations

import argparse
import time

import torch

from ..models.loading import load_model
from ..utils.device import parse_device
from ..utils.io import format_for_path, load_image, save_image
from .common import (
    ParentParsers,
    add_inference_arguments,
    apply_inference_arguments,
    image_size,
    read_code,
    set_tile_size,
)


def add_parser(commands: argparse._SubParsersAction, parents: ParentParsers) -> None:
    transfer = commands.add_parser(
        "transfer",
        parents=[parents.debug, parents.model, parents.run],
        help="apply the degradation of one photo to another",
        description="Applies the degradation of --degraded to --clean, writes --out "
        "(PNG or JPEG by extension) with the clean image's size.",
    )
    transfer.add_argument("--clean", required=True, metavar="X", help="the clean image")
    source = transfer.add_mutually_exclusive_group(required=True)
    source.add_argument("--degraded", metavar="Y", help="the image whose degradation to copy")
    source.add_argument("--code", metavar="C", help="a degradation code written by `udm-fast encode`")
    transfer.add_argument("--out", required=True, metavar="Z", help="output image (.png, .jpg or .jpeg)")
    transfer.add_argument("--seed", type=int, metavar="S", help="seed of the generator noise (default: random)")
    add_inference_arguments(transfer)
    transfer.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    format_for_path(args.out)  # fail on a bad output name before any work
    device = parse_device(args.device)
    clean = load_image(args.clean)
    degraded = None if args.degraded is None else load_image(args.degraded)
    model = load_model(args.weights, args.official, device)
    set_tile_size(model, args.tile_size)
    apply_inference_arguments(model, args)
    noise = None if args.seed is None else torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    with torch.no_grad():
        if degraded is None:
            e_g, e_l = model.decompress_degradation(read_code(args.code))
            out = model.synthesize(clean.to(device), e_g, e_l, noise=noise)
            source = f"the code {args.code}"
        else:
            out = model.transfer(clean.to(device), degraded.to(device), noise=noise)
            source = f"{args.degraded} ({image_size(degraded)})"
    elapsed = time.perf_counter() - start
    save_image(out.cpu(), args.out)
    print(
        f"wrote {args.out} ({image_size(out)}): degradation of {source} applied to "
        f"{args.clean} ({image_size(clean)}) on {device} in {elapsed:.2f} s"
    )
    return 0
