"""UDMConfig.residual_output: the generator's output is added to x, so ŷ = x + (what the network makes) on every
synthesis path (whole, padded, tiled), and a zero last layer is the identity transfer."""

import pytest
import torch

from udm_fast import UDM
from udm_fast.models.udm import infer_official_config

SIZES = dict(filters=8, encoder_dim=32, global_dim=16, queue_size=12, head_layers=1, tail_layers=1)


def _pair(residual: bool) -> UDM:
    torch.manual_seed(0)
    model = UDM(residual_output=residual, **SIZES).eval()
    return model.update_entropy_tables(force=True)


def _synthesize(model: UDM, x: torch.Tensor, tile: bool) -> torch.Tensor:
    with torch.no_grad():
        e_g, e_l = model.encode(torch.rand(1, 3, 30, 22, generator=torch.Generator().manual_seed(1)))
        noise = [
            torch.randn(s, generator=torch.Generator().manual_seed(i))
            for i, s in enumerate(model.noise_shapes(1, *x.shape[-2:]))
        ]
        if tile:
            model.tile_size, model.generator_halo = 16, 8
        try:
            return model.synthesize(x, e_g, e_l, noise).double()
        finally:
            model.tile_size, model.generator_halo = 512, 64


@pytest.mark.parametrize("size", [(48, 72), (45, 67)])  # the second is padded inside
@pytest.mark.parametrize("tile", [False, True])
def test_output_is_x_plus_the_plain_generators(size, tile):
    plain, residual = _pair(False), _pair(True)
    assert plain.weights_hash() == residual.weights_hash()  # same weights, one skip apart
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2))
    # ŷ = (out + 1) / 2 in [0, 1]; the skip adds 2x - 1 to out, i.e. x - 1/2 to ŷ
    expected = _synthesize(plain, x, tile) + x.double() - 0.5
    torch.testing.assert_close(_synthesize(residual, x, tile), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tile", [False, True])
def test_zero_last_layer_is_the_identity_transfer(tile):
    model = _pair(True)
    with torch.no_grad():
        model.generator.net.conv_last.conv2d.weight.zero_()
    x = torch.rand(1, 3, 45, 67, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_synthesize(model, x, tile), x.double(), rtol=0, atol=1e-6)


def test_saved_and_official_configs(tmp_path):
    model = _pair(True)
    model.save(tmp_path / "m.pt")
    assert UDM.load(tmp_path / "m.pt").config.residual_output
    official = UDM(**SIZES).official_state_dict()["model"]
    assert infer_official_config(official).residual_output is False  # the reference has no skip
