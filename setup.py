"""Build script for udm_fast.

The extension ``udm_fast._C`` always contains the C++ sources of ``csrc/`` (op
registration, CPU kernels, the range coder).  CUDA sources from ``kernels/`` are
added when torch was built with CUDA and ``nvcc`` is found.

Environment variables:
  UDM_FAST_CUDA=0       never build the CUDA kernels
  UDM_FAST_CUDA=1       require them (fail if torch has no CUDA or nvcc is missing)
  TORCH_CUDA_ARCH_LIST  CUDA architectures (default "8.0;9.0")
  MAX_JOBS              parallel compile jobs (ninja)
"""

import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _version():
    """``__version__`` of udm_fast/version.py, read as text (importing the package needs the extension)."""
    with open(os.path.join(ROOT, "udm_fast", "version.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _toolkit_from_nvcc():
    """Folder of the CUDA toolkit behind the ``nvcc`` on PATH.

    ``nvcc`` may be a wrapper script (``exec /usr/local/cuda-X/bin/nvcc "$@"``):
    torch's own detection then points CUDA_HOME at the wrapper's folder and fails
    to link cudart, so follow the wrapper to the real binary.
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        with open(nvcc, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if head.startswith(b"#!"):
        match = re.search(rb"exec\s+\"?([^\s\"]+/bin/nvcc)", head)
        if match:
            nvcc = os.path.realpath(match.group(1).decode())
    home = os.path.dirname(os.path.dirname(nvcc))
    return home if os.path.isfile(os.path.join(home, "bin", "nvcc")) else None


def _cuda_mode():
    value = os.environ.get("UDM_FAST_CUDA", "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        sys.exit(f"UDM_FAST_CUDA must be 0, 1 or auto, got {value!r}")
    return value


CUDA_MODE = _cuda_mode()
if CUDA_MODE != "0" and not os.environ.get("CUDA_HOME"):
    _home = _toolkit_from_nvcc()
    if _home:
        os.environ["CUDA_HOME"] = _home
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402  (CUDA_HOME must be set before cpp_extension is imported)
from torch.utils import cpp_extension  # noqa: E402


def _want_cuda():
    reasons = []
    if torch.version.cuda is None:
        reasons.append("torch was built without CUDA")
    home = cpp_extension.CUDA_HOME
    if home is None or not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        reasons.append("nvcc not found (set CUDA_HOME to the toolkit folder)")
    if CUDA_MODE == "0":
        return False, "disabled by UDM_FAST_CUDA=0"
    if reasons:
        if CUDA_MODE == "1":
            sys.exit("UDM_FAST_CUDA=1 but CUDA kernels cannot be built: " + "; ".join(reasons))
        return False, "; ".join(reasons)
    return (
        True,
        f"CUDA {torch.version.cuda}, toolkit {cpp_extension.CUDA_HOME}, arch {os.environ['TORCH_CUDA_ARCH_LIST']}",
    )


WITH_CUDA, CUDA_REASON = _want_cuda()
print(f"[udm_fast] CUDA kernels: {'yes' if WITH_CUDA else 'no'} ({CUDA_REASON})")

cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
cxx_flags = ["-O3", "-fvisibility=hidden"]  # torch picks the C++ standard it needs
define_macros = [
    ("UDM_FAST_CUDA_REASON", '"' + CUDA_REASON.replace('"', "'") + '"'),
    ("UDM_FAST_BUILT_WITH_TORCH", '"' + torch.__version__ + '"'),
]


def _pip_cuda_include_dirs():
    """Header folders of the pip CUDA wheels (nvidia/*/include): a bare toolkit may lack cuSPARSE etc."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted({d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "*", "include"))})


if WITH_CUDA:
    cu_sources = sorted(glob.glob("kernels/**/*.cu", recursive=True))
    define_macros.append(("UDM_FAST_WITH_CUDA", "1"))
    ext = cpp_extension.CUDAExtension(
        "udm_fast._C",
        cpp_sources + cu_sources,
        include_dirs=[os.path.join(ROOT, "csrc")] + _pip_cuda_include_dirs(),
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
    )
else:
    ext = cpp_extension.CppExtension(
        "udm_fast._C",
        cpp_sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
    )

setup(
    name="udm_fast",
    version=_version(),
    description="Fast universal image degradation model (content-degradation disentanglement)",
    packages=find_packages(include=["udm_fast", "udm_fast.*"]) + ["udm_fast.triton_kernels"],
    package_dir={"udm_fast.triton_kernels": "kernels/triton"},
    package_data={"udm_fast": ["assets/*", "assets/**/*"]},
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy", "pillow", "pyyaml", "tqdm"],
    extras_require={
        # weight files for DISTS (alpha/beta) and LPIPS (linear layers); VGG16 comes from torchvision's file
        "weights": ["dists-pytorch", "lpips"],
        "lmdb": ["lmdb"],
        "tensorboard": ["tensorboard"],
        "plot": ["matplotlib"],  # udm-fast restore --curve
        "diffusers": ["diffusers"],  # udm_fast.restore.DiffusersDenoiser (DPS with a diffusers UNet)
        "test": [
            "pytest",
            "pytest-benchmark",
            "hypothesis",
            "scipy",
            "scikit-image",
            "pytorch-msssim",
            "compressai==1.2.8",
            "torchvision",
            "dists-pytorch",
            "lpips",
            "lmdb",
            "matplotlib",
            "ruff==0.17.6",  # make lint
            "clang-format==23.1.5",
        ],
    },
    entry_points={"console_scripts": ["udm-fast=udm_fast.cli:main"]},
)
