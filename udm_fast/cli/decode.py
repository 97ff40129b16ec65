"""``udm-fast decode``: decodes a .udm code with its model and summarises it."""

from __future__ import annotations

import argparse

import torch

from ..entropy import degradation_code
from ..models.checkpoint import save_atomic
from ..models.loading import load_model
from ..utils.device import parse_device
from .common import ParentParsers, read_code


def add_parser(commands: argparse._SubParsersAction, parents: ParentParsers) -> None:
    decode = commands.add_parser(
        "decode",
        parents=[parents.debug, parents.model],
        help="decode a .udm code and summarise it",
        description="Decodes a code written by `udm-fast encode` with the same model and "
        "prints its sizes and strongest e_g dimensions.",
    )
    decode.add_argument("code", metavar="CODE", help="the .udm file")
    decode.add_argument("--out", metavar="PT", help="also save the decoded e_g, e_l with torch.save")
    decode.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    decode.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    data = read_code(args.code)
    info = degradation_code.info(data)
    device = parse_device(args.device)
    model = load_model(args.weights, args.official, device)
    e_g, e_l = model.decompress_degradation(data)
    print(f"{args.code}: {info['bytes']} bytes, format version {info['version']}, model {info['weights_hash'][:16]}")
    print(
        f"  degraded image {info['width']}x{info['height']}; e_g {list(e_g.shape)} "
        f"({info['global_bytes']} bytes), e_l {list(e_l.shape)} ({info['local_bytes']} bytes)"
    )
    g = e_g[0].abs()
    top = torch.argsort(g, descending=True)[:8].tolist()
    print("  largest |e_g| dimensions: " + ", ".join(f"{i}: {e_g[0, i].item():+.3f}" for i in top))
    print("  e_l channel means: " + ", ".join(f"{v:.3f}" for v in e_l.mean(dim=(0, 2, 3)).tolist()))
    if args.out:
        save_atomic({"e_g": e_g.cpu(), "e_l": e_l.cpu(), "weights_hash": info["weights_hash"]}, args.out)
        print(f"  wrote the decoded codes to {args.out} (torch.load gives {{'e_g', 'e_l', 'weights_hash'}})")
    return 0
