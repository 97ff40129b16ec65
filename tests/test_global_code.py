"""UDM.global_code: e_g rounded (compressai's inference, the .udm file's code) or continuous (the latent the
rounding would snap, passed to the tail as is) in eval mode; training mode and e_l are unaffected."""

import copy

import pytest
import torch

from udm_fast import UDM
from udm_fast.models.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = UDM(filters=16, head_layers=2, tail_layers=2).eval()
    with torch.no_grad():  # spread the latent over several quantisation steps, so rounding changes it
        for p in m.global_compressor.head.parameters():
            p.mul_(8.0)
    return m.update_entropy_tables(force=True)


def _y(seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(seed))


def _codes(model: UDM, mode: str, y: torch.Tensor):
    model.global_code = mode
    try:
        with torch.no_grad():
            return model.encode(y)
    finally:
        model.global_code = "rounded"


def test_continuous_code_is_the_latent_the_rounding_snaps(model):
    y = _y()
    (g_round, l_round), (g_cont, l_cont) = _codes(model, "rounded", y), _codes(model, "continuous", y)
    compressor = model.global_compressor
    with torch.no_grad():
        raw = model.encode(y, quantize=False)[0]
        latent = compressor.head(raw)
        snapped = compressor.model(latent)[0]  # eval mode: round(latent - median) + median
        # independent of the module's tail call: the residual MLP blocks written out
        v = latent.double()
        for block in compressor.tail.layers:
            first, second = block.block[0], block.block[2]
            v = v + torch.relu(v @ first.weight.double().T + first.bias.double()) @ second.weight.double().T
            v = v + second.bias.double()
    assert torch.equal(l_round, l_cont)  # e_l is rounded either way
    assert (snapped - latent).abs().max() <= 0.5 + 1e-6 and not torch.equal(snapped, latent)
    torch.testing.assert_close(g_cont.double(), v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_round, compressor.tail(snapped))
    assert not torch.allclose(g_round, g_cont)


def test_training_mode_is_the_same_noisy_code_for_both_settings(model):
    model = copy.deepcopy(model)  # training mode updates the BatchNorm statistics
    y = _y(2)
    codes = []
    for mode in ("rounded", "continuous"):
        model.train()
        model.global_code = mode
        torch.manual_seed(5)
        with torch.no_grad():
            codes.append(model.global_compressor(model.encode(y, quantize=False)[0])[0])
            torch.manual_seed(5)
            e_g = model.encode(y)[0]
        model.eval()
        model.global_code = "rounded"
        codes.append(e_g)
    assert torch.equal(codes[0], codes[1]) and torch.equal(codes[2], codes[3]) and torch.equal(codes[1], codes[3])


def test_a_udm_file_holds_the_rounded_code(model):
    y = _y(3)
    model.global_code = "continuous"
    try:
        with torch.no_grad():
            e_g, e_l = model.decompress_degradation(model.compress_degradation(y))
    finally:
        model.global_code = "rounded"
    g_round, l_round = _codes(model, "rounded", y)
    assert torch.equal(e_g, g_round) and torch.equal(e_l, l_round)


def test_setting_is_saved_and_checked(model, tmp_path):
    model.save(tmp_path / "rounded.pt")
    assert "global_code" not in torch.load(tmp_path / "rounded.pt", weights_only=False)
    assert UDM.load(tmp_path / "rounded.pt").global_code == "rounded"
    model.global_code = "continuous"
    try:
        model.save(tmp_path / "continuous.pt")
    finally:
        model.global_code = "rounded"
    loaded = UDM.load(tmp_path / "continuous.pt")
    assert loaded.global_code == "continuous" and loaded.weights_hash() == model.weights_hash()
    payload = torch.load(tmp_path / "continuous.pt", weights_only=False)
    payload["global_code"] = "noisy"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="global_code must be one of"):
        UDM.load(tmp_path / "bad.pt")
    loaded.global_code = "rounding"
    with pytest.raises(ValueError, match="global_code must be one of .*'rounding'"):
        loaded.encode(_y())
