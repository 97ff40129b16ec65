"""``udm-fast encode``: compresses the degradation of a photo into a .udm code."""

from __future__ import annotations

import argparse

from ..entropy import degradation_code
from ..models.loading import load_model
from ..utils.device import parse_device
from ..utils.files import write_bytes_atomic
from ..utils.io import load_image
from .common import ParentParsers, image_size, set_tile_size


def add_parser(commands: argparse._SubParsersAction, parents: ParentParsers) -> None:
    encode = commands.add_parser(
        "encode",
        parents=[parents.debug, parents.model, parents.run],
        help="compress the degradation of a photo into a .udm code",
        description="Encodes the degradation of --degraded (e_g and e_l, entropy coded "
        "with the model's tables) into --out; the file records the model.",
    )
    encode.add_argument("--degraded", required=True, metavar="Y", help="the degraded image")
    encode.add_argument("--out", required=True, metavar="CODE", help="output file (e.g. code.udm)")
    encode.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    device = parse_device(args.device)
    degraded = load_image(args.degraded)
    model = load_model(args.weights, args.official, device)
    set_tile_size(model, args.tile_size)
    data = model.compress_degradation(degraded.to(device))
    write_bytes_atomic(args.out, data)
    info = degradation_code.info(data)
    pixels = degraded.shape[-2] * degraded.shape[-1]
    print(
        f"wrote {args.out}: {len(data)} bytes for {args.degraded} ({image_size(degraded)}); "
        f"e_g {8 * info['global_bytes']} bits, e_l {8 * info['local_bytes']} bits "
        f"({8 * info['local_bytes'] / pixels:.4f} bits per pixel)"
    )
    return 0
