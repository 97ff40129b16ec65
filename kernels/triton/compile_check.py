"""Compiles every Triton kernel (IDA / SFT, noise, entropy likelihood) for a GPU architecture without a GPU,
and reports its resources.

    python -m udm_fast.triton_kernels.compile_check --arch 90 --dtype bfloat16 --channels 64 256

The host launchers run on small CPU tensors with the launch step replaced by a recorder, so every
kernel variant they would launch (constexprs, block sizes, warps, stages) is captured; each one is
then compiled with triton.compile for the target (ptxas included), specialised the way the JIT
specialises a real launch (integer arguments equal to 1 become constants, 16-divisible ones get
the divisibility hint). Registers and spill stack come from cuobjdump on the cubin. Exit status 1
if any kernel fails to compile, or if a launchable kernel (``*_kernel``) of the package is never
recorded (so a new kernel cannot escape the check: the interpreter accepts code a GPU build refuses).
Must not run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time

import torch

import triton
from triton.backends.compiler import GPUTarget

from . import _common, entropy_likelihood, ida, sft

_POINTER_TYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int64: "*i64"}


class _DirectLaunchRecorder:
    """Stands in for a kernel launched directly as ``kernel[grid](*args, **constexprs)``."""

    def __init__(self, kernel, recorded: list):
        self.kernel, self.recorded = kernel, recorded

    def __getitem__(self, grid):
        return lambda *args, **constexprs: self.recorded.append((self.kernel, args, constexprs))


@contextlib.contextmanager
def _recorded_launches():
    """Replaces ida._launch and the directly launched kernels (SFT noise, entropy likelihood) by
    recorders; yields the list of (kernel, args, constexprs incl. config)."""
    recorded = []

    def record(name, kernel, grid, dims, *args, reset=(), **constexprs):
        recorded.append((kernel, args, dict(constexprs, **ida._config(name, dims))))

    replacements = [(ida, "_launch", record), (sft, "check_runnable", lambda *args: None)]
    replacements += [
        (module, name, _DirectLaunchRecorder(getattr(module, name), recorded))
        for module, name in (
            (sft, "_noise_kernel"),
            (entropy_likelihood, "_forward_kernel"),
            (entropy_likelihood, "_backward_kernel"),
        )
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in replacements]
    for module, name, value in replacements:
        setattr(module, name, value)
    try:
        yield recorded
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _specialise(kernel, args, constexprs):
    """(signature, constants, attributes) of an ASTSource for these launch arguments."""
    signature, constants, attrs = {}, {}, {}
    for index, name in enumerate(kernel.arg_names):
        value = args[index] if index < len(args) else None
        if name in constexprs:
            signature[name], constants[name] = "constexpr", constexprs[name]
        elif isinstance(value, torch.Tensor):
            signature[name] = _POINTER_TYPES[value.dtype]
            if value.data_ptr() % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int) and value == 1:
            signature[name], constants[name] = "constexpr", 1
        elif isinstance(value, int):
            signature[name] = "i64" if abs(value) >= 2**31 else "i32"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{kernel.fn.__name__}: cannot specialise argument {name}={value!r}")
    return signature, constants, attrs


def _record_all(channels: int, dtype: torch.dtype) -> list:
    """Runs the IDA and SFT forward (both save modes) and backward launchers, the noise and the entropy
    likelihood launchers at a small size."""
    gen = torch.Generator().manual_seed(0)
    b, cc, h, w = 2, 8, 32, 32
    cm, rd = (channels + cc) // 2, (channels + cc) // 4

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    x = rand(b, channels, h, w).contiguous(memory_format=torch.channels_last)
    cond_full, cond_half, noise = rand(b, cc, h, w), rand(b, cc, h // 2, w // 2), rand(b, 1, h, w)
    ida_w = [rand(cc, cm, 2, 2), rand(cm, cm, 3, 3), rand(cm, channels, 3, 3), rand(cm, channels, 2, 2), rand(channels)]
    sft_w = [rand(rd, cc, 1, 1), rand(channels, rd, 1, 1), rand(rd, cc + 1, 1, 1), rand(channels, rd, 1, 1)]
    seed = torch.tensor([1], dtype=torch.int64)
    with _recorded_launches() as recorded:
        out = torch.empty_like(x)
        for noise_map, noise_seed in ((None, seed), (noise, None)):
            a, bx = sft.forward(
                x,
                cond_full,
                cond_half,
                noise_map,
                noise_seed,
                *sft_w,
                *ida_w,
                slope=0.01,
                compute_dtype=dtype,
                out=out,
                save_mid=True,
            )
            grads = {"dx": torch.empty_like(x), "dm": torch.empty_like(cond_half), "dcond": torch.empty_like(cond_full)}
            if noise_map is not None:
                grads["dnoise"] = torch.empty_like(noise_map)
            sft.backward(
                x,
                x,
                cond_full,
                cond_half,
                noise_map,
                noise_seed,
                *sft_w,
                *ida_w[:4],
                a,
                bx,
                slope=0.01,
                compute_dtype=dtype,
                grads=grads,
            )
        ida.forward(x, cond_half, *ida_w, compute_dtype=dtype, out=out, save_mid=False)
        a, bx = ida.forward(x, cond_half, *ida_w, compute_dtype=dtype, out=out, save_mid=True)
        ida.backward(
            x,
            x,
            cond_half,
            *ida_w[:4],
            a,
            bx,
            compute_dtype=dtype,
            grads={"dx": torch.empty_like(x), "dm": torch.empty_like(cond_half)},
        )
        sft.noise(seed, b, h, w)
        # the entropy bottleneck's likelihood (float32 whatever the layers' dtype), packed by the module itself
        from udm_fast.entropy.bottleneck import EntropyBottleneck

        values = torch.randn(channels, 1000, generator=gen)
        packed = [t.detach() for t in EntropyBottleneck(channels)._packed_density()]
        for bound in (None, torch.tensor([1e-9])):
            entropy_likelihood.likelihood_forward(values, *packed, bound)
            entropy_likelihood.likelihood_backward(values, values, *packed, bound)
    return recorded


def _resources(cubin: bytes) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return "(cuobjdump not found)"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    fields = [
        part
        for line in usage.splitlines()
        if "REG:" in line
        for part in line.split()
        if part.startswith(("REG:", "STACK:"))
    ]
    return " ".join(fields)


def check(arch: int, dtypes, channels) -> int:
    """Compiles all recorded kernel variants; prints one line per variant; returns the failure count."""
    target = GPUTarget("cuda", arch, 32)
    failures = 0
    launched = set()
    for dtype in dtypes:
        for c in channels:
            seen = set()
            for kernel, args, constexprs in _record_all(c, dtype):
                launched.add(kernel.fn.__name__)
                signature, constants, attrs = _specialise(kernel, args, constexprs)
                options = {"num_warps": constexprs.get("num_warps", 4), "num_stages": constexprs.get("num_stages", 3)}
                key = (kernel.fn.__name__, repr(sorted(constants.items(), key=str)), repr(options))
                if key in seen:
                    continue
                seen.add(key)
                flags = {k: v for k, v in constants.items() if k.isupper() and k not in ("DOT", "PREC")}
                start = time.time()
                try:
                    compiled = triton.compile(
                        triton.compiler.ASTSource(kernel, signature, constants, attrs), target=target, options=options
                    )
                except Exception as exc:  # report every failing variant, then fail overall
                    failures += 1
                    print(f"FAIL sm_{arch} {dtype} C={c} {kernel.fn.__name__} {flags}: {exc}", flush=True)
                    continue
                print(
                    f"ok   sm_{arch} {str(dtype)[6:]:8s} C={c:<3d} {kernel.fn.__name__:17s} "
                    f"{time.time() - start:5.1f}s {_resources(compiled.asm['cubin'])} warps={options['num_warps']} "
                    f"{flags}",
                    flush=True,
                )
    for name in sorted(_launchable_kernels() - launched):  # the interpreter accepts code a GPU build refuses
        failures += 1
        print(f"FAIL {name}: a kernel that _record_all never launches, so it is not compiled here", flush=True)
    return failures


def _launchable_kernels() -> set:
    """Names of the package's launchable Triton kernels (``*_kernel``; helpers and probes excluded)."""
    return {
        name
        for module in (ida, sft, entropy_likelihood)
        for name, obj in vars(module).items()
        if isinstance(obj, triton.runtime.JITFunction) and name.endswith("_kernel")
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (80 = A100, 90 = H100)")
    parser.add_argument("--dtype", nargs="+", default=["bfloat16"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--channels", nargs="+", type=int, default=[64])
    args = parser.parse_args(argv)
    if _common.INTERPRET:
        print("compile_check: unset TRITON_INTERPRET (the kernels were decorated for the interpreter)")
        return 2
    return 1 if check(args.arch, [getattr(torch, d) for d in args.dtype], args.channels) else 0


if __name__ == "__main__":
    sys.exit(main())
