"""The model shipped in the package: its files agree with each other and with the README, and it transfers
degradations to a photo it was not trained on better than the two baselines."""

import json
import os
import re

import pytest
import torch

from udm_fast.eval.transfer import METHODS, transfer_table
from udm_fast.models import pretrained
from udm_fast.synthesis import degrade
from udm_fast.train.config import TrainingConfig
from udm_fast.utils.io import load_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL = pretrained.ASSETS / "default_model_eval.json"
README_ROWS = {
    "spectrum distance": "spectrum_db",
    "abs. noise σ error": "noise_error_255",
    "abs. blur σ error": "blur_error_px",
    "low-pass PSNR": "psnr_lowpass",
    "low-pass MS-SSIM": "ms_ssim_lowpass",
    "leakage of the other photo": "leakage",
}

pytestmark = pytest.mark.skipif(not pretrained.DEFAULT_WEIGHTS.is_file(), reason="no bundled weights in this tree")


@pytest.fixture(scope="module")
def bundled():
    return pretrained.default_model("cpu")


def test_weights_record_and_evaluation_describe_the_same_model(bundled):
    assert os.path.getsize(pretrained.DEFAULT_WEIGHTS) <= 25 * 1024 * 1024
    record = pretrained.default_model_metadata()
    digest = bundled.weights_hash()
    assert record["weights_hash"] == digest and re.fullmatch(r"[0-9a-f]{40}", record["commit"])
    config = TrainingConfig.from_dict(record["config"])  # the exact training config, still valid
    assert config.model.filters == bundled.config.filters and config.model.global_dim == bundled.config.global_dim
    assert record["training_log"]["steps"] == config.run.max_steps
    # the objective fell over the run (a late fine-tune's single terms can stay flat: the total is the check),
    # and the coding tables' auxiliary loss converged (it ended at ~1,400 before the quantiles had their own rate)
    first, last = record["training_log"]["first_tenth"], record["training_log"]["last_tenth"]
    assert last["loss"] - last["aux"] < first["loss"] - first["aux"]
    assert last["aux"] < 1.0
    with open(EVAL, encoding="utf-8") as f:
        evaluation = json.load(f)
    assert evaluation["weights_hash"] == digest
    # the model's tables are built: codes round-trip without a table update
    y = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    e_g, e_l = bundled.decompress_degradation(bundled.compress_degradation(y))
    expected = bundled.encode(y)
    assert torch.equal(e_g, expected[0]) and torch.equal(e_l, expected[1])


def test_readme_table_is_the_recorded_evaluation():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(EVAL, encoding="utf-8") as f:
        methods = json.load(f)["methods"]
    found = 0
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key = next((k for label, k in README_ROWS.items() if cells[0].startswith(label)), None)
        if key is None or len(cells) != 1 + len(METHODS):
            continue
        found += 1
        assert [float(v) for v in cells[1:]] == [pytest.approx(methods[m][key], abs=5e-5) for m in METHODS], key
    assert found == len(README_ROWS)


def test_it_transfers_to_a_photo_it_was_not_trained_on(bundled):
    coffee = next(p for p in pretrained.sample_paths() if p.stem == "coffee")  # held out from training
    x = load_image(coffee)
    h, w = x.shape[-2:]
    contents = torch.cat([x[..., (h - 96) // 2 : (h - 96) // 2 + 96, s : s + 96] for s in (0, w - 96)])
    g = torch.Generator().manual_seed(0)
    degradations = (
        lambda c: degrade.jpeg(degrade.gaussian_noise(c, 12 / 255, generator=g), 80),
        lambda c: degrade.jpeg(degrade.gaussian_blur(c, 2.0), 60),
        lambda c: degrade.gaussian_noise(degrade.gaussian_blur(c, 1.0), 4 / 255, generator=g),
    )
    degraded = torch.stack([torch.cat([make(c[None]) for make in degradations]) for c in contents])
    table = transfer_table(bundled, contents, degraded)["methods"]
    for key in ("spectrum_db", "noise_error_255", "blur_error_px"):
        assert table["model"][key] < min(table["identity"][key], table["mismatched"][key]), (key, table)
