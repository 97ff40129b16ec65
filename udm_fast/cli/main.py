"""The ``udm-fast`` parser and entry point. Each command is a module of this package with
``add_parser(commands, parents)``, which registers its subparser and sets ``run`` to its handler;
adding a command is writing its module and adding the module's name to ``COMMANDS``.

Every expected failure (missing or corrupt files, mismatched weights, bad devices, unusable image
sizes) ends with one ``udm-fast: error: ...`` line on stderr and exit code 1; ``--debug`` re-raises
it with the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Optional, Sequence

from ..models import pretrained
from ..utils.io import ImageNote
from ..version import __version__
from .common import PROG, one_line, parent_parsers, report, show_warning

# The command modules of this package, in the order ``udm-fast --help`` lists them.
COMMANDS = ("transfer", "encode", "decode", "info", "demo", "train", "synth", "evaluate", "restore")


def build_parser() -> argparse.ArgumentParser:
    parents = parent_parsers()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[parents.debug], description="Universal image degradation model: transfer degradations."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").add_parser(commands, parents)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``udm-fast``; returns the exit code (argparse exits with 2 on usage errors)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        warnings.simplefilter("always", ImageNote)
        warnings.simplefilter("always", pretrained.PlaceholderModelWarning)
        try:
            return args.run(args)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except (OSError, ValueError, RuntimeError) as exc:
            if getattr(args, "debug", False):  # --debug may come before or after the command
                raise
            report("error", one_line(exc))
            return 1
