"""Shared pieces of the IDA / SFT Triton kernels: device helpers and host-side launch policy.

Layout conventions used by every kernel:
  * a *low-res pixel* n = (b, i, j) is flattened as n = (b * Hl + i) * Wl + j, Hl = H / 2, Wl = W / 2;
  * feature maps (x, grad_out, out, cond, noise, m) are addressed through their 4 strides, so
    NCHW-contiguous and channels_last inputs work without copies (channels_last is the fast one);
  * per-low-res-pixel intermediates (A, Bx, dA, dBx) are row-major [N_lo, Cm];
  * packed GEMM weights are tap-major: w_x -> [9, C, Cm], w_map -> [9, Cm_in, Cm_out],
    w_out -> [4, Cm, C_out] (tap = 3u + v or 2p + q).
Every tl.dot takes operands cast to the compute dtype ``DOT`` and accumulates in float32.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import numpy
import torch

import triton
import triton.language as tl

# triton.jit decides at decoration time whether a kernel is interpreted, so this module-level
# flag describes every kernel of this package (they are all decorated at import).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_DOT_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def dot_dtype(dtype: torch.dtype):
    """The Triton dtype the tensor-core operands are cast to."""
    try:
        return _DOT_DTYPES[dtype]
    except KeyError:
        raise TypeError(f"Triton IDA/SFT kernels compute in float32, bfloat16 or float16, not {dtype}") from None


def dot_precision(compute_dtype: torch.dtype) -> str:
    """tl.dot input precision. float32: TF32 when cuDNN convolutions may use it (PyTorch's default,
    so the reference convolutions do the same), IEEE otherwise. 16-bit operands: Triton's default
    (the setting only concerns float32 operands)."""
    if compute_dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def pow2(n: int, floor: int = 16) -> int:
    """Smallest power of two >= max(n, floor) (tl.dot needs every block dimension >= 16)."""
    return max(floor, triton.next_power_of_2(int(n)))


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (2 in the interpreter); grids are sized from it."""
    if device.type == "cuda" and not INTERPRET:
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


def on_device(t: torch.Tensor):
    """Context for launching on ``t``'s device: Triton launches on the current CUDA device and its
    current stream, whatever device the pointers belong to (cuda:1 tensors, current device 0)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def autotune_enabled() -> bool:
    """Autotuning is opt-in (UDM_FAST_TRITON_AUTOTUNE=1): it compiles and times every config on first use."""
    return not INTERPRET and os.environ.get("UDM_FAST_TRITON_AUTOTUNE", "0") == "1"


def check_runnable(t: torch.Tensor, dot=None) -> None:
    """Raises when the kernels cannot run on ``t``'s device (with tl.dot operands of Triton dtype ``dot``)."""
    if t.device.type == "cuda":
        return
    if INTERPRET:
        problem = interpreter_problem() or (dot is not None and interpreter_dot_problem(dot))
        if problem:
            raise RuntimeError(problem)
        return
    raise RuntimeError(
        f"Triton IDA/SFT kernels need a CUDA tensor (got {t.device.type}); on CPU they run only in the "
        "Triton interpreter, which must be enabled (TRITON_INTERPRET=1) before triton is first imported"
    )


@functools.lru_cache(maxsize=None)
def interpreter_problem() -> Optional[str]:
    """Why the Triton interpreter cannot run these kernels here, or None (probed once per process).
    Triton 3.6's interpreter converts a runtime loop bound with int(array), which numpy >= 2.4 refuses
    ("only 0-dimensional arrays can be converted"); Triton 3.8 squeezes the array first."""
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _loop_probe[(1,)](out, 3)
    except Exception as e:  # the interpreter wraps the numpy TypeError in its own InterpreterError
        return (
            f"the Triton interpreter (triton {triton.__version__}, numpy {numpy.__version__}) cannot run a loop "
            f"with a runtime bound: {e!r}. Triton 3.6's interpreter needs numpy < 2.4 "
            "(pip install 'numpy<2.4'); newer Triton releases (3.8) work with any numpy"
        )
    if int(out.item()) != 3:
        return f"the Triton interpreter (triton {triton.__version__}) ran a 3-step loop {int(out.item())} times"
    return None


@functools.lru_cache(maxsize=None)
def interpreter_dot_problem(dot) -> Optional[str]:
    """Why the Triton interpreter's tl.dot on ``dot`` operands is wrong here, or None (probed once per dtype).
    Triton 3.6-3.8's interpreter returns garbage for bfloat16 operands (float16 and float32 are right)."""
    torch_dtype = {v: k for k, v in _DOT_DTYPES.items()}[dot]
    a = torch.ones(16, 16, dtype=torch_dtype)
    out = torch.zeros(16, 16, dtype=torch.float32)
    _dot_probe[(1,)](a, out, DOT=dot)
    if not bool((out == 16).all()):
        return (
            f"the Triton interpreter (triton {triton.__version__}) computes tl.dot on {torch_dtype} operands "
            f"wrongly (ones(16, 16) @ ones(16, 16) gave values up to {out.abs().max().item():.3g}, not 16): "
            f"run {torch_dtype} on a GPU, or use float16 / float32 (or the 'cuda' / 'reference' backend) on the CPU"
        )
    return None


@triton.jit
def _dot_probe(a_ptr, out_ptr, DOT: tl.constexpr):
    """out = a @ a for a 16 x 16 row-major a, operands cast to DOT (the interpreter check above)."""
    idx = tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :]
    a = tl.load(a_ptr + idx).to(DOT)
    tl.store(out_ptr + idx, tl.dot(a, a))


@triton.jit
def _loop_probe(out_ptr, n):
    """Counts to n in a loop whose bound is a kernel argument (the interpreter check above)."""
    total = 0
    for _ in range(0, n):
        total += 1
    tl.store(out_ptr, total)


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def lowres_coords(n, Hl, Wl):
    """(b, i, j) of flattened low-res pixel indices n (int32: callers keep tensors below 2**31 elements)."""
    j = n % Wl
    t = n // Wl
    return t // Hl, t % Hl, j


@triton.jit
def lowres_block(N_lo, Hl, Wl, BLOCK_P: tl.constexpr):
    """(n, mask, b, i, j): this program's BLOCK_P flattened low-res pixels (grid axis 0), n < N_lo, coordinates."""
    n = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    b, i, j = lowres_coords(n, Hl, Wl)
    return n, n < N_lo, b, i, j


@triton.jit
def leaky(h, slope):
    """LeakyReLU(slope); slope 0 is ReLU."""
    return tl.where(h > 0, h, h * slope)


@triton.jit
def leaky_grad(g, h, slope):
    """Backward of LeakyReLU(slope) at pre-activation h (PyTorch convention: slope where h <= 0)."""
    return tl.where(h > 0, g, g * slope)


@triton.jit
def load_cond_noise(
    cond_ptr,
    noise_ptr,
    seed_ptr,
    b,
    hy,
    hx,
    pmask,
    Cc,
    H,
    W,
    s_cb,
    s_cc,
    s_ch,
    s_cw,
    s_nb,
    s_nh,
    s_nw,
    HAS_NOISE: tl.constexpr,
    BLOCK_CZ: tl.constexpr,
):
    """[P, BLOCK_CZ] tile of [cond; z] at high-res pixels (b, hy, hx): columns < Cc hold cond,
    column Cc the noise (explicit tensor, or Philox N(0, 1) from (seed, pixel index)), the rest 0."""
    cz = tl.arange(0, BLOCK_CZ)
    ptrs = cond_ptr + b[:, None] * s_cb + cz[None, :] * s_cc + hy[:, None] * s_ch + hx[:, None] * s_cw
    tile = tl.load(ptrs, mask=pmask[:, None] & (cz[None, :] < Cc), other=0.0).to(tl.float32)
    if HAS_NOISE:
        z = tl.load(noise_ptr + b * s_nb + hy * s_nh + hx * s_nw, mask=pmask, other=0.0).to(tl.float32)
    else:
        z = philox_noise(seed_ptr, b, hy, hx, H, W)
        z = tl.where(pmask, z, 0.0)
    return tl.where(cz[None, :] == Cc, z[:, None], tile)


@triton.jit
def philox_noise(seed_ptr, b, hy, hx, H, W):
    """N(0, 1) draws for high-res pixels, a pure function of (seed, pixel index (b * H + hy) * W + hx)."""
    seed = tl.load(seed_ptr)
    return tl.randn(seed, ((b * H + hy) * W + hx).to(tl.uint32))
