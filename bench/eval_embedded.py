"""Transfer quality of a model against the identity and mismatched baselines on held-out photos.

Every photo (central crop) is degraded by ``udm_fast.degrade`` with each of ``--degradations`` seeds
starting at ``--first-seed`` (far from the seeds a training run draws), and the table of
``udm_fast.evaluation.transfer_table`` is printed (and written as JSON with ``--out``):

    python bench/eval_embedded.py --weights runs/embedded/model.pt --photos HELD_OUT/ --crop 128
    python bench/eval_embedded.py --weights default --photos HELD_OUT/    # the packaged model

``--weights`` takes a model file, a training checkpoint, or ``default`` (udm_fast.default_model).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from udm_fast.evaluation import degradation_grid, format_transfer_table, transfer_table
from udm_fast.train.commands import load_eval_model
from udm_fast.train.config import DataConfig
from udm_fast.train.data import decode_image, list_images


def load_contents(folder: str, crop: int) -> tuple[list, torch.Tensor]:
    """(names, [n, 3, crop, crop] in [0, 1]): the central crop of every image in the folder."""
    paths = [os.path.join(folder, p) for p in list_images(folder, DataConfig().extensions)]
    crops = []
    for path in paths:
        image = decode_image(path, min_side=crop)
        top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
        crops.append(np.ascontiguousarray(image[top:top + crop, left:left + crop].transpose(2, 0, 1)))
    return paths, torch.from_numpy(np.stack(crops)).float() / 255.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--photos", required=True, help="folder of clean photos not used in training")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--degradations", type=int, default=6)
    parser.add_argument("--first-seed", type=int, default=1_000_000)
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    if args.degradations < 2 or args.crop < 32:
        raise SystemExit("eval_embedded: needs --degradations >= 2 and --crop >= 32")
    if args.weights == "default":
        from udm_fast.pretrained import default_model
        model = default_model()
    else:
        model = load_eval_model(args.weights, official=False, device=torch.device("cpu"))
    start = time.perf_counter()
    names, contents = load_contents(args.photos, args.crop)
    seeds = list(range(args.first_seed, args.first_seed + args.degradations))
    degraded, params = degradation_grid(contents, seeds)
    table = transfer_table(model, contents, degraded, noise_seed=args.noise_seed)
    print(format_transfer_table(table))
    print(f"({len(names)} photos x {len(seeds)} degradations, {args.crop}x{args.crop} crops, "
          f"{time.perf_counter() - start:.1f} s)")
    if args.out:
        table.update(weights=args.weights, photos=names, crop=args.crop, seeds=seeds, degradations=params)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
