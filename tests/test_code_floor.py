"""bench/code_floor.py: a generator that ignores its codes cannot be fitted; a reachable target is approached."""

import importlib.util
import os

import pytest
import torch

from udm_fast import UDM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("code_floor", os.path.join(ROOT, "bench", "code_floor.py"))
code_floor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(code_floor)


def _model(**overrides):
    torch.manual_seed(0)
    model = UDM(filters=8, encoder_dim=16, global_dim=16, queue_size=8, **overrides).eval()
    return model.update_entropy_tables(force=True)


def _images(seed):
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_codes_the_generator_ignores_stay_at_the_identity():
    model = _model(residual_output=True)
    with torch.no_grad():
        model.generator.net.conv_last.conv2d.weight.zero_()  # ŷ = x whatever the code
    x, y = _images(1), _images(2)
    r = code_floor.fit_codes(model, x, y, "both", steps=5, lr=0.05, l1=1.0)
    assert r["encoded"] == pytest.approx(r["identity"], rel=1e-5)
    assert r["fitted"] == pytest.approx(r["identity"], rel=1e-5)
    assert r["local bits encoded"] > 0 and r["local bits fitted"] > 0


def test_a_transfer_of_another_code_is_approached():
    model = _model()
    x = _images(1)
    codes = torch.Generator().manual_seed(4)
    e_g, e_l = torch.randn(2, 16, generator=codes) * 4, torch.randn(2, 4, 16, 16, generator=codes) * 4
    with torch.no_grad():
        e_g, e_l = model.global_compressor(e_g)[0], model.local_compressor(e_l)[0]
        target = model.synthesize(x, e_g, e_l, noise=torch.Generator().manual_seed(0))
    r = code_floor.fit_codes(model, x, target.clamp(0, 1), "both", steps=40, lr=0.1, l1=20.0)
    assert r["encoded"] > 0.05 and r["fitted"] < 0.5 * r["encoded"]


def test_arguments_are_checked(tmp_path):
    with pytest.raises(SystemExit, match="--steps must be"):
        code_floor.main(["--clean", str(tmp_path), "--steps", "0"])
    with pytest.raises(ValueError, match="codes must be one of"):
        code_floor.fit_codes(_model(), _images(1), _images(2), "all", steps=1, lr=0.1, l1=0.0)


def _global_target(model, x, e_g):
    e_l = torch.zeros(x.shape[0], 4, 16, 16)
    with torch.no_grad():
        e_g, e_l = model.global_compressor(e_g)[0], model.local_compressor(e_l)[0]
        return model.synthesize(x, e_g, e_l, noise=torch.Generator().manual_seed(0)).clamp(0, 1)


def test_a_shared_global_code_fits_one_degradation_but_not_two():
    model = _model()
    x = _images(1)
    codes = torch.randn(2, 16, generator=torch.Generator().manual_seed(5)) * 4
    one = _global_target(model, x, codes[:1].expand(2, -1))
    r = code_floor.fit_codes(model, x, one, "global", steps=40, lr=0.1, l1=20.0, shared=True)
    assert r["encoded"] > 0.05 and r["fitted"] < 0.5 * r["encoded"]
    two = _global_target(model, x, codes)  # each photo its own degradation: one code cannot fit both
    shared = code_floor.fit_codes(model, x, two, "global", steps=40, lr=0.1, l1=20.0, shared=True)
    separate = code_floor.fit_codes(model, x, two, "global", steps=40, lr=0.1, l1=20.0)
    assert separate["fitted"] < 0.8 * shared["fitted"]
    with pytest.raises(ValueError, match="a shared code is a global one"):
        code_floor.fit_codes(model, x, one, "both", steps=1, lr=0.1, l1=0.0, shared=True)
    with pytest.raises(SystemExit, match="--shared fits one global code"):
        code_floor.main(["--clean", "unused", "--shared", "--codes", "local"])
