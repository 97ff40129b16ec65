"""Python side of the ``torch.ops.udm_fast`` ops: fake (meta) kernels and autograd.

Importing this package loads ``udm_fast._C`` (which defines the ops); when the
extension is missing, the ops are simply unavailable and the reference backend
is used.
"""
import torch

from .. import _ext

AVAILABLE = _ext.load() is not None
# an extension built before the fused IDA / SFT ops existed still loads (those ops are then missing)
FUSED_IDA = AVAILABLE and hasattr(torch.ops.udm_fast, "ida_forward")

if AVAILABLE:
    from . import sft_combine  # noqa: F401  (registers fake + autograd)
if FUSED_IDA:
    from . import ida_cuda  # noqa: F401  (registers fake + autograd)
