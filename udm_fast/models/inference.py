"""How ``UDM.synthesize`` computes in inference on the CPU: the precision policy.

``precision`` (``UDM.precision``, default from the environment variable UDM_FAST_PRECISION, else ``auto``;
CLI ``--precision``):
  ``auto``  bfloat16 autocast on a CPU with native bfloat16 arithmetic (AVX-512 BF16 or AMX), else float32 -
            the fastest path measured by bench/test_bench_inference.py (bench/RESULTS.md);
  ``bf16``  bfloat16 autocast on any CPU (emulated, slower, where the CPU lacks native bfloat16);
  ``fp32``  the model's own dtype, eager: bit-for-bit the computation of the weights.
The policy applies to float32 models in eval mode on CPU tensors, outside a caller's own autocast; GPUs,
training, and half/double models always compute as called. Channels-last layout is not part of it (measured
no faster on top of bfloat16, bench/RESULTS.md); neither is torch.compile, whose compile time for the
generator (minutes on a 2-core CPU) has not been measured to pay back (``bf16_compile`` in the benchmark,
UDM_BENCH_COMPILE=1, measures both).

Tolerance of bfloat16 against float32 (outputs in [0, 1], the bundled model and the default-size model on
random images): mean |difference| <= ``BF16_TOLERANCE["mean_abs"]`` and max <= ``BF16_TOLERANCE["max_abs"]``
(about 1/255 and 8/255), tested in tests/test_inference_policy.py.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional

import torch

from ..ops.operands import autocast_dtype

PRECISIONS = ("auto", "fp32", "bf16")
BF16_TOLERANCE = {"mean_abs": 4e-3, "max_abs": 3e-2}


def check_precision(precision: str) -> str:
    """``precision`` if it is one of PRECISIONS, else a ValueError naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 / AMX), where autocast pays."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def synthesis_autocast_dtype(precision: str, device: torch.device, model_dtype: torch.dtype,
                             training: bool) -> Optional[torch.dtype]:
    """The autocast dtype ``synthesize`` runs under for these settings, or None (as called)."""
    check_precision(precision)
    if (precision == "fp32" or device.type != "cpu" or training or model_dtype != torch.float32
            or autocast_dtype("cpu") is not None):
        return None
    if precision == "bf16" or cpu_has_native_bf16():
        return torch.bfloat16
    return None


@contextlib.contextmanager
def synthesis_precision(precision: str, x: torch.Tensor, model_dtype: torch.dtype,
                        training: bool) -> Iterator[Optional[torch.dtype]]:
    """Runs the block under the policy's autocast (if any); yields that dtype or None."""
    dtype = synthesis_autocast_dtype(precision, x.device, model_dtype, training)
    if dtype is None:
        yield None
        return
    with torch.autocast("cpu", dtype=dtype):
        yield dtype


def add_precision_argument(parser) -> None:
    """The ``--precision`` option of the commands that synthesize (transfer, demo, eval)."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="CPU inference precision: auto (bfloat16 where the CPU runs it natively, "
                             "else float32; default), fp32 (float32 eager) or bf16")
