"""How ``UDM.synthesize`` computes in inference on the CPU: the precision policy.

``precision`` (``UDM.precision``, default from the environment variable UDM_FAST_PRECISION, else ``auto``;
CLI ``--precision``):
  ``auto``  bfloat16 autocast on a CPU with native bfloat16 arithmetic (AVX-512 BF16 or AMX), else float32;
            the fastest path measured by bench/test_bench_inference.py (bench/RESULTS.md);
  ``bf16``  bfloat16 autocast on any CPU (emulated, slower, where the CPU lacks native bfloat16);
  ``fp32``  the model's own dtype and layout, eager: exactly the computation as called.
The policy applies to float32 models in eval mode without gradients (``torch.no_grad``) on CPU tensors, outside a
caller's own autocast; GPUs, training, calls that need gradients (restoration by inversion) and half/double
models always compute as called. ``auto`` and ``bf16`` also run the generator
channels-last (image and weights; the first such call moves the generator's weights, ``fp32`` moves them
back): measured faster in float32 and bfloat16 alike (bench/RESULTS.md). torch.compile is not part of the
policy: its compile time for the generator (minutes on a 2-core CPU) has not been measured to pay back
(``bf16_compile`` in the benchmark, UDM_BENCH_COMPILE=1, measures both).

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


def synthesis_autocast_dtype(
    precision: str, device: torch.device, model_dtype: torch.dtype, training: bool
) -> Optional[torch.dtype]:
    """The autocast dtype ``synthesize`` runs under for these settings, or None (as called)."""
    check_precision(precision)
    if (
        precision == "fp32"
        or device.type != "cpu"
        or training
        or model_dtype != torch.float32
        or autocast_dtype("cpu") is not None
    ):
        return None
    if precision == "bf16" or cpu_has_native_bf16():
        return torch.bfloat16
    return None


def uses_channels_last(precision: str, device: torch.device, model_dtype: torch.dtype, training: bool) -> bool:
    """Whether ``synthesize`` runs the generator channels-last (every precision but fp32 on the CPU)."""
    check_precision(precision)
    return precision != "fp32" and device.type == "cpu" and not training and model_dtype == torch.float32


def set_generator_layout(generator: torch.nn.Module, channels_last: bool) -> None:
    """Moves the generator's weights to channels-last (or back, undoing only what the policy did)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if getattr(generator, "_policy_layout", torch.contiguous_format) != layout:
        generator.to(memory_format=layout)
        generator._policy_layout = layout


@contextlib.contextmanager
def synthesis_precision(
    precision: str, x: torch.Tensor, generator: torch.nn.Module, model_dtype: torch.dtype, training: bool
) -> Iterator[tuple]:
    """Runs the block under the policy: yields (x in the layout to use, autocast dtype or None)."""
    if x.device.type == "cpu":
        channels_last = uses_channels_last(precision, x.device, model_dtype, training)
        set_generator_layout(generator, channels_last)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    dtype = synthesis_autocast_dtype(precision, x.device, model_dtype, training)
    if dtype is None:
        yield x, None
        return
    with torch.autocast("cpu", dtype=dtype):
        yield x, dtype
