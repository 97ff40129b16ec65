"""Wall time of `udm-fast restore` with its defaults on a 256x256 photo, on one CPU thread (target: < 3 min).

    python bench/embedded_photos.py --out /tmp/photos
    python bench/restore_timing.py --photo /tmp/photos/heldout/coffee.png --work /tmp/restore_timing \
        [--picture docs/restore_example.jpg]

Degrades the 256x256 central crop with Gaussian noise (sigma 25/255, seed 1), runs the command in this
process (the same code path as the console script) and prints the elapsed time and PSNRs; with
--picture writes clean | degraded | restored | re-degraded side by side.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from udm_fast import cli
from udm_fast.eval.metrics import psnr
from udm_fast.synthesis import degrade
from udm_fast.utils.io import load_image, save_image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--picture")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = load_image(args.photo)
    h, w = x.shape[-2:]
    x = x[..., (h - 256) // 2 : (h - 256) // 2 + 256, (w - 256) // 2 : (w - 256) // 2 + 256]
    y = degrade.gaussian_noise(x, 25 / 255, generator=torch.Generator().manual_seed(1))
    os.makedirs(args.work, exist_ok=True)
    paths = {k: os.path.join(args.work, f"{k}.png") for k in ("degraded", "restored", "redegraded")}
    save_image(y, paths["degraded"])
    start = time.perf_counter()
    code = cli.main(
        [
            "restore",
            "--degraded",
            paths["degraded"],
            "--out",
            paths["restored"],
            "--redegraded",
            paths["redegraded"],
            "--device",
            "cpu",
            "--curve",
            os.path.join(args.work, "curve.png"),
        ]
    )
    elapsed = time.perf_counter() - start
    z, r = load_image(paths["restored"]), load_image(paths["redegraded"])
    print(
        f"restore 256x256, defaults, {args.threads} thread(s): {elapsed:.1f} s (exit {code}); PSNR vs clean: "
        f"degraded {float(psnr(y, x)):.2f} dB, restored {float(psnr(z, x)):.2f} dB; re-degraded vs degraded "
        f"{float(psnr(r, y)):.2f} dB"
    )
    if args.picture:
        save_image(torch.cat([x, y, z, r], dim=-1), args.picture, quality=90)
        print(f"wrote {args.picture}: clean | degraded | restored | re-degraded")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
