"""Where the time goes: per-kernel device time of the fused layers and the generator step (torch.profiler).

    python bench/profile_kernels.py --out profile.json [--iters 5] [--top 12]

Cases (the benchmark suites' own step builders and sizes, so the numbers line up with their tables):
SFT and IDA at level 1 and IDA at level 3, bfloat16, forward+backward, fused and eager; the generator
training step (bf16 autocast) fused and eager. On a GPU it records CUDA kernel time, on the CPU (a smoke
run with the eager cases only) operators' CPU self time. The JSON holds, per case, each kernel's calls and
microseconds per iteration, sorted by time; a table of the top kernels is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_bench_generator import generator_step  # noqa: E402
from test_bench_layers import layer_step  # noqa: E402

from udm_fast.utils.files import write_bytes_atomic  # noqa: E402

CUDA = torch.cuda.is_available()


def _cases():
    variants = ("fused", "eager") if CUDA else ("eager",)
    for layer, level in (("SFT", "L1"), ("IDA", "L1"), ("IDA", "L3")):
        for variant in variants:
            yield (
                f"{layer}-{level}-bf16-fwd+bwd-{variant}",
                lambda layer=layer, level=level, variant=variant: layer_step(
                    layer, level, torch.bfloat16, "fwd+bwd", variant
                ),
            )
    for backend, name in (("auto", "fused"), ("reference", "eager")):
        if CUDA or name == "eager":
            yield (
                f"generator-step-bf16-{name}",
                lambda backend=backend: generator_step(backend, False, torch.bfloat16)[0],
            )


def _event_time_us(event) -> float:
    """Total device (GPU) or CPU self time of an aggregated profiler event, in microseconds."""
    if CUDA:  # renamed from cuda_time_total in recent torch releases
        return float(getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0))
    return float(event.self_cpu_time_total)


def profile_case(step, iters: int) -> list:
    """Per-kernel [{name, calls_per_iter, us_per_iter}] of ``iters`` runs of ``step`` (after two warm-ups)."""
    step()
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    with profile(activities=activities) as prof:
        for _ in range(iters):
            step()
    rows = []
    for event in prof.key_averages():
        # on a GPU, CPU-side operators also carry their kernels' device time: keep the kernels only
        if CUDA and event.device_type != DeviceType.CUDA:
            continue
        us = _event_time_us(event)
        if us > 0:
            rows.append({"name": event.key, "calls_per_iter": event.count / iters, "us_per_iter": us / iters})
    return sorted(rows, key=lambda r: -r["us_per_iter"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="kernels printed per case")
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error("--iters must be at least 1")
    result = {
        "device": torch.cuda.get_device_name() if CUDA else "cpu",
        "torch": torch.__version__,
        "iters": args.iters,
        "cases": {},
    }
    for name, build in _cases():
        try:
            rows = profile_case(build(), args.iters)
        except Exception as e:  # one failing case must not lose the others' data
            result["cases"][name] = {"error": repr(e)}
            print(f"\n{name}: failed: {e!r}")
            continue
        total = sum(r["us_per_iter"] for r in rows)
        result["cases"][name] = {"total_us_per_iter": total, "kernels": rows}
        count = sum(r["calls_per_iter"] for r in rows)
        print(f"\n{name}: {total:.1f} us per iteration in {count:.0f} {'kernels' if CUDA else 'operator calls'}")
        for r in rows[: args.top]:
            print(f"  {r['us_per_iter']:10.1f} us  {r['calls_per_iter']:5.1f}x  {r['name'][:100]}")
    write_bytes_atomic(args.out, json.dumps(result, indent=1).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
