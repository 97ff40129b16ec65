"""Generator training step: forward + backward of the whole generator (32 SFT layers), fused vs eager.

    pytest bench/test_bench_generator.py --benchmark-json=out.json

The issue-3 target: on a GPU, the default generator (filters 64, e_g 256, batch 24, 128 x 128) under
bfloat16 autocast with the fused kernels (backend ``auto``: Triton) against the same generator on the
eager ``reference`` backend - time per step and peak memory (``extra_info["peak_mem_MB"]``). Parameters
stay float32 (autocast), tensors are channels_last, noise is drawn inside every SFT layer as in
training, and the gradient of every parameter and input is computed. With UDM_BENCH_COMPILE=1 also
``torch.compile(fullgraph=True)`` of both (compiling the generator takes minutes).
CPU: a small generator (filters 16, e_g 32, batch 2, 32 x 32), reference backend only, float32 and
bfloat16 autocast: a smoke run of the benchmark itself, not a performance claim.
"""

import os

import pytest
import torch

from udm_fast import set_layer_backend
from udm_fast.models.generator import Generator

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
COMPILE = os.environ.get("UDM_BENCH_COMPILE") == "1"
# filters, e_g dim, batch, size
SHAPE = dict(filters=64, emb_dim=256, batch=24, size=128) if CUDA else dict(filters=16, emb_dim=32, batch=2, size=32)
LOC_EMB = 4


def _variants():
    if not CUDA:
        yield pytest.param("reference", False, torch.float32, id="cpu-fp32-reference")
        yield pytest.param("reference", False, torch.bfloat16, id="cpu-bf16-reference")
        return
    for backend, name in (("reference", "eager"), ("auto", "fused")):
        yield pytest.param(backend, False, torch.bfloat16, id=f"cuda-bf16-{name}")
        if COMPILE:
            yield pytest.param(backend, True, torch.bfloat16, id=f"cuda-bf16-{name}-compile")


def _inputs():
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    b, s = SHAPE["batch"], SHAPE["size"]
    x = torch.rand(b, 3, s, s, device=DEVICE, generator=gen).contiguous(memory_format=torch.channels_last)
    e_g = torch.randn(b, SHAPE["emb_dim"], device=DEVICE, generator=gen)
    e_l = torch.randn(b, LOC_EMB, s // 4, s // 4, device=DEVICE, generator=gen)
    return [t.requires_grad_() for t in (x, e_g, e_l)]


def generator_step(backend, compiled, dtype):
    """(step, parameters): ``step()`` runs one synchronised forward+backward of the generator."""
    torch.manual_seed(0)
    generator = Generator(SHAPE["filters"], loc_emb_dim=LOC_EMB, emb_dim=SHAPE["emb_dim"]).to(DEVICE)
    set_layer_backend(generator.to(memory_format=torch.channels_last), backend)
    run = torch.compile(generator, fullgraph=True) if compiled else generator
    inputs = _inputs()
    params = list(generator.parameters())
    autocast = dtype != torch.float32

    def step():
        for t in inputs + params:
            t.grad = None
        with torch.autocast(DEVICE.type, dtype=dtype, enabled=autocast):
            out = run(*inputs)
        out.float().square().mean().backward()
        if CUDA:
            torch.cuda.synchronize()

    return step, params


@pytest.mark.parametrize("backend,compiled,dtype", list(_variants()))
def test_generator_step(benchmark, backend, compiled, dtype):
    step, params = generator_step(backend, compiled, dtype)
    step()  # JIT / compile outside the timed rounds
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark.group = f"generator-step-{'cuda' if CUDA else 'cpu'}-{str(dtype)[6:]}"
    benchmark.extra_info.update(
        backend=backend,
        compiled=compiled,
        dtype=str(dtype)[6:],
        **SHAPE,
        device=torch.cuda.get_device_name() if CUDA else "cpu",
    )
    benchmark(step)
    if CUDA:
        benchmark.extra_info["peak_mem_MB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
