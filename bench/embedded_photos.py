"""Writes the photographs shipped inside scikit-image's wheel as PNG files, split into a training folder
and a held-out folder, for training and evaluating the embedded model offline:

    python bench/embedded_photos.py --out photos      # -> photos/train/*.png, photos/heldout/*.png

Photos that need scikit-image's optional downloads (pooch) are skipped with a note. Grey images are
written as RGB (three equal channels).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

TRAIN = (
    "astronaut",
    "chelsea",
    "rocket",
    "motorcycle_left",
    "retina",
    "hubble_deep_field",
    "cat",
    "immunohistochemistry",
    "brick",
    "grass",
    "gravel",
    "moon",
    "clock",
    "coins",
    "page",
    "text",
)
HELD_OUT = ("coffee", "motorcycle_right", "camera")


def load(name: str) -> np.ndarray:
    """The photo as uint8 [H, W, 3]."""
    import skimage.data as data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        image = left if name == "motorcycle_left" else right
    else:
        image = getattr(data, name)()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to create (train/ and heldout/ inside)")
    args = parser.parse_args(argv)
    for split, names in (("train", TRAIN), ("heldout", HELD_OUT)):
        folder = os.path.join(args.out, split)
        os.makedirs(folder, exist_ok=True)
        written = 0
        for name in names:
            try:
                image = load(name)
            except (ImportError, ModuleNotFoundError) as error:
                print(f"skipped {name}: {error}", file=sys.stderr)
                continue
            Image.fromarray(image).save(os.path.join(folder, f"{name}.png"))
            written += 1
        print(f"{folder}: {written} photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
