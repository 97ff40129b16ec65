"""The extension build: CUDA kernels are compiled whenever the toolkit is there (even without a GPU)."""

import shutil

import pytest
import torch

import udm_fast
from udm_fast.ops import extension as _ext


def test_extension_loads_and_registers_ops():
    module = _ext.require()
    info = module.compiled_info()
    assert info["built_with_torch"] == torch.__version__
    for op in ("ida_forward", "ida_backward", "sft_forward"):
        assert hasattr(torch.ops.udm_fast, op), op


def test_cuda_kernels_compiled_when_toolkit_present():
    info = _ext.require().compiled_info()
    if "UDM_FAST_CUDA=0" in info["cuda_reason"]:
        pytest.skip("CUDA build disabled for this install (UDM_FAST_CUDA=0)")
    if torch.version.cuda is None or shutil.which("nvcc") is None:
        pytest.skip("no CUDA toolkit / CUDA build of torch here")
    assert info["cuda_compiled"], info["cuda_reason"]
    assert "CUDA" in udm_fast.build_info()["cuda"]["detail"]


def test_import_works_without_gpu():
    assert udm_fast.build_info()["reference"]["available"]
