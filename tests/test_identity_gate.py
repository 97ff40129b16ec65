"""UDMConfig.identity_gate: ŷ = x + g(e_g) (generator output - x) on every synthesis path, a closed gate is the
identity, the gate learns, old files and fine-tunes from ungated weights load."""

import pytest
import torch
from tiny_training import tiny as tiny_config

from udm_fast import UDM
from udm_fast.models.generator import IdentityGate
from udm_fast.train.trainer import Trainer

SIZES = dict(filters=8, encoder_dim=32, global_dim=16, queue_size=12, head_layers=1, tail_layers=1)


def _model(gate: bool) -> UDM:
    torch.manual_seed(0)
    model = UDM(identity_gate=gate, **SIZES).eval()
    return model.update_entropy_tables(force=True)


def _codes(model: UDM):
    """The codes of a random y, with e_g replaced by distinct random codes (an untrained encoder's are alike)."""
    with torch.no_grad():
        _, e_l = model.encode(torch.rand(2, 3, 30, 22, generator=torch.Generator().manual_seed(1)))
    return 3 * torch.randn(2, model.config.global_dim, generator=torch.Generator().manual_seed(8)), e_l


def _synthesize(model: UDM, x: torch.Tensor, tile: bool, codes=None) -> torch.Tensor:
    e_g, e_l = codes or _codes(model)
    noise = [
        torch.randn(s, generator=torch.Generator().manual_seed(i))
        for i, s in enumerate(model.noise_shapes(x.shape[0], *x.shape[-2:]))
    ]
    if tile:
        model.tile_size, model.generator_halo = 16, 8
    try:
        with torch.no_grad():
            return model.synthesize(x, e_g, e_l, noise).double()
    finally:
        model.tile_size, model.generator_halo = 512, 64


def _set_gate(model: UDM, bias: float, weight_scale: float = 0.0) -> None:
    with torch.no_grad():
        last = model.generator.gate.mlp[2]
        last.bias.fill_(bias)
        last.weight.copy_(weight_scale * torch.randn(last.weight.shape, generator=torch.Generator().manual_seed(5)))


def test_gate_starts_open_and_is_off_by_default():
    assert _model(False).generator.gate is None
    assert not any(k.startswith("generator.gate.") for k in _model(False).state_dict())
    gate = IdentityGate(16)
    g = gate(torch.randn(3, 16))
    assert g.shape == (3, 1, 1, 1)
    torch.testing.assert_close(g, torch.full_like(g, 1 / (1 + torch.exp(torch.tensor(-4.0)).item())))


@pytest.mark.parametrize("size", [(48, 72), (45, 67)])  # the second is padded inside
@pytest.mark.parametrize("tile", [False, True])
def test_output_blends_x_and_the_ungated_generators(size, tile):
    plain, gated = _model(False), _model(True)
    gated.load_state_dict({**gated.state_dict(), **plain.state_dict()})  # same weights but the gate's
    _set_gate(gated, 0.3, weight_scale=0.5)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(2))
    codes = _codes(plain)
    with torch.no_grad():  # the gate's value computed by hand, in float64, from its weights
        mlp = gated.generator.gate.mlp.double()
        g = torch.sigmoid(mlp(codes[0].double()))[:, :, None, None]
        gated.generator.gate.float()
    assert float(g.max() - g.min()) > 0.01  # a per-image gate
    expected = x.double() + g * (_synthesize(plain, x, tile, codes) - x.double())
    torch.testing.assert_close(_synthesize(gated, x, tile, codes), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tile", [False, True])
def test_closed_gate_is_the_identity_transfer(tile):
    model = _model(True)
    _set_gate(model, -40.0)
    x = torch.rand(2, 3, 45, 67, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_synthesize(model, x, tile), x.double(), rtol=0, atol=1e-6)


def test_gate_gets_gradients_and_matches_autograd_in_float64():
    model = _model(True).double().train()
    _set_gate(model, 0.5, weight_scale=0.3)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    noise = [torch.zeros(s, dtype=torch.float64) for s in model.noise_shapes(2, 16, 16)]
    e_g, e_l = model.encode(y)
    model.synthesize(x, e_g, e_l, noise).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.gate.parameters())

    e_g = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: model.generator.gate(e), (e_g,))


def test_saved_files_keep_the_gate_and_old_files_load(tmp_path):
    model = _model(True)
    _set_gate(model, -1.0, weight_scale=0.2)
    model.save(tmp_path / "m.pt")
    loaded = UDM.load(tmp_path / "m.pt")
    assert loaded.config.identity_gate and loaded.weights_hash() == model.weights_hash()
    old = _model(False)
    old.save(tmp_path / "old.pt")
    payload = torch.load(tmp_path / "old.pt", weights_only=False)
    del payload["config"]["identity_gate"]  # a file written before the option existed
    torch.save(payload, tmp_path / "old.pt")
    assert UDM.load(tmp_path / "old.pt").config.identity_gate is False


def test_fine_tune_from_ungated_weights_starts_with_an_open_gate_at_its_own_rate(tmp_path):
    source = Trainer(tiny_config(tmp_path / "source", seed=7)).model
    source.save(tmp_path / "start.pt")
    overrides = {
        "model.identity_gate": True,
        "optim.lr_identity_gate": 0.02,
        "run.init_weights": str(tmp_path / "start.pt"),
    }
    trainer = Trainer(tiny_config(tmp_path / "run", **overrides))
    started = trainer.model.state_dict()
    assert all(torch.equal(started[k], v) for k, v in source.state_dict().items())
    gate_ids = {id(p) for p in trainer.model.generator.gate.parameters()}
    groups = {g["name"]: g for g in trainer.optimizer_g.param_groups}
    assert {id(p) for p in groups["identity_gate"]["params"]} == gate_ids and groups["identity_gate"]["lr"] == 0.02
    assert not any(id(p) in gate_ids for p in groups["generator"]["params"])


def test_gate_clean_is_the_cross_entropy_of_the_gate_against_the_plans_ops(tmp_path):
    overrides = {"model.identity_gate": True, "loss.weights.gate_clean": 1.0}
    trainer = Trainer(tiny_config(tmp_path / "run", **overrides))
    x, y, y_key, noise_free, op_free = trainer._to_device(next(iter(trainer._loader())))
    assert op_free is not None and op_free.dtype == torch.bool
    # a fresh gate is sigmoid(OPEN_BIAS) for every code: -log(1 - g) on op-free pairs, -log(g) on the others
    open_gate = torch.sigmoid(torch.tensor(IdentityGate.OPEN_BIAS, dtype=torch.float64))
    for mask in (torch.ones_like(op_free), torch.zeros_like(op_free), torch.arange(len(op_free)) % 2 == 0):
        term = trainer.generator_terms(x, y, y_key, noise_free, mask)[0]["gate_clean"]
        per_pair = torch.where(mask.double() > 0, -torch.log1p(-open_gate), -torch.log(open_gate))
        torch.testing.assert_close(term.double(), per_pair.mean(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="gate_clean needs to know"):
        trainer.generator_terms(x, y, y_key, noise_free, None)


def test_gate_clean_closes_the_gate_on_op_free_pairs(tmp_path):
    overrides = {
        "model.identity_gate": True,
        "loss.weights.gate_clean": 1.0,
        "optim.lr_identity_gate": 0.1,
    }
    trainer = Trainer(tiny_config(tmp_path / "run", **overrides))
    x, y, y_key, noise_free, _ = trainer._to_device(next(iter(trainer._loader())))
    clean = torch.ones(x.shape[0], dtype=torch.bool)
    first = trainer.train_step(x, y, y_key, noise_free, clean)[0]["gate_clean"].item()
    for _ in range(5):
        last = trainer.train_step(x, y, y_key, noise_free, clean)[0]["gate_clean"].item()
    assert last < 0.5 * first


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss.weights.gate_clean": 1.0},
        {"loss.weights.gate_clean": 1.0, "model.identity_gate": True, "data.kind": "csv", "data.csv": "pairs.csv"},
    ],
)
def test_gate_clean_needs_a_gate_and_synthesised_pairs(overrides):
    from tiny_training import TINY

    from udm_fast.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="gate_clean needs model.identity_gate"):
        load_config(TINY, overrides)


@pytest.mark.parametrize("from_plan", [False, True])
def test_gate_from_plan_keeps_the_reconstruction_losses_off_the_gate(tmp_path, from_plan):
    overrides = {
        "model.identity_gate": True,
        "loss.weights.gate_clean": 1.0,
        "loss.weights.lowpass_l1": 1.0,
        "loss.gate_from_plan": from_plan,
    }
    trainer = Trainer(tiny_config(tmp_path / "run", **overrides))
    batch = trainer._to_device(next(iter(trainer._loader())))
    terms = trainer.generator_terms(*batch)[0]
    gate = list(trainer.model.generator.gate.parameters())
    for name, expect_grad in (("lowpass_l1", not from_plan), ("gate_clean", True)):
        grads = torch.autograd.grad(terms[name], gate, retain_graph=True, allow_unused=True)
        reached = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert reached == expect_grad, name


def test_gate_from_plan_needs_gate_clean():
    from tiny_training import TINY

    from udm_fast.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="gate_from_plan trains the identity gate"):
        load_config(TINY, {"model.identity_gate": True, "loss.gate_from_plan": True})
