"""The ``udm-fast`` command: ``transfer``, ``encode``, ``decode``, ``info``, ``demo``, and ``train`` / ``synth`` / ``eval`` (udm_fast.train).

Every expected failure (missing or corrupt files, mismatched weights, bad devices, unusable image
sizes) ends with one ``udm-fast: error: ...`` line on stderr and exit code 1; ``--debug`` re-raises
it with the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import textwrap
import time
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from . import __version__, backend, degradation_code, degrade, pretrained
from . import checkpoint as ckpt
from .checkpoint import save_atomic
from .files import write_bytes_atomic
from .io import ImageNote, format_for_path, load_image, save_image
from .model import UDM, UDMConfig
from .train import commands as train_commands

PROG = "udm-fast"
MAX_ERROR_CHARS = 400
DEMO_GRID_NAME = "transfer_grid.png"
DEMO_TRAVERSAL_NAME = "traversals.png"
TRAVERSAL_DIMENSIONS = 4      # rows: the e_g dimensions that vary most across the demo's degradations
TRAVERSAL_OFFSETS = (-3, -2, -1, 0, 1, 2, 3)  # columns: quantisation steps added to that dimension
DEMO_TABLE_DEGRADATIONS = 4   # seeded udm_fast.degrade draws per sample photo for the printed table
DEMO_TABLE_CROP = 128
GRID_GAP = 6
LABEL_HEIGHT = 14

# The demo's degraded examples: (label, function of (image [1, 3, H, W], generator)).
DEMO_DEGRADATIONS = (
    ("gaussian blur, sigma 2.5", lambda x, g: degrade.gaussian_blur(x, 2.5)),
    ("noise, sigma 25/255", lambda x, g: degrade.gaussian_noise(x, 25.0 / 255.0, generator=g)),
    ("motion blur 13 px + JPEG q25", lambda x, g: degrade.jpeg(degrade.motion_blur(x, 13.0, math.pi / 4), 25)),
)


# ----------------------------------------------------------------------------- shared helpers


def parse_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but no CUDA device is available (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} requested but MPS is not available")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def load_model(weights: Optional[str], official: bool, device: torch.device) -> UDM:
    """The model in eval mode from ``weights``: a UDM.save file, a training checkpoint (its raw weights)
    or with ``official`` the authors' checkpoint; without ``weights`` the bundled model."""
    if weights is None:
        if official:
            raise ValueError("--official needs --weights (the path of the authors' checkpoint)")
        return pretrained.default_model(device).eval()
    if official:
        return UDM.from_official(weights).to(device).eval()
    from .train.trainer import CHECKPOINT_FORMAT

    payload = ckpt.load_file(weights)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        model = UDM(UDMConfig.from_dict(payload["config"]["model"]))
        ckpt.check_and_load(model, payload["model"], weights)
        return model.to(device).eval()
    if not UDM.is_saved(payload):
        raise ckpt.CheckpointError(f"{weights} is neither a udm_fast model file (model.pt) nor a training "
                                   "checkpoint; for the authors' checkpoint add --official")
    return UDM.from_saved(payload, weights).to(device)


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


def _size(image: torch.Tensor) -> str:
    return f"{image.shape[-1]}x{image.shape[-2]}"


def _one_line(exc: BaseException) -> str:
    """The exception message on one line, shortened to MAX_ERROR_CHARS."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines) or type(exc).__name__
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS].rstrip() + " ... (run with --debug for the full message)"
    return text


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    kind = "note" if issubclass(category, ImageNote) else "warning"
    print(f"{PROG}: {kind}: {_one_line(message)}", file=sys.stderr)


# ----------------------------------------------------------------------------- transfer


def _read_code(path: str) -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"degradation code not found: {path}")
    with open(path, "rb") as f:
        return f.read()


def run_transfer(args: argparse.Namespace) -> int:
    format_for_path(args.out)  # fail on a bad output name before any work
    device = parse_device(args.device)
    clean = load_image(args.clean)
    degraded = None if args.degraded is None else load_image(args.degraded)
    model = load_model(args.weights, args.official, device)
    set_tile_size(model, args.tile_size)
    noise = None if args.seed is None else torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    with torch.no_grad():
        if degraded is None:
            e_g, e_l = model.decompress_degradation(_read_code(args.code))
            out = model.synthesize(clean.to(device), e_g, e_l, noise=noise)
            source = f"the code {args.code}"
        else:
            out = model.transfer(clean.to(device), degraded.to(device), noise=noise)
            source = f"{args.degraded} ({_size(degraded)})"
    elapsed = time.perf_counter() - start
    save_image(out.cpu(), args.out)
    print(f"wrote {args.out} ({_size(out)}): degradation of {source} applied to "
          f"{args.clean} ({_size(clean)}) on {device} in {elapsed:.2f} s")
    return 0


# ----------------------------------------------------------------------------- encode / decode


def run_encode(args: argparse.Namespace) -> int:
    device = parse_device(args.device)
    degraded = load_image(args.degraded)
    model = load_model(args.weights, args.official, device)
    set_tile_size(model, args.tile_size)
    data = model.compress_degradation(degraded.to(device))
    write_bytes_atomic(args.out, data)
    info = degradation_code.info(data)
    pixels = degraded.shape[-2] * degraded.shape[-1]
    print(f"wrote {args.out}: {len(data)} bytes for {args.degraded} ({_size(degraded)}); "
          f"e_g {8 * info['global_bytes']} bits, e_l {8 * info['local_bytes']} bits "
          f"({8 * info['local_bytes'] / pixels:.4f} bits per pixel)")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    data = _read_code(args.code)
    info = degradation_code.info(data)
    device = parse_device(args.device)
    model = load_model(args.weights, args.official, device)
    e_g, e_l = model.decompress_degradation(data)
    print(f"{args.code}: {info['bytes']} bytes, format version {info['version']}, model {info['weights_hash'][:16]}")
    print(f"  degraded image {info['width']}x{info['height']}; e_g {list(e_g.shape)} "
          f"({info['global_bytes']} bytes), e_l {list(e_l.shape)} ({info['local_bytes']} bytes)")
    g = e_g[0].abs()
    top = torch.argsort(g, descending=True)[:8].tolist()
    print("  largest |e_g| dimensions: " + ", ".join(f"{i}: {e_g[0, i].item():+.3f}" for i in top))
    print("  e_l channel means: " + ", ".join(f"{v:.3f}" for v in e_l.mean(dim=(0, 2, 3)).tolist()))
    if args.out:
        save_atomic({"e_g": e_g.cpu(), "e_l": e_l.cpu(), "weights_hash": info["weights_hash"]}, args.out)
        print(f"  wrote the decoded codes to {args.out} (torch.load gives {{'e_g', 'e_l', 'weights_hash'}})")
    return 0


# ----------------------------------------------------------------------------- info


def _version_of(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except ImportError as exc:
        return f"not installed ({exc})"
    return getattr(module, "__version__", "unknown version")


def _count(module: Optional[torch.nn.Module]) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def run_info(args: argparse.Namespace) -> int:
    cuda = (f"CUDA {torch.version.cuda} build, {torch.cuda.device_count()} CUDA device(s) visible"
            if torch.version.cuda else "CPU-only build")
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
    parts.append(("(inference, without the MoCo key encoder and critic)",
                  _count(model) - _count(model.global_encoder.encoder_k) - _count(model.discriminator)))
    parts.append(("total", _count(model)))
    width = max(len(name) for name, _ in parts)
    for name, count in parts:
        print(f"    {name:<{width}}  {count:>12,}")
    return 0


# ----------------------------------------------------------------------------- demo


def _to_pil(image: torch.Tensor) -> Image.Image:
    pixels = (image[0].detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


def _grid(rows: list, labels: Sequence[str], row_labels: Sequence[str] = (), cell_labels: Optional[dict] = None
          ) -> torch.Tensor:
    """Images laid out in cells of the largest size (rows[r][c] may be None), labels under row 0,
    ``row_labels[r]`` written over the top-left corner of row r's first cell, ``cell_labels[(r, c)]``
    over the bottom-left corner of the image in cell (r, c)."""
    cell_h = max(im.height for row in rows for im in row if im is not None)
    cell_w = max(im.width for row in rows for im in row if im is not None)
    n_rows, n_cols = len(rows), len(rows[0])
    canvas = Image.new("RGB", (n_cols * (cell_w + GRID_GAP) + GRID_GAP,
                               n_rows * (cell_h + GRID_GAP) + GRID_GAP + LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = GRID_GAP + r * (cell_h + GRID_GAP) + (LABEL_HEIGHT if r else 0)
        for c, im in enumerate(row):
            left = GRID_GAP + c * (cell_w + GRID_GAP)
            if im is not None:
                canvas.paste(im, (left + (cell_w - im.width) // 2, top + (cell_h - im.height) // 2))
            if r == 0:
                draw.text((left, top + cell_h + 1), labels[c], fill=(0, 0, 0))
            if im is not None and (r, c) in (cell_labels or {}):  # over the image's bottom-left corner
                draw.text((left + (cell_w - im.width) // 2 + 2, top + (cell_h + im.height) // 2 - 13),
                          cell_labels[(r, c)], fill=(255, 255, 0), stroke_width=1, stroke_fill=(0, 0, 0))
            if c == 0 and r < len(row_labels):
                draw.text((left + 2, top + 1), row_labels[r], fill=(255, 255, 0), stroke_width=1,
                          stroke_fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)[None].float() / 255.0


def _center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    size = min(size, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top:top + size, left:left + size]


def _traversals(model: UDM, x: torch.Tensor, codes: list, seed: int) -> tuple[torch.Tensor, list]:
    """(grid, dimensions): the transfer to x of codes[0] with one e_g dimension moved by ``TRAVERSAL_OFFSETS``
    quantisation steps, one row per dimension; the dimensions are the ``TRAVERSAL_DIMENSIONS`` whose
    quantised values vary most across ``codes`` (ties: the lower index)."""
    e_g_all = torch.cat([e_g for e_g, _ in codes]).double()
    variance = e_g_all.var(dim=0, unbiased=False)
    dimensions = sorted(range(variance.numel()), key=lambda d: (-float(variance[d]), d))[:TRAVERSAL_DIMENSIONS]
    base_g, base_l = codes[0]
    rows = []
    for d in dimensions:
        row = []
        for offset in TRAVERSAL_OFFSETS:
            e_g = base_g.clone()
            e_g[:, d] += offset
            row.append(_to_pil(model.synthesize(x, e_g, base_l, noise=torch.Generator().manual_seed(seed))))
        rows.append(row)
    labels = [f"e_g[d] {o:+d}" if o else "e_g[d] as coded" for o in TRAVERSAL_OFFSETS]
    return _grid(rows, labels, [f"d={d}" for d in dimensions]), dimensions


def run_demo(args: argparse.Namespace) -> int:
    from .eval.leakage import content_leakage_resized
    from .evaluation import degradation_grid, format_transfer_table, transfer_table

    device = parse_device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    cleans = [load_image(p) for p in pretrained.sample_paths()]
    degraded = [make(cleans[i % len(cleans)], generator) for i, (_, make) in enumerate(DEMO_DEGRADATIONS)]
    model = load_model(args.weights, args.official, device).eval()
    set_tile_size(model, args.tile_size)
    contents = torch.cat([_center_crop(x, DEMO_TABLE_CROP) for x in cleans])
    seeds = [train_commands.TRANSFER_FIRST_SEED + k for k in range(DEMO_TABLE_DEGRADATIONS)]
    table_degraded, _ = degradation_grid(contents, seeds)
    n_transfers = len(cleans) * len(degraded)
    n_pairs = len(cleans) * len(seeds)
    n_traversals = TRAVERSAL_DIMENSIONS * len(TRAVERSAL_OFFSETS)
    rows = [[None] + [_to_pil(y) for y in degraded]]
    leakage = {}  # (row, column) of a cross-content cell -> leakage of the code's photo into the result
    start = time.perf_counter()
    with torch.no_grad(), tqdm(total=n_transfers + n_traversals + n_pairs, desc="demo", unit="image") as bar:
        codes = [model.encode(y.to(device)) for y in degraded]
        for r, x in enumerate(cleans):
            row = [_to_pil(x)]
            for k, (e_g, e_l) in enumerate(codes):
                y_hat = model.synthesize(x.to(device), e_g, e_l, noise=generator)
                row.append(_to_pil(y_hat))
                if k % len(cleans) != r:
                    source = cleans[k % len(cleans)].to(device)
                    leakage[(r + 1, k + 1)] = float(content_leakage_resized(y_hat.clamp(0, 1), x.to(device), source))
                bar.update()
            rows.append(row)
        table_codes = [model.encode(table_degraded[i, j:j + 1].to(device))
                       for i in range(len(cleans)) for j in range(len(seeds))]
        traversal_grid, dimensions = _traversals(model, contents[:1].to(device), codes + table_codes, args.seed)
        bar.update(n_traversals)
        table = transfer_table(model, contents.to(device), table_degraded.to(device), noise_seed=args.seed,
                               progress=bar.update)
    elapsed = time.perf_counter() - start
    out = os.path.join(args.out, DEMO_GRID_NAME)
    save_image(_grid(rows, ["clean \\ degraded"] + [label for label, _ in DEMO_DEGRADATIONS],
                     cell_labels={cell: f"leak {value:.2f}" for cell, value in leakage.items()}), out)
    print(f"wrote {out}: rows = {len(cleans)} bundled clean photos, columns = {len(degraded)} degraded examples "
          f"(top row), {n_transfers} transfers; the {len(leakage)} cross-content cells (the code of another photo) "
          f"are labelled with the leakage of that photo into the result: mean "
          f"{sum(leakage.values()) / max(1, len(leakage)):.3f}, max {max(leakage.values(), default=0.0):.3f}")
    out = os.path.join(args.out, DEMO_TRAVERSAL_NAME)
    save_image(traversal_grid, out)
    print(f"wrote {out}: the '{DEMO_DEGRADATIONS[0][0]}' code transferred to a crop of the first photo, with e_g "
          f"dimensions {dimensions} (rows; most varying over the demo's degradations) moved by "
          f"{TRAVERSAL_OFFSETS[0]}..{TRAVERSAL_OFFSETS[-1]:+d} steps (columns)")
    print(f"\ntransfer quality on the bundled photos ({DEMO_TABLE_CROP}x{DEMO_TABLE_CROP} central crops) x "
          f"{len(seeds)} seeded degradations (seeds {seeds[0]}..{seeds[-1]}); the bundled model saw some of these "
          "photos in training, see the README for its held-out evaluation and `udm-fast eval --clean DIR` to "
          "run one on your photos:")
    print(format_transfer_table(table))
    print(f"(demo computed on {device} in {elapsed:.1f} s)")
    if args.weights is None and not pretrained.DEFAULT_WEIGHTS.is_file():
        print("note: the model is an untrained placeholder, so the images show the pipeline, not real transfers")
    return 0


# ----------------------------------------------------------------------------- parser and entry point


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    model_options = argparse.ArgumentParser(add_help=False)
    model_options.add_argument("--weights", metavar="W", help="model weights: a UDM.save file "
                               "(default: the bundled model)")
    model_options.add_argument("--official", action="store_true",
                               help="W is the authors' checkpoint (loaded with UDM.from_official)")
    run_options = argparse.ArgumentParser(add_help=False)
    run_options.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    run_options.add_argument("--tile-size", type=int, metavar="N",
                             help="tile large images in N x N tiles (multiple of 8; 0 = no tiling; default 512)")

    parser = argparse.ArgumentParser(prog=PROG, parents=[common],
                                     description="Universal image degradation model: transfer degradations.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    transfer = commands.add_parser("transfer", parents=[common, model_options, run_options],
                                   help="apply the degradation of one photo to another",
                                   description="Applies the degradation of --degraded to --clean, writes --out "
                                               "(PNG or JPEG by extension) with the clean image's size.")
    transfer.add_argument("--clean", required=True, metavar="X", help="the clean image")
    source = transfer.add_mutually_exclusive_group(required=True)
    source.add_argument("--degraded", metavar="Y", help="the image whose degradation to copy")
    source.add_argument("--code", metavar="C", help="a degradation code written by `udm-fast encode`")
    transfer.add_argument("--out", required=True, metavar="Z", help="output image (.png, .jpg or .jpeg)")
    transfer.add_argument("--seed", type=int, metavar="S", help="seed of the generator noise (default: random)")
    transfer.set_defaults(run=run_transfer)

    encode = commands.add_parser("encode", parents=[common, model_options, run_options],
                                 help="compress the degradation of a photo into a .udm code",
                                 description="Encodes the degradation of --degraded (e_g and e_l, entropy coded "
                                             "with the model's tables) into --out; the file records the model.")
    encode.add_argument("--degraded", required=True, metavar="Y", help="the degraded image")
    encode.add_argument("--out", required=True, metavar="CODE", help="output file (e.g. code.udm)")
    encode.set_defaults(run=run_encode)

    decode = commands.add_parser("decode", parents=[common, model_options],
                                 help="decode a .udm code and summarise it",
                                 description="Decodes a code written by `udm-fast encode` with the same model and "
                                             "prints its sizes and strongest e_g dimensions.")
    decode.add_argument("code", metavar="CODE", help="the .udm file")
    decode.add_argument("--out", metavar="PT", help="also save the decoded e_g, e_l with torch.save")
    decode.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    decode.set_defaults(run=run_decode)

    info = commands.add_parser("info", parents=[common, model_options],
                               help="versions, available backends and the model's sizes")
    info.set_defaults(run=run_info)

    demo = commands.add_parser("demo", parents=[common, model_options, run_options],
                               help="transfer grid, e_g traversals and a quality table on the bundled photos",
                               description="Degrades bundled photos, transfers each degradation to every photo "
                                           "(DIR/" + DEMO_GRID_NAME + "), moves single e_g dimensions (DIR/"
                                           + DEMO_TRAVERSAL_NAME + ") and prints the transfer table against "
                                           "the identity and mismatched baselines.")
    demo.add_argument("--out", default="udm_fast_demo", metavar="DIR", help="output folder (default ./udm_fast_demo)")
    demo.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the noise (default 0)")
    demo.set_defaults(run=run_demo)
    train_commands.add_commands(commands, [common])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``udm-fast``; returns the exit code (argparse exits with 2 on usage errors)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
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
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
