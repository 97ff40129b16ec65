"""``udm-fast info``: versions, the available backends and the model's configuration and sizes."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from typing import Optional

import torch

from ..models.loading import load_model
from ..ops import backend
from ..version import __version__
from .common import ParentParsers, describe_model


def add_parser(commands: argparse._SubParsersAction, parents: ParentParsers) -> None:
    info = commands.add_parser(
        "info", parents=[parents.debug, parents.model], help="versions, available backends and the model's sizes"
    )
    info.set_defaults(run=run)


def _version_of(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except ImportError as exc:
        return f"not installed ({exc})"
    return getattr(module, "__version__", "unknown version")


def _count(module: Optional[torch.nn.Module]) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def run(args: argparse.Namespace) -> int:
    cuda = (
        f"CUDA {torch.version.cuda} build, {torch.cuda.device_count()} CUDA device(s) visible"
        if torch.version.cuda
        else "CPU-only build"
    )
    print(f"udm_fast  {__version__}")
    print(f"torch     {torch.__version__} ({cuda})")
    print(f"triton    {_version_of('triton')}")
    print(f"python    {sys.version.split()[0]}")
    print(f"\nbackends (requested: {backend.get_backend()})")
    info = backend.build_info()
    width = max(map(len, info))
    for name, entry in info.items():
        print(f"  {name:<{width}}  {'yes' if entry['available'] else 'no ':<3}  {entry['detail']}")
    model = load_model(args.weights, args.official, torch.device("cpu"))
    config = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(model.config).items())
    print(f"\nmodel: {describe_model(args.weights, args.official)}")
    print(textwrap.fill(config, width=100, initial_indent="  config: ", subsequent_indent="          "))
    print("  parameters:")
    parts = [(name, _count(child)) for name, child in model.named_children()]
    parts.append(
        (
            "(inference, without the MoCo key encoder and critic)",
            _count(model) - _count(model.global_encoder.encoder_k) - _count(model.discriminator),
        )
    )
    parts.append(("total", _count(model)))
    width = max(len(name) for name, _ in parts)
    for name, count in parts:
        print(f"    {name:<{width}}  {count:>12,}")
    return 0
