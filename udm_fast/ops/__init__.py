"""Python side of the ``torch.ops.udm_fast`` ops: fake (meta) kernels and autograd.

Importing this package loads ``udm_fast._C`` (which defines the ops); when the
extension is missing, the ops are simply unavailable and the reference backend
is used.
"""
from .. import _ext

AVAILABLE = _ext.load() is not None

if AVAILABLE:
    from . import sft_combine  # noqa: F401  (registers fake + autograd)
