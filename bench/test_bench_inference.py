"""CPU inference: ``UDM.synthesize`` in fp32 eager against each faster path, seconds and GFLOP/s.

    pytest bench/test_bench_inference.py --benchmark-json=out.json && python bench/summarize.py out.json

Cases: the default-size model (``UDMConfig()``, seeded random weights) on a 256 x 256 image; the bundled
model (``udm_fast.default_model()``) on 256 x 256 and on a 2000 x 1500 image run in 512 x 512 tiles (the
default tiling). Variants, all in one run: ``eager`` (precision fp32, the baseline), ``channels_last``
(fp32, weights and image channels-last), ``bf16`` (bfloat16 autocast), ``bf16_channels_last``, and
``auto`` (what ``synthesize`` picks by default, udm_fast/models/inference.py). With UDM_BENCH_COMPILE=1
also ``bf16_compile`` (torch.compile of the generator network, bf16 autocast, channels-last; compiled
outside the timed rounds; extra_info["compile_s"] holds the compile time it has to pay back).

extra_info: GFLOP of one call (torch.utils.flop_counter, fp32 eager), GFLOP/s at the minimum time, the
fraction of this CPU's estimated fp32 peak (``cpu_peak_gflops``: cores in use (threads) x clock x 2 FMA
pipes x 16 fp32 lanes x 2 FLOP, the AVX-512 assumption stated in extra_info), and the largest / mean absolute
difference of
the output from the fp32 eager output (must stay within BF16_TOLERANCE).
UDM_FAST_BENCH_SMALL=1: 32 x 32 / 64 x 64 and a 96 x 64 image in 32 x 32 tiles with an 8-pixel halo (smoke runs).
"""

import functools
import os
import time

import pytest
import torch
import torch.nn.functional as F
from bench_timing import SMALL, rate
from torch.utils.flop_counter import FlopCounterMode

from udm_fast import UDM, default_model
from udm_fast.models.inference import BF16_TOLERANCE

COMPILE = os.environ.get("UDM_BENCH_COMPILE") == "1"
ROUNDS = 1 if SMALL else 3  # the tiled case: 2 (about 1 TFLOP per call); statistics on the minimum
# case: (model, width, height, tile size)
CASES = {
    "reference-256": ("reference", 32, 32, None) if SMALL else ("reference", 256, 256, None),
    "bundled-256": ("bundled", 64, 64, None) if SMALL else ("bundled", 256, 256, None),
    "bundled-2000x1500-tiled": ("bundled", 96, 64, 32) if SMALL else ("bundled", 2000, 1500, 512),
}
SMALL_HALO = 8  # smoke runs: the tiled path with a narrow halo (the default, 64, would dwarf 32 x 32 tiles)
# variant: (precision, bf16 autocast around the call, channels_last, compiled); all but ``auto`` set the
# layout and autocast themselves under precision fp32, so the policy leaves them as called
VARIANTS = {
    "eager": ("fp32", False, False, False),
    "channels_last": ("fp32", False, True, False),
    "bf16": ("fp32", True, False, False),
    "bf16_channels_last": ("fp32", True, True, False),
    "auto": ("auto", False, False, False),
}
if COMPILE:
    VARIANTS["bf16_compile"] = ("fp32", True, True, True)


def cpu_peak_gflops() -> tuple:
    """(estimated fp32 peak GFLOP/s of the cores in use, the assumption): cores x clock x 2 AVX-512 FMA pipes
    x 16 fp32 lanes x 2 FLOP (bf16 dot products can reach twice that)."""
    mhz = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    cores = min(os.cpu_count(), torch.get_num_threads())  # the cores this run's threads can use
    if mhz is None:
        return None, "clock unknown"
    return round(cores * mhz * 1e-3 * 2 * 16 * 2, 1), f"{cores} cores x {mhz:.0f} MHz x 2 FMA x 16 fp32 lanes x 2"


@functools.lru_cache(maxsize=None)
def _model(kind: str) -> UDM:
    if kind == "bundled":
        model = default_model().eval()
    else:
        torch.manual_seed(0)
        model = UDM().eval()
    if SMALL:
        model.generator_halo = SMALL_HALO
    return model


@functools.lru_cache(maxsize=None)
def _case_inputs(case: str):
    """(model, x, e_g, e_l, fp32 eager output, GFLOP of one call) for a case, computed once."""
    kind, width, height, tile = CASES[case]
    model = _model(kind)
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(
        torch.rand(1, 3, height // 16, width // 16, generator=g),
        size=(height, width),
        mode="bicubic",
        align_corners=False,
    ).clamp(0, 1)
    y = (x + 0.04 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        e_g, e_l = model.encode(y[..., :256, :256])  # the degradation of a 256 x 256 crop
        model.tile_size, model.precision = tile, "fp32"
        counter = FlopCounterMode(display=False)
        with counter:
            reference = model.synthesize(x, e_g, e_l, noise=torch.Generator().manual_seed(1))
    return model, x, e_g, e_l, reference, counter.get_total_flops() / 1e9


def _prepare(model: UDM, x: torch.Tensor, variant: str):
    """Sets the model up for the variant; returns (image, compile seconds or None, undo callable)."""
    precision, _, channels_last, compiled = VARIANTS[variant]
    model.precision = precision
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    image = x.contiguous(memory_format=fmt)
    if not compiled:
        return image, None, lambda: None
    net = model.generator.net
    model.generator.net = torch.compile(net, dynamic=False)
    return image, 0.0, functools.partial(setattr, model.generator, "net", net)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", list(CASES))
def test_synthesize_cpu(benchmark, case, variant):
    model, x, e_g, e_l, reference, gflop = _case_inputs(case)
    model.tile_size = CASES[case][3]
    image, compile_s, undo = _prepare(model, x, variant)
    out = {}

    autocast = VARIANTS[variant][1]

    def call():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out["y"] = model.synthesize(image, e_g, e_l, noise=torch.Generator().manual_seed(1))

    try:
        if compile_s is not None:  # compiles outside the timed rounds
            start = time.perf_counter()
            call()
            compile_s = round(time.perf_counter() - start, 1)
        benchmark.group = f"synthesize-cpu-{case}"
        tiled = CASES[case][3] is not None
        benchmark.pedantic(call, rounds=min(ROUNDS, 2) if tiled else ROUNDS, warmup_rounds=0 if tiled else 1)
    finally:
        undo()
        model.to(memory_format=torch.contiguous_format)
    diff = (out["y"].float() - reference).abs()
    peak, assumption = cpu_peak_gflops()
    gflops = rate(benchmark, gflop, 1, "min")
    benchmark.extra_info.update(
        variant=variant,
        size=f"{x.shape[-1]}x{x.shape[-2]}",
        tile_size=model.tile_size,
        gflop=round(gflop, 1),
        gflop_per_s=gflops,
        cpu_peak_gflops=peak,
        peak_assumption=assumption,
        of_peak=None if gflops is None or peak is None else round(gflops / peak, 3),
        compile_s=compile_s,
        max_abs_diff=round(diff.max().item(), 5),
        mean_abs_diff=round(diff.mean().item(), 6),
        torch_threads=torch.get_num_threads(),
    )
    if not autocast:  # under the caller's own autocast the dtype is the path's (bf16 untiled, fp32 tiled)
        assert out["y"].dtype == torch.float32
    assert diff.mean() <= BF16_TOLERANCE["mean_abs"] and diff.max() <= BF16_TOLERANCE["max_abs"], diff.max()
