"""Degradation-synthesis throughput: pairs of 128x128 per second.

CPU (one thread = one data-loader worker):
    OMP_NUM_THREADS=1 pytest bench/test_bench_degrade.py -k cpu --benchmark-columns=mean,stddev,rounds
GPU (skipped without CUDA): pytest bench/test_bench_degrade.py -k cuda
Each benchmark stores pairs/s in extra_info. Baselines in the same run: the same pipeline one image
at a time, and the JPEG step alone, both ways (``pillow``: libjpeg on the CPU, one image after the
other, the floor of a GPU pipeline that sends its images there; ``tensor``: udm_fast.jpeg on the
device, what ``degrade`` uses on a GPU).
"""

import pytest
import torch
import torch.nn.functional as F
from bench_timing import rate

from udm_fast.synthesis import degrade as D

BATCH, SIZE = 24, 128
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _photo_patches(batch: int) -> torch.Tensor:
    """Photo-like patches: smooth random shapes (bicubic upsampling of 12x12) plus fine texture."""
    g = torch.Generator().manual_seed(0)
    coarse = F.interpolate(
        torch.rand(batch, 3, 12, 12, generator=g), size=(SIZE, SIZE), mode="bicubic", align_corners=False
    )
    texture = 0.04 * torch.randn(batch, 3, SIZE, SIZE, generator=g)
    return (coarse + texture).clamp(0, 1)


@pytest.fixture(scope="module", params=DEVICES)
def photos(request):
    """BATCH photo-like patches on the device."""
    if request.param == "cpu":
        torch.set_num_threads(1)
    return _photo_patches(BATCH).to(request.param)


def _run(benchmark, fn, pairs, device):
    def call():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(call, rounds=8, warmup_rounds=1)
    benchmark.extra_info["pairs_per_s"] = rate(benchmark, pairs, 1)
    benchmark.extra_info["torch_threads"] = torch.get_num_threads()


def test_degrade_batched(benchmark, photos):
    seeds = iter(range(10**6))
    _run(benchmark, lambda: D.degrade(photos, generator=next(seeds)), BATCH, photos.device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_degrade_batched_256_cuda(benchmark):
    """A synthesis-sized batch on the GPU (the ops are launch-bound at 24 images): 256 patches per call."""
    photos = _photo_patches(256).to("cuda")
    seeds = iter(range(10**6))
    _run(benchmark, lambda: D.degrade(photos, generator=next(seeds)), 256, photos.device)


def test_degrade_one_image_at_a_time_baseline(benchmark, photos):
    seeds = iter(range(10**6))
    _run(
        benchmark,
        lambda: [D.degrade(photos[i : i + 1], generator=next(seeds)) for i in range(BATCH)],
        BATCH,
        photos.device,
    )


@pytest.mark.parametrize("impl", ["pillow", "tensor"])
def test_jpeg_only(benchmark, photos, impl):
    """The JPEG step alone: Pillow's libjpeg per image on the CPU, or the batched tensor version on the device."""
    _run(benchmark, lambda: D.jpeg(photos, 75, impl=impl), BATCH, photos.device)


@pytest.mark.parametrize("op", ["noise", "gaussian_blur_sigma3", "motion_blur_length21", "contrast"])
def test_single_op(benchmark, photos, op):
    g = torch.Generator(device=photos.device).manual_seed(0)
    fn = {
        "noise": lambda: D.gaussian_noise(photos, 10 / 255, generator=g),
        "gaussian_blur_sigma3": lambda: D.gaussian_blur(photos, 3.0),
        "motion_blur_length21": lambda: D.motion_blur(photos, 21.0, 0.7),
        "contrast": lambda: D.adjust_contrast(photos, 1.3, 0.5),
    }[op]
    _run(benchmark, fn, BATCH, photos.device)
