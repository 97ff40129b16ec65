"""Imports the Triton kernels (``udm_fast.triton_kernels``, the folder kernels/triton) on first use,
so that importing an op module needs neither triton nor a GPU."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

KERNEL_PACKAGE = "udm_fast.triton_kernels"


def ensure_kernel_package() -> None:
    """Makes ``udm_fast.triton_kernels`` importable. setup.py maps it to kernels/triton when the
    package is installed; a source checkout used in place (PYTHONPATH=<repo>, build_ext --inplace)
    has no such folder, so load it from kernels/triton directly."""
    if KERNEL_PACKAGE in sys.modules or importlib.util.find_spec(KERNEL_PACKAGE) is not None:
        return
    folder = Path(__file__).resolve().parents[2] / "kernels" / "triton"
    if not (folder / "__init__.py").is_file():
        raise ImportError(f"{KERNEL_PACKAGE} is not installed and {folder} does not exist")
    spec = importlib.util.spec_from_file_location(
        KERNEL_PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[KERNEL_PACKAGE] = module
    spec.loader.exec_module(module)


def kernels(name: str):
    """The Triton kernel module ``udm_fast.triton_kernels.<name>`` (imported on first use)."""
    ensure_kernel_package()
    return importlib.import_module(f"{KERNEL_PACKAGE}.{name}")
