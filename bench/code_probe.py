"""Can a linear probe tell JPEG alone from light blur + JPEG by a model's global code, before and after rounding?

    python bench/code_probe.py --photos PHOTOS/train [--weights W] [--samples 480]

Crops of 128 px from the photos, half blurred (Gaussian sigma 0.6-1.2 px), all JPEG-compressed (q 55-91);
a logistic regression on three quarters of them, accuracy on the rest, for: the pooled encoder features,
e_g's latent before the entropy bottleneck's rounding, and after it (what the generator gets at inference).
A gap between the last two says the rounding drops the distinction the nearly clean kinds need
(bench/RESULTS.md, session 8).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from udm_fast.models.loading import load_model
from udm_fast.synthesis.degrade import gaussian_blur, jpeg
from udm_fast.train.data import DataError, list_images


def crops(photos: str, samples: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [N, 3, size, size] in [0, 1], labels [N]: 1 = blurred) from random crops of the photos."""
    try:  # the training loader's listing: the probe sees the photos a run on this folder trains on
        files = [os.path.join(photos, f) for f in list_images(photos, (".png", ".jpg", ".jpeg"))]
    except DataError as error:
        raise SystemExit(f"code_probe: no .png/.jpg photos: {error}") from None
    photos_rgb = []  # each photo decoded once; crop i comes from photo i mod len(files)
    for path in files[:samples]:
        photos_rgb.append(np.asarray(Image.open(path).convert("RGB")))
        if min(photos_rgb[-1].shape[:2]) < size:
            raise SystemExit(f"code_probe: {path} is smaller than {size} px")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(samples):
        image = photos_rgb[i % len(photos_rgb)]
        top, left = (int(rng.integers(0, n - size + 1)) for n in image.shape[:2])
        x = torch.from_numpy(image[top : top + size, left : left + size].copy()).permute(2, 0, 1)[None] / 255.0
        blurred = i % 2
        if blurred:
            x = gaussian_blur(x, float(rng.uniform(0.6, 1.2))).clamp(0, 1)
        images.append(jpeg(x, int(rng.integers(55, 92))))
        labels.append(blurred)
    return torch.cat(images), torch.tensor(labels, dtype=torch.float32)


@torch.no_grad()
def features(model, y: torch.Tensor) -> dict:
    """The three views of y's global code, each [N, D]."""
    y_int = y * 2 - 1
    encoder, compressor = model.global_encoder.encoder_q, model.global_compressor
    fp, fl = encoder.features(y_int)
    pooled = torch.cat((fp.mean((2, 3)), fl.mean((2, 3))), 1)
    e_g = encoder.head(pooled)  # = encoder(y_int), without running the branches again
    before = compressor.latent(e_g)
    after, _ = compressor.model(before)  # eval mode: the inference rounding
    return {
        "pooled encoder features": pooled,
        "e_g latent before rounding": before,
        "e_g latent after rounding": after,
    }


def probe_accuracy(x: torch.Tensor, labels: torch.Tensor, train: int, steps: int = 1500) -> tuple[float, float]:
    """Logistic regression (standardised inputs, small L2) fitted on the first ``train`` rows.

    Returns (train accuracy, test accuracy)."""
    x = (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-6)
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        optimiser.zero_grad()
        logits = x[:train] @ weight + bias
        loss = F.binary_cross_entropy_with_logits(logits, labels[:train]) + 1e-2 * weight.square().mean()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        correct = ((x @ weight + bias) > 0).float() == labels
    return correct[:train].float().mean().item(), correct[train:].float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", required=True, help="folder of clean photos (e.g. PHOTOS/train)")
    parser.add_argument("--weights", default=None, help="model.pt or a training checkpoint (default: bundled model)")
    parser.add_argument("--samples", type=int, default=480)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.samples < 8:
        raise SystemExit("code_probe: --samples must be at least 8")
    torch.manual_seed(args.seed)
    model = load_model(args.weights, False, torch.device("cpu")).eval()
    y, labels = crops(args.photos, args.samples, args.size, args.seed)
    train = args.samples * 3 // 4
    print(f"{args.samples} crops of {args.size} px, probe fitted on {train}, tested on {args.samples - train}")
    for name, x in features(model, y).items():
        fit, test = probe_accuracy(x, labels, train)
        print(f"{name:28s} dims {x.shape[1]:4d}  train {fit:.3f}  test {test:.3f}")


if __name__ == "__main__":
    main()
