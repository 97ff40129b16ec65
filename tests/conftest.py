import importlib.util
import os

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
# exact-computation tests compare float32 math; the bf16 inference path has its own tests
os.environ.setdefault("UDM_FAST_PRECISION", "fp32")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Training runs set torch's thread count (run.threads); each test starts from the suite's."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def weight_packages():
    """Skips unless the packages that ship the DISTS / LPIPS weight files (test extras) are installed."""
    for module, package in (("DISTS_pytorch", "dists-pytorch"), ("lpips", "lpips")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {package} (pip install -e '.[test]')")
