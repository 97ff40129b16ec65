"""The accelerated ops behind IDA and SFT: backend choice (``backend``), one dispatch table per op
(``dispatch``), the backends (``reference``, ``ida_cuda``, ``ida_triton`` / ``sft_triton``), their
shared operand checks (``operands``) and the loaders of the compiled extension (``extension``) and of
the Triton kernels (``triton_loader``).

Importing this package loads ``udm_fast._C`` (which defines the ``torch.ops.udm_fast`` ops) and, when
it loaded, registers their fake kernels and autograd (``ida_cuda``); without it the ``cuda`` backend
raises saying why.
"""

from . import extension

AVAILABLE = extension.load() is not None

if AVAILABLE:
    from . import ida_cuda  # noqa: F401  (registers fake + autograd)
