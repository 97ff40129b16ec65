"""``udm-fast demo``: a transfer grid, e_g traversals and the transfer table on the bundled photos."""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from tqdm import tqdm

from ..eval.figures import TRAVERSAL_DIMENSIONS, TRAVERSAL_OFFSETS, center_crop, transfer_grid, traversal_grid
from ..models import pretrained
from ..models.loading import load_model
from ..synthesis import degrade
from ..utils.device import parse_device
from ..utils.io import load_image, save_image
from .common import (
    TRANSFER_FIRST_SEED,
    ParentParsers,
    add_inference_arguments,
    apply_inference_arguments,
    set_tile_size,
)

DEMO_GRID_NAME = "transfer_grid.png"
DEMO_TRAVERSAL_NAME = "traversals.png"
DEMO_TABLE_DEGRADATIONS = 4  # seeded udm_fast.degrade draws per sample photo for the printed table
DEMO_TABLE_CROP = 128

# The demo's degraded examples: (label, function of (image [1, 3, H, W], generator)).
DEMO_DEGRADATIONS = (
    ("gaussian blur, sigma 2.5", lambda x, g: degrade.gaussian_blur(x, 2.5)),
    ("noise, sigma 25/255", lambda x, g: degrade.gaussian_noise(x, 25.0 / 255.0, generator=g)),
    ("motion blur 13 px + JPEG q25", lambda x, g: degrade.jpeg(degrade.motion_blur(x, 13.0, math.pi / 4), 25)),
)


def add_parser(commands: argparse._SubParsersAction, parents: ParentParsers) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[parents.debug, parents.model, parents.run],
        help="transfer grid, e_g traversals and a quality table on the bundled photos",
        description="Degrades bundled photos, transfers each degradation to every photo "
        "(DIR/"
        + DEMO_GRID_NAME
        + "), moves single e_g dimensions (DIR/"
        + DEMO_TRAVERSAL_NAME
        + ") and prints the transfer table against "
        "the identity and mismatched baselines.",
    )
    demo.add_argument("--out", default="udm_fast_demo", metavar="DIR", help="output folder (default ./udm_fast_demo)")
    demo.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the noise (default 0)")
    add_inference_arguments(demo)
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.transfer import degradation_grid, format_transfer_table, transfer_table

    device = parse_device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    cleans = [load_image(p) for p in pretrained.sample_paths()]
    degraded = [make(cleans[i % len(cleans)], generator) for i, (_, make) in enumerate(DEMO_DEGRADATIONS)]
    model = load_model(args.weights, args.official, device).eval()
    set_tile_size(model, args.tile_size)
    apply_inference_arguments(model, args)
    contents = torch.cat([center_crop(x, min(DEMO_TABLE_CROP, *x.shape[-2:])) for x in cleans])
    seeds = [TRANSFER_FIRST_SEED + k for k in range(DEMO_TABLE_DEGRADATIONS)]
    table_degraded, _ = degradation_grid(contents, seeds)
    n_transfers = len(cleans) * len(degraded)
    n_pairs = len(cleans) * len(seeds)
    n_traversals = TRAVERSAL_DIMENSIONS * len(TRAVERSAL_OFFSETS)
    start = time.perf_counter()
    with torch.no_grad(), tqdm(total=n_transfers + n_traversals + n_pairs, desc="demo", unit="image") as bar:
        codes = [model.encode(y.to(device)) for y in degraded]
        grid = transfer_grid(
            model,
            cleans,
            degraded,
            codes,
            [label for label, _ in DEMO_DEGRADATIONS],
            noise=generator,
            progress=bar.update,
            sources=[k % len(cleans) for k in range(len(degraded))],
        )
        table_codes = [
            model.encode(table_degraded[i, j : j + 1].to(device)) for i in range(len(cleans)) for j in range(len(seeds))
        ]
        traversals, dimensions = traversal_grid(model, contents[:1].to(device), codes + table_codes, args.seed)
        bar.update(n_traversals)
        table = transfer_table(
            model, contents.to(device), table_degraded.to(device), noise_seed=args.seed, progress=bar.update
        )
    elapsed = time.perf_counter() - start
    out = os.path.join(args.out, DEMO_GRID_NAME)
    save_image(grid.image, out)
    leakage = list(grid.leakage.values())
    print(
        f"wrote {out}: rows = {len(cleans)} bundled clean photos, columns = {len(degraded)} degraded examples "
        f"(top row), {n_transfers} transfers; the {len(leakage)} cross-content cells (the code of another photo) "
        f"are labelled with the leakage of that photo into the result: mean "
        f"{sum(leakage) / max(1, len(leakage)):.3f}, max {max(leakage, default=0.0):.3f}"
    )
    out = os.path.join(args.out, DEMO_TRAVERSAL_NAME)
    save_image(traversals, out)
    print(
        f"wrote {out}: the '{DEMO_DEGRADATIONS[0][0]}' code transferred to a crop of the first photo, with e_g "
        f"dimensions {dimensions} (rows; most varying over the demo's degradations) moved by "
        f"{TRAVERSAL_OFFSETS[0]}..{TRAVERSAL_OFFSETS[-1]:+d} steps (columns)"
    )
    print(
        f"\ntransfer quality on the bundled photos ({DEMO_TABLE_CROP}x{DEMO_TABLE_CROP} central crops) x "
        f"{len(seeds)} seeded degradations (seeds {seeds[0]}..{seeds[-1]}); the bundled model saw some of these "
        "photos in training, see the README for its held-out evaluation and `udm-fast eval --clean DIR` to "
        "run one on your photos:"
    )
    print(format_transfer_table(table))
    print(f"(demo computed on {device} in {elapsed:.1f} s)")
    if args.weights is None and not pretrained.DEFAULT_WEIGHTS.is_file():
        print("note: the model is an untrained placeholder, so the images show the pipeline, not real transfers")
    return 0
