"""``udm-fast train``: trains a model as a YAML config says (flags override it; torchrun for several GPUs)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

from ..train.config import ConfigError, load_config
from ..train.data import DataError
from .common import PROG, SYNTH_INDEX, ParentParsers, report


def add_parser(commands: argparse._SubParsersAction, parents: ParentParsers) -> None:
    train = commands.add_parser(
        "train",
        parents=[parents.debug],
        help="train a model from a YAML config",
        description="Trains a model as CONFIG says (see configs/default.yaml for every key). Flags override the "
        "config. Multi-GPU: torchrun --nproc_per_node N --no-python udm-fast train CONFIG.",
    )
    train.add_argument("config", metavar="CONFIG", nargs="?", help="YAML training config (required)")
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue the run in the output folder from its newest checkpoint, or from CHECKPOINT",
    )
    train.add_argument("--out", metavar="DIR", help="output folder (log.out_dir)")
    train.add_argument("--max-steps", type=int, metavar="N", help="stop after N iterations (run.max_steps)")
    train.add_argument(
        "--data",
        metavar="DIR|CSV",
        help="a folder of clean images (data.kind folder) or a paired CSV index (data.kind csv)",
    )
    train.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N (run.device)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key with a YAML value, e.g. --set run.amp=bf16 (repeatable)",
    )
    train.set_defaults(run=run)


def _configure_logging() -> None:
    root = logging.getLogger("udm_fast")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


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
            report(
                "note",
                f"--data {args.data} holds {SYNTH_INDEX}: training on its pairs "
                f"(give a folder without it to train on plain photos)",
            )
            data = index
        if os.path.isfile(data) and data.lower().endswith(".csv"):
            overrides.update({"data.kind": "csv", "data.csv": data, "data.root": None})
        elif os.path.isdir(data):
            overrides.update({"data.kind": "folder", "data.root": data})
        else:
            raise DataError(f"--data {args.data}: not a folder of images nor a .csv index")
    return overrides


def run(args: argparse.Namespace) -> int:
    from ..losses import MissingWeightsError
    from ..train import distributed
    from ..train.trainer import Trainer

    if args.config is None:  # optional for argparse only, to explain the --resume mix-up below
        if isinstance(args.resume, str) and args.resume.lower().endswith((".yaml", ".yml")):
            raise ConfigError(
                f"--resume took {args.resume} as its checkpoint; put the config first: "
                f"udm-fast train {args.resume} --resume"
            )
        raise ConfigError("train needs a CONFIG (a YAML file such as configs/tiny.yaml)")
    _configure_logging()
    config = load_config(args.config, train_overrides(args))
    try:
        trainer = Trainer(config, resume=args.resume)
        summary = trainer.run()
    except MissingWeightsError as exc:  # its how-to speaks Python: say it in config keys
        raise MissingWeightsError(
            exc.problem,
            "set loss.vgg_weights (torchvision's vgg16-397923af.pth), loss.dists_weights or "
            "loss.lpips_weights to the file (--set KEY=PATH), allow loss.download on a machine that is online, "
            "or for a smoke test without weights set loss.pretrained: false",
        ) from exc
    finally:
        distributed.shutdown()
    if trainer.dist.is_main:
        state = "finished" if summary["finished"] else "stopped (resume with --resume)"
        losses = ", ".join(f"{k} {v:.4g}" for k, v in summary["losses"].items())
        print(
            f"{state} at step {summary['step']} (epoch {summary['epoch']:.2f}); {losses}; "
            f"outputs in {summary['out_dir']}"
            + (f"; unusable files skipped {summary['skipped']} times" if summary["skipped"] else "")
        )
    return 0
