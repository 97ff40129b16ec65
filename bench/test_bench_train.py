"""Training throughput: images per second of one full iteration (generator step + critic step).

Every loss of the default config is on (DISTS with random VGG16 weights: the same compute as the
pretrained network, which the device machines lack), two generator passes for the diversity loss.
Data loading is excluded: the batch is a fixed set of smooth random images already on the device.

* GPU, the default model (batch 24, 128 x 128): the reference backend in fp32 eager (the baseline),
  bf16 autocast with the reference backend, bf16 with the fused kernels (backend auto), and, with
  UDM_BENCH_COMPILE=1 (compiling takes minutes), bf16 + fused kernels + torch.compile of the generator.
      pytest bench/test_bench_train.py -k cuda --benchmark-columns=median,iqr,rounds
      UDM_BENCH_COMPILE=1 pytest bench/test_bench_train.py -k "cuda and compile"
* CPU, a tiny model (filters 8, encoders 32, e_g 16; batch 4, 32 x 32; one thread): fp32 eager
  against bf16 autocast.
      OMP_NUM_THREADS=1 pytest bench/test_bench_train.py -k cpu --benchmark-columns=median,iqr,rounds
Each benchmark stores images/s in extra_info.
"""

import os

import numpy as np
import pytest
import torch
from bench_timing import rate
from PIL import Image

from udm_fast.train.config import load_config
from udm_fast.train.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILE = os.environ.get("UDM_BENCH_COMPILE") == "1"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")

SIZES = {
    "cpu": {"config": "tiny.yaml", "batch": 4, "crop": 32, "overrides": {"run.threads": 1}},
    "cuda": {"config": "default.yaml", "batch": 24, "crop": 128, "overrides": {}},
}
VARIANTS = [
    pytest.param("cpu", "fp32_reference", {"run.amp": "none", "run.backend": "reference"}, id="cpu-fp32_reference"),
    pytest.param("cpu", "bf16_reference", {"run.amp": "bf16", "run.backend": "reference"}, id="cpu-bf16_reference"),
    pytest.param(
        "cuda", "fp32_reference", {"run.amp": "none", "run.backend": "reference"}, marks=CUDA, id="cuda-fp32_reference"
    ),
    pytest.param(
        "cuda", "bf16_reference", {"run.amp": "bf16", "run.backend": "reference"}, marks=CUDA, id="cuda-bf16_reference"
    ),
    pytest.param("cuda", "bf16_fused", {"run.amp": "bf16", "run.backend": "auto"}, marks=CUDA, id="cuda-bf16_fused"),
    pytest.param(
        "cuda",
        "bf16_fused_compile",
        {"run.amp": "bf16", "run.backend": "auto", "run.compile": True},
        marks=[CUDA, pytest.mark.skipif(not COMPILE, reason="set UDM_BENCH_COMPILE=1 (compiles for minutes)")],
        id="cuda-bf16_fused_compile",
    ),
]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Enough clean images for one batch of either size (the trainer only lists them here)."""
    folder = tmp_path_factory.mktemp("bench_images")
    rng = np.random.default_rng(0)
    for i in range(SIZES["cuda"]["batch"]):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((64, 64), Image.BICUBIC).save(folder / f"{i:02d}.png")
    return folder


def _batch(size: int, count: int, device: torch.device) -> list:
    g = torch.Generator().manual_seed(1)
    coarse = torch.rand(3 * count, 3, 8, 8, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return [t.clamp(0, 1).to(device) for t in images.split(count)]


@pytest.mark.parametrize("device, variant, overrides", VARIANTS)
def test_training_iteration(benchmark, image_folder, tmp_path, device, variant, overrides):
    size = SIZES[device]
    if device == "cpu":
        torch.set_num_threads(1)
    config = load_config(
        os.path.join(ROOT, "configs", size["config"]),
        {
            **size["overrides"],
            **overrides,
            "run.device": device,
            "data.root": str(image_folder),
            "data.kind": "folder",
            "data.batch_size": size["batch"],
            "data.degrade_window": size["crop"],
            "loss.weights.dists": 10.0,
            "loss.pretrained": False,
            "loss.download": False,
            "log.out_dir": str(tmp_path),
            "log.progress": False,
        },
    )
    trainer = Trainer(config)
    x, y, y_key = _batch(size["crop"], size["batch"], trainer.device)
    if config.run.channels_last:
        x, y, y_key = (t.contiguous(memory_format=torch.channels_last) for t in (x, y, y_key))

    def iteration():
        trainer.train_step(x, y, y_key)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(iteration, rounds=5 if device == "cuda" else 8, warmup_rounds=3 if config.run.compile else 1)
    benchmark.extra_info.update(
        images_per_s=rate(benchmark, size["batch"], 2, "median"),
        batch=size["batch"],
        crop=size["crop"],
        variant=variant,
        torch_threads=torch.get_num_threads(),
    )
