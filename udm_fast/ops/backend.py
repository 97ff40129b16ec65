"""Backend selection for the accelerated layers (IDA, SFT).

Backends:
  ``reference``  composition of torch ops: runs everywhere, the ground truth;
  ``cuda``       CUDA C++ kernels of ``udm_fast._C`` (built when nvcc was found);
  ``triton``     Triton kernels (GPU; on CPU only under ``TRITON_INTERPRET=1``).

The backend is chosen per call from, in order: a module's ``backend=`` argument,
``set_backend(name)``, the environment variable ``UDM_FAST_BACKEND``, and
otherwise the fastest one available for the input's device (``auto``).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

from . import extension as _ext

BACKENDS = ("reference", "cuda", "triton")
_CHOICES = BACKENDS + ("auto",)
_global_backend: str | None = None
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def check_name(name: str, where: str) -> str:
    name = str(name).strip().lower()
    if name not in _CHOICES:
        raise ValueError(f"{where}: unknown backend {name!r}; choose one of {', '.join(_CHOICES)}")
    return name


def set_backend(name: str | None) -> None:
    """Sets the process-wide backend (``None`` or ``"auto"`` restores automatic choice)."""
    global _global_backend
    _global_backend = None if name is None else check_name(name, "set_backend")


def get_backend() -> str:
    """The requested backend name (``auto`` when nothing was requested)."""
    if _global_backend is not None:
        return _global_backend
    env = os.environ.get("UDM_FAST_BACKEND")
    if env:
        return check_name(env, "UDM_FAST_BACKEND")
    return "auto"


def _triton_status() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton is not installed ({exc})"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, f"triton {triton.__version__} (interpreter, TRITON_INTERPRET=1)"
    if not torch.cuda.is_available():
        return False, f"triton {triton.__version__} present but no CUDA device (set TRITON_INTERPRET=1 to run on CPU)"
    return True, f"triton {triton.__version__}"


def build_info() -> dict:
    """Which backends can run here, and why not. Returns {name: {"available": bool, "detail": str}}."""
    compiled = _ext.load()
    info = {
        "cpu": {
            "available": compiled is not None,
            "detail": "udm_fast._C loaded (on CPU tensors the cuda backend's tile code is a test vehicle "
            "for the CUDA kernels, slower than reference; auto never selects it)"
            if compiled is not None
            else _ext.error(),
        }
    }
    if compiled is None:
        info["cuda"] = {"available": False, "detail": _ext.error()}
    else:
        built = compiled.compiled_info()
        if not built["cuda_compiled"]:
            info["cuda"] = {"available": False, "detail": f"CUDA kernels not compiled: {built['cuda_reason']}"}
        elif not torch.cuda.is_available():
            info["cuda"] = {"available": False, "detail": "CUDA kernels compiled but no CUDA device is visible"}
        else:
            info["cuda"] = {"available": True, "detail": f"CUDA kernels compiled ({built['cuda_reason']})"}
        if built["built_with_torch"] != torch.__version__:
            info["cpu"]["detail"] += f" (built with torch {built['built_with_torch']}, running {torch.__version__})"
    ok, detail = _triton_status()
    info["triton"] = {"available": ok, "detail": detail}
    info["reference"] = {"available": True, "detail": f"torch {torch.__version__}, python {sys.version.split()[0]}"}
    return info


def resolve(requested: str | None, device: torch.device) -> str:
    """The backend to run on ``device``: ``requested`` (a module's own choice) or the global one."""
    name = check_name(requested, "backend") if requested is not None else get_backend()
    if name == "auto":
        # fastest available: the Triton kernels on CUDA devices (imported on first launch)
        if device.type == "cuda" and _TRITON_INSTALLED:
            return "triton"
        return "reference"
    return name
