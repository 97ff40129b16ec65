"""What worked before the package moved into subpackages keeps working: the documented names, the
old module paths (one alias mechanism, ``udm_fast.MOVED_MODULES``), pickles naming them, the bundled
model file and a ``.udm`` code written by the flat-layout code (tests/data/pre_layout_code.udm)."""

import importlib
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import udm_fast
from udm_fast.entropy import degradation_code
from udm_fast.models import pretrained
from udm_fast.models.udm import UDMConfig
from udm_fast.utils.io import load_image

ROOT = Path(__file__).resolve().parents[1]
PRE_LAYOUT_CODE = Path(__file__).resolve().parent / "data" / "pre_layout_code.udm"
DOCUMENTED = (
    "UDM",
    "IDA",
    "SFT",
    "SFTResBlock",
    "EntropyBottleneck",
    "CheckpointError",
    "default_model",
    "set_backend",
    "get_backend",
    "set_layer_backend",
    "build_info",
    "UDMConfig",
    "__version__",
)


@pytest.mark.parametrize("name", DOCUMENTED)
def test_documented_top_level_names(name):
    assert hasattr(udm_fast, name) and name in udm_fast.__all__


@pytest.mark.parametrize("old, new", sorted(udm_fast.MOVED_MODULES.items()))
def test_old_module_path_is_the_new_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    module = sys.modules[new]
    assert module.__name__ == new and module.__spec__.name == new  # the alias did not rename it
    parent, _, attr = old.rpartition(".")
    assert getattr(importlib.import_module(parent), attr) is module


def test_old_paths_in_a_fresh_interpreter():
    """``import udm_fast`` alone gives the old attributes (lazily) and ``from old import name`` works."""
    code = (
        "import udm_fast; y, params = udm_fast.degrade.degrade(__import__('torch').rand(1, 3, 64, 64), "
        "generator=3); from udm_fast.io import load_image; from udm_fast.model import UDM; "
        "from udm_fast.train.metrics import psnr; assert UDM is udm_fast.UDM; print(tuple(y.shape), len(params))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 3, 64, 64) 1"  # one image, one parameter record


def test_unknown_attribute_still_raises():
    with pytest.raises(AttributeError, match="no attribute 'modle'"):
        udm_fast.modle  # noqa: B018


def test_pickle_naming_an_old_module_loads():
    data = pickle.dumps(UDMConfig(filters=16), protocol=0)
    old = data.replace(b"udm_fast.models.udm\n", b"udm_fast.model\n")
    assert old != data
    assert pickle.loads(old) == UDMConfig(filters=16)


@pytest.mark.skipif(not pretrained.DEFAULT_WEIGHTS.is_file(), reason="no bundled weights")
def test_bundled_model_file_from_before_the_move_loads():
    payload = torch.load(pretrained.DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    model = udm_fast.UDM.load(pretrained.DEFAULT_WEIGHTS)
    state = model.state_dict()
    assert set(state) == set(payload["state_dict"])
    for key, value in payload["state_dict"].items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


@pytest.mark.skipif(not pretrained.DEFAULT_WEIGHTS.is_file(), reason="no bundled weights")
def test_code_written_before_the_move_decodes_and_is_reproduced():
    """The flat-layout code (commit 1b12a0d) compressed the 64x64 top-left crop of astronaut.jpg with the
    placeholder model (fixed seed: independent of the bundled weights); today's code parses it, decodes it,
    and writes the same bytes for the same crop."""
    old = PRE_LAYOUT_CODE.read_bytes()
    model = pretrained.placeholder_model()
    y = load_image(str(pretrained.SAMPLES / "astronaut.jpg"))[..., :64, :64].contiguous()
    assert degradation_code.compress(model, y) == old
    e_g, e_l = degradation_code.decompress(model, old)
    assert torch.isfinite(e_g).all() and torch.isfinite(e_l).all()
    assert degradation_code.parse(old)["height"] == 64


def test_version_is_written_once():
    assert udm_fast.__version__ == importlib.import_module("udm_fast.version").__version__
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert "version=_version()" in setup and not re.search(r'version="\d', setup)
