"""CPU time of one training iteration of the bundled model's config (configs/embedded.yaml), one thread:
fp32 (today's step) against bf16 autocast, channels_last and both, interleaved round by round in one
process so machine load hits every variant alike. Data loading is excluded (a fixed random batch).

    OMP_NUM_THREADS=1 python bench/embedded_train_step_cpu.py [--rounds 5] [--config configs/embedded.yaml]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from udm_fast.train.config import load_config
from udm_fast.train.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "fp32": {"run.amp": "none", "run.channels_last": False},
    "bf16": {"run.amp": "bf16", "run.channels_last": False},
    "channels_last": {"run.amp": "none", "run.channels_last": True},
    "bf16+channels_last": {"run.amp": "bf16", "run.channels_last": True},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "embedded.yaml"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="iterations timed per round and variant")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        photos = os.path.join(tmp, "photos")
        os.makedirs(photos)
        rng = np.random.default_rng(0)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(os.path.join(photos, f"{i}.png"))
        trainers, batches = {}, {}
        for name, overrides in VARIANTS.items():
            config = load_config(
                args.config,
                {
                    "data.root": photos,
                    "log.out_dir": os.path.join(tmp, name),
                    "run.device": "cpu",
                    "run.threads": 1,
                    **overrides,
                },
            )
            trainer = Trainer(config)
            crop, batch = config.data.crop_size, config.data.batch_size
            fmt = torch.channels_last if config.run.channels_last else torch.contiguous_format
            generator = torch.Generator().manual_seed(0)
            batches[name] = [
                torch.rand(batch, 3, crop, crop, generator=generator).contiguous(memory_format=fmt) for _ in range(3)
            ]
            trainer.train_step(*batches[name])  # warm-up
            trainers[name] = trainer
        times = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                for _ in range(args.steps):
                    start = time.perf_counter()
                    trainer.train_step(*batches[name])
                    times[name].append(time.perf_counter() - start)
    shape = f"batch {config.data.batch_size} x 3 x {config.data.crop_size}^2"
    print(
        f"{os.path.relpath(args.config, ROOT)}, {shape}, 1 thread, torch {torch.__version__}, "
        f"{args.rounds} rounds x {args.steps} steps, load average {os.getloadavg()[0]:.2f}"
    )
    base = statistics.median(times["fp32"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:20s} min {min(values):.3f} s  median {median:.3f} s  speed-up {base / median:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
