"""IDA and SFT layer benchmarks: fused Triton kernels vs the eager reference vs torch.compile(reference).

    pytest bench/test_bench_layers.py --benchmark-json=out.json [--benchmark-min-rounds=10]

GPU: the three VUNet levels at batch 24 (C=64 @ 128x128, C=128 @ 64x64, C=256 @ 32x32), float32
and bfloat16 tensors (parameters and activations in that dtype), forward (no_grad) and
forward+backward (grads of x, the condition maps and all weights). Variants: ``fused`` (Triton
kernels), ``cuda`` (the CUDA C++ kernels), ``eager`` (reference backend), ``compile``
(torch.compile of the reference). CPU: small sizes, reference vs compile only (the fused kernels
need a GPU). Each benchmark group (layer-level-dtype-phase) holds the variants side by side, so
``bench/summarize.py`` prints their ratios.

Scope (environment variable UDM_FAST_BENCH_LAYERS):
  ``default``  fused, cuda and eager for every level/dtype/phase; torch.compile only where the
               issue's targets need it (SFT at level 1 in bfloat16) - compiling each graph costs seconds;
  ``full``     every variant everywhere;
  ``quick``    bfloat16, forward+backward (the issue's targets): SFT and IDA fused / eager at the three
               levels, SFT level 1 also compile, level 1 also cuda (15 benchmarks).
SFT noise is drawn inside every variant (noise=None), as in training.
UDM_FAST_BENCH_SMALL=1: batch 1 and a quarter of the spatial sizes (smoke runs).
UDM_FAST_BENCH_COMPILE_BACKEND: the torch.compile backend of the ``compile`` variant (default inductor;
``eager`` runs dynamo alone: the tests use it to check the variants' compile bookkeeping quickly).
"""

import os

import pytest
import torch
from bench_timing import SMALL

from udm_fast.layers import IDA, SFT

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SCOPE = os.environ.get("UDM_FAST_BENCH_LAYERS", "default")
if SCOPE not in ("default", "full", "quick"):
    raise ValueError(f"UDM_FAST_BENCH_LAYERS must be default, full or quick, got {SCOPE!r}")
COMPILE_BACKEND = os.environ.get("UDM_FAST_BENCH_COMPILE_BACKEND", "inductor")
COND = 8
BATCH = 1 if SMALL else 24 if CUDA else 2
# level: (channels, height = width); CPU sizes keep the channel counts at 1/4 of the spatial size
LEVELS = (
    {"L1": (64, 128), "L2": (128, 64), "L3": (256, 32)} if CUDA else {"L1": (64, 32), "L2": (128, 16), "L3": (256, 8)}
)
if SMALL:
    LEVELS = {level: (channels, max(4, size // 4)) for level, (channels, size) in LEVELS.items()}
# roofline floors in microseconds (H100, batch 24, bf16; docs/kernels.md §2)
FLOORS_BF16_US = {
    ("SFT", "L1"): (36.5, 55.9),
    ("SFT", "L2"): (17.6, 31.8),
    ("SFT", "L3"): (11.4, 30.1),
    ("IDA", "L1"): (34.1, 51.4),
    ("IDA", "L2"): (17.0, 26.9),
    ("IDA", "L3"): (9.2, 25.6),
}


def _selected(layer, level, dtype, phase, variant) -> bool:
    if variant in ("fused", "cuda") and not CUDA:
        return False
    if SCOPE == "quick":
        if dtype != torch.bfloat16 or phase != "fwd+bwd":
            return False
        if variant == "compile":
            return layer == "SFT" and level == "L1"
        return variant != "cuda" or level == "L1"
    if SCOPE == "full" or variant != "compile":
        return True
    return not CUDA or (layer == "SFT" and level == "L1" and dtype == torch.bfloat16)


def _cases():
    for layer in ("SFT", "IDA"):
        for level in LEVELS:
            for dtype in (torch.bfloat16, torch.float32):
                for phase in ("fwd", "fwd+bwd"):
                    for variant in ("fused", "cuda", "eager", "compile"):
                        if _selected(layer, level, dtype, phase, variant):
                            yield pytest.param(
                                layer,
                                level,
                                dtype,
                                phase,
                                variant,
                                id=f"{layer}-{level}-{str(dtype)[6:]}-{phase}-{variant}",
                            )


def _build(layer, channels, size, dtype, variant):
    """(callable running the layer once, its inputs, its module) for one benchmark."""
    torch.manual_seed(0)
    backend = {"fused": "triton", "cuda": "cuda"}.get(variant, "reference")
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    x = torch.randn(BATCH, channels, size, size, device=DEVICE, dtype=dtype, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    cond_half = torch.rand(BATCH, COND, size // 2, size // 2, device=DEVICE, dtype=dtype, generator=gen)
    if layer == "IDA":
        module = IDA(channels, COND, backend=backend).to(DEVICE, dtype)
        inputs = [x, cond_half]
        run = module
    else:
        module = SFT(COND, channels, backend=backend).to(DEVICE, dtype)
        cond_full = torch.rand(BATCH, COND, size, size, device=DEVICE, dtype=dtype, generator=gen)
        inputs = [x, cond_full, cond_half]
        run = module.forward_resized
    if variant == "compile":
        # every variant compiles the same reference code object; without a reset the cached graphs of the
        # earlier cases count against dynamo's recompile limit (8) and later cases fail (bench/NOTES.md)
        torch._dynamo.reset()
        run = torch.compile(run, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND)
    return run, inputs, module


def _synchronised(fn):
    def wrapper():
        fn()
        if CUDA:
            torch.cuda.synchronize()

    return wrapper


def layer_step(layer, level, dtype, phase, variant):
    """A callable running one synchronised forward (no_grad) or forward+backward of the case."""
    channels, size = LEVELS[level]
    run, inputs, module = _build(layer, channels, size, dtype, variant)
    if phase == "fwd":

        def step():
            with torch.no_grad():
                run(*inputs)
    else:
        leaves = [t.detach().requires_grad_() for t in inputs]
        params = list(module.parameters())
        grad_out = torch.randn_like(inputs[0])

        def step():
            for t in leaves + params:
                t.grad = None
            run(*leaves).backward(grad_out)

    return _synchronised(step)


@pytest.mark.parametrize("layer,level,dtype,phase,variant", list(_cases()))
def test_layer(benchmark, layer, level, dtype, phase, variant):
    channels, size = LEVELS[level]
    step = layer_step(layer, level, dtype, phase, variant)
    step()  # compiles (Triton JIT / torch.compile) outside the timed rounds
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark.group = f"{layer}-{level}-{str(dtype)[6:]}-{phase}"
    benchmark.extra_info.update(
        layer=layer,
        level=level,
        channels=channels,
        size=f"{size}x{size}",
        batch=BATCH,
        dtype=str(dtype)[6:],
        phase=phase,
        variant=variant,
        device=torch.cuda.get_device_name() if CUDA else "cpu",
    )
    if variant == "compile":
        benchmark.extra_info["compile_backend"] = COMPILE_BACKEND
    if CUDA and dtype == torch.bfloat16 and not SMALL:
        fwd_us, bwd_us = FLOORS_BF16_US[(layer, level)]
        benchmark.extra_info["floor_us"] = fwd_us if phase == "fwd" else fwd_us + bwd_us
    benchmark(step)
    if CUDA:
        benchmark.extra_info["peak_mem_MB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
