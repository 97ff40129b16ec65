"""What the ``udm-fast`` commands share: the program name, the one-line error and warning display,
the parent parsers of the common flags, and the helpers that more than one command calls."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Optional

import torch

from ..models import pretrained
from ..models.inference import PRECISIONS
from ..models.udm import GLOBAL_CODES, UDM
from ..train.config import DataConfig
from ..utils.io import ImageNote

PROG = "udm-fast"
MAX_ERROR_CHARS = 400
SYNTH_INDEX = "pairs.csv"  # the paired set's index that synth writes and train / eval read
IMAGE_EXTENSIONS = DataConfig.extensions  # synth and eval read the files that training reads
TRANSFER_FIRST_SEED = 1_000_000  # the first seed of the transfer evaluation's degradations (eval, demo)
SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes seeds in 0 .. 2**64 - 1


@dataclasses.dataclass(frozen=True)
class ParentParsers:
    """The argparse parents of the flags several commands take: ``debug`` (--debug, every command),
    ``model`` (--weights, --official) and ``run`` (--device, --tile-size)."""

    debug: argparse.ArgumentParser
    model: argparse.ArgumentParser
    run: argparse.ArgumentParser


def parent_parsers() -> ParentParsers:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error"
    )
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--weights", metavar="W", help="model weights: a UDM.save file (default: the bundled model)")
    model.add_argument(
        "--official", action="store_true", help="W is the authors' checkpoint (loaded with UDM.from_official)"
    )
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    run.add_argument(
        "--tile-size",
        type=int,
        metavar="N",
        help="tile large images in N x N tiles (multiple of 8; 0 = no tiling; default 512)",
    )
    return ParentParsers(debug, model, run)


def one_line(exc: BaseException) -> str:
    """The exception message on one line, shortened to MAX_ERROR_CHARS."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines) or type(exc).__name__
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS].rstrip() + " ... (run with --debug for the full message)"
    return text


def report(kind: str, message: str) -> None:
    """Writes ``udm-fast: KIND: MESSAGE`` to stderr (kind: note, warning or error)."""
    print(f"{PROG}: {kind}: {message}", file=sys.stderr)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the command: ``udm-fast: note: ...`` for an ImageNote, else ``warning``."""
    report("note" if issubclass(category, ImageNote) else "warning", one_line(message))


def describe_model(weights: Optional[str], official: bool) -> str:
    if weights is None:
        return pretrained.default_model_source()
    return f"{weights} ({'authors checkpoint' if official else 'udm_fast weights'})"


def set_tile_size(model: UDM, tile_size: Optional[int]) -> None:
    """--tile-size: None keeps the model's default, 0 disables tiling, else a positive multiple of 8."""
    if tile_size is None:
        return
    if tile_size < 0 or tile_size % 8:
        raise ValueError(f"--tile-size must be 0 (no tiling) or a positive multiple of 8, got {tile_size}")
    model.tile_size = tile_size or None


def image_size(image: torch.Tensor) -> str:
    """``WxH`` of an image tensor [..., H, W]."""
    return f"{image.shape[-1]}x{image.shape[-2]}"


def read_code(path: str) -> bytes:
    """The bytes of a degradation code file written by ``udm-fast encode``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"degradation code not found: {path}")
    with open(path, "rb") as f:
        return f.read()


def check_seed(flag: str, seed: int) -> None:
    """Raises ValueError unless ``seed`` is one that torch generators (and ``derive_seed``) take."""
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{flag} must be an integer from 0 to 2**64 - 1, got {seed}")


def add_inference_arguments(parser) -> None:
    """``--precision`` and ``--global-code``: the options of the commands that synthesize (transfer, demo, eval)."""
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="CPU inference precision: auto (bfloat16 where the CPU runs it natively, "
        "else float32; channels-last), fp32 (float32 eager) or bf16 "
        "(default: UDM_FAST_PRECISION, else auto)",
    )
    parser.add_argument(
        "--global-code",
        choices=GLOBAL_CODES,
        default=None,
        help="e_g as the generator gets it: rounded (as a .udm file holds it) or continuous (the latent "
        "left unrounded) (default: the model file's setting, rounded unless saved otherwise)",
    )


def apply_inference_arguments(model, args) -> None:
    """Sets ``model.precision`` and ``model.global_code`` from the options given (else the model keeps its own)."""
    if args.precision is not None:
        model.precision = args.precision
    if args.global_code is not None:
        model.global_code = args.global_code
