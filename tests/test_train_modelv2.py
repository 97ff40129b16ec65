"""Training options of the bundled model v2: augmentation (flips, 90-degree rotations, reductions), e_g from
y_key, the quantiles' own optimiser group and the cross-content leakage term."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_training import TINY
from tiny_training import tiny as tiny_config

from udm_fast.eval.leakage import leakage_loss
from udm_fast.losses import l1_loss, relative_spectrum_loss, spectrum_loss, transfer_loss
from udm_fast.models.checkpoint import CheckpointError
from udm_fast.models.udm import UDM
from udm_fast.synthesis.degrade import DegradeConfig
from udm_fast.train.batchnorm import encoder_batchnorms, freeze_encoder_batchnorms, recalibrate_encoders
from udm_fast.train.config import ConfigError, load_config
from udm_fast.train.data import FolderTriples, reduce_randomly
from udm_fast.train.trainer import Trainer


def tiny(out_dir, **overrides):
    """The tiny config without the critic (its terms are covered in test_train.py)."""
    return tiny_config(out_dir, **{"model.discriminator": False, "loss.weights.gan_generator": 0.0, **overrides})


def test_reduce_randomly_scales_within_the_range_and_keeps_the_minimum_side():
    image = np.zeros((300, 400, 3), np.uint8)
    rng = np.random.default_rng(0)
    assert reduce_randomly(image, rng, (0.5, 0.5), 100).shape == (150, 200, 3)
    assert reduce_randomly(image, rng, (0.5, 0.5), 200).shape == (200, 267, 3)  # clamped at the window
    assert reduce_randomly(image, rng, (1.0, 1.0), 100) is image
    sides = {reduce_randomly(image, rng, (0.4, 0.9), 64).shape[0] for _ in range(20)}
    assert len(sides) > 5 and min(sides) >= 120 and max(sides) <= 270


def test_flips_give_the_eight_dihedral_views_of_the_region(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    views = [np.rot90(image, k) for k in range(4)]
    views += [v[:, ::-1] for v in views]
    keys = [v.tobytes() for v in views]
    seen = set()
    for flips in (False, True):
        data = FolderTriples(str(tmp_path), crop_size=32, window=32, degrade_config=DegradeConfig(), flips=flips)
        for seed in range(64):
            x = data[(0, seed)]["x"].permute(1, 2, 0).numpy()
            if not flips:
                assert np.array_equal(x, image)
            else:
                seen.add(keys.index(np.ascontiguousarray(x).tobytes()))
    assert len(seen) == 8


def test_rescale_range_is_checked():
    with pytest.raises(ConfigError, match="rescale"):
        load_config(TINY, {"data.rescale": [0.5, 1.5]})
    with pytest.raises(ConfigError, match="cross_leakage"):
        load_config(TINY, {"loss.cross_leakage": -1.0})
    with pytest.raises(ConfigError, match="global_code_quantization"):
        load_config(TINY, {"loss.global_code_quantization": "round"})


@pytest.mark.parametrize("source", ["y", "y_key"])
def test_global_code_from_selects_the_crop_behind_e_g(tmp_path, source):
    trainer = Trainer(tiny(tmp_path, **{"loss.global_code_from": source}))
    g = torch.Generator().manual_seed(0)
    x, y, y_key, other_key = (torch.rand(4, 3, 32, 32, generator=g) for _ in range(4))
    with torch.no_grad():
        state = torch.random.get_rng_state()
        first = trainer.generator_terms(x, y, y_key)[1]["y_hat"]
        torch.random.set_rng_state(state)  # the same quantisation noise
        second = trainer.generator_terms(x, y, other_key)[1]["y_hat"]
    changed = not torch.allclose(first, second)
    assert changed == (source == "y_key")


@pytest.mark.parametrize("mode", ["noise", "straight_through"])
def test_global_code_quantization_decides_what_the_generator_sees_of_e_g(tmp_path, mode):
    trainer = Trainer(tiny(tmp_path, **{"loss.global_code_quantization": mode}))
    compressor, seen = trainer.model.global_compressor, []

    def record(module, inputs, output):  # the latent and the medians before the step moves the quantiles
        seen.append(inputs[0].detach() - compressor.model._get_medians().detach().reshape(1, -1))

    compressor.tail.register_forward_hook(record)
    g = torch.Generator().manual_seed(0)
    x, y, y_key = (torch.rand(4, 3, 32, 32, generator=g) for _ in range(3))
    trainer.train_step(x, y, y_key)
    off_grid = (seen[0] - torch.round(seen[0])).abs().max()
    assert (off_grid < 1e-5) if mode == "straight_through" else (off_grid > 0.1)
    assert compressor.head.layers[0].block[0].weight.grad.abs().sum() > 0  # the encoder side still learns


def test_quantiles_get_their_own_rate(tmp_path):
    trainer = Trainer(tiny(tmp_path, **{"optim.lr_quantiles": 0.05}))
    groups = trainer.optimizer_g.param_groups
    quantiles = {id(p) for n, p in trainer.model.named_parameters() if n.endswith("quantiles")}
    assert len(groups) == 6 and groups[-1]["lr"] == 0.05 and {id(p) for p in groups[-1]["params"]} == quantiles
    assert not any(id(p) in quantiles for g in groups[:-1] for p in g["params"])
    assert len(Trainer(tiny(tmp_path / "b")).optimizer_g.param_groups) == 5  # the default is unchanged


def test_cross_leakage_term_is_logged_and_added(tmp_path):
    trainer = Trainer(tiny(tmp_path, **{"loss.cross_leakage": 3.0}))
    g = torch.Generator().manual_seed(0)
    x, y, y_key = (torch.rand(4, 3, 32, 32, generator=g) for _ in range(3))
    logged, _ = trainer.train_step(x, y, y_key)
    weighted = trainer.weights.weighted_sum({k: v for k, v in logged.items() if k not in ("loss", "cross_leakage")})
    assert 0 <= float(logged["cross_leakage"]) <= 1
    assert float(logged["loss"]) == pytest.approx(float(weighted) + 3.0 * float(logged["cross_leakage"]), rel=1e-5)
    assert "cross_leakage" not in Trainer(tiny(tmp_path / "b")).train_step(x, y, y_key)[0]


def test_leakage_loss_of_a_pasted_source_exceeds_that_of_noise():
    g = torch.Generator().manual_seed(0)
    x, source = torch.rand(2, 3, 48, 48, generator=g)[:, None].unbind(0)
    source = torch.nn.functional.avg_pool2d(source, 5, 1, 2)
    pasted = leakage_loss(x + 0.2 * (source - 0.5), x, source)
    noisy = leakage_loss(x + 0.05 * torch.randn(x.shape, generator=g), x, source)
    assert float(pasted) > 0.5 > 0.2 > float(noisy)


def test_init_weights_starts_a_fresh_run_from_a_model_file_and_checks_its_shapes(tmp_path):
    source = Trainer(tiny(tmp_path / "source", seed=7)).model  # another seed: other weights
    source.save(tmp_path / "start.pt")
    config = tiny(tmp_path / "run", **{"run.init_weights": str(tmp_path / "start.pt"), "run.max_steps": 1})
    trainer = Trainer(config)
    started = trainer.model.state_dict()
    assert all(torch.equal(started[k], v) for k, v in source.state_dict().items())
    key = "generator.net.conv_first.conv2d.weight"
    assert not torch.equal(started[key], Trainer(tiny(tmp_path / "plain")).model.state_dict()[key])

    trainer.run()
    (tmp_path / "start.pt").unlink()  # a resumed run takes its weights from the checkpoint, not from the file
    assert Trainer(config, resume=True).step == 1
    source.save(tmp_path / "start.pt")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        Trainer(tiny(tmp_path / "wide", **{"model.filters": 16, "run.init_weights": str(tmp_path / "start.pt")}))
    with pytest.raises(ConfigError, match="no file at"):
        Trainer(tiny(tmp_path / "missing", **{"run.init_weights": str(tmp_path / "nothing.pt")}))


def test_recalibrate_encoders_sets_the_exact_average_of_batch_statistics():
    model = UDM(load_config(TINY).model).eval()
    layers = encoder_batchnorms(model)
    first = layers[0]
    inputs = []
    hook = first.register_forward_hook(lambda module, args, out: inputs.append(args[0].detach().double()))
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.rand(3, 3, 32, 32, generator=gen), torch.rand(3, 3, 32, 32, generator=gen)) for _ in range(4)]
    momenta = [m.momentum for m in layers]
    assert recalibrate_encoders(model, batches) == 4
    hook.remove()
    assert not model.training and not any(m.training for m in layers) and [m.momentum for m in layers] == momenta
    means = torch.stack([t.mean(dim=(0, 2, 3)) for t in inputs])
    variances = torch.stack([t.transpose(0, 1).flatten(1).var(dim=1) for t in inputs])  # unbiased, as BatchNorm
    torch.testing.assert_close(first.running_mean.double(), means.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.running_var.double(), variances.mean(0), rtol=1e-5, atol=1e-6)
    # the code of an image changes with the statistics, the weights do not
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    with pytest.raises(ValueError, match="at least 2 images"):
        recalibrate_encoders(model, [(batches[0][0][:1], batches[0][1][:1])])
    torch.testing.assert_close(first.running_mean.double(), means.mean(0), rtol=1e-5, atol=1e-6)  # untouched
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_encoders(model, [])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_bn_recalibration_option_exports_recalibrated_encoders(tmp_path):
    config = tiny(tmp_path / "run", **{"run.max_steps": 2, "run.bn_recalibration": 3})
    trainer = Trainer(config)
    trainer.run()
    exported = UDM.load(tmp_path / "run" / "model.pt")
    trained = trainer.model.state_dict()
    name = [k for k in trained if k.startswith("local_encoder") and k.endswith("running_mean")][0]
    assert not torch.equal(exported.state_dict()[name], trained[name])
    counts = [int(m.num_batches_tracked) for m in encoder_batchnorms(exported)]
    assert counts == [3] * len(counts)
    weights = [k for k in trained if k.endswith("weight")]
    assert all(torch.equal(exported.state_dict()[k], trained[k]) for k in weights)
    with pytest.raises(ConfigError, match="at least 2 images per batch"):
        Trainer(tiny(tmp_path / "one", **{"run.bn_recalibration": 3, "data.batch_size": 1}))
    with pytest.raises(ConfigError, match="bn_recalibration must be >= 0"):
        tiny(tmp_path / "neg", **{"run.bn_recalibration": -1})


@pytest.mark.parametrize("frozen", [False, True])
def test_freeze_encoder_batchnorm_trains_with_the_running_statistics(tmp_path, frozen):
    trainer = Trainer(tiny(tmp_path / "run", **{"run.max_steps": 3, "run.freeze_encoder_batchnorm": frozen}))
    layers = [m for e in (trainer.model.global_encoder, trainer.model.local_encoder) for m in e.modules()]
    layers = [m for m in layers if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.weight.detach().clone()) for m in layers]
    trainer.run()
    stats_kept = [torch.equal(m.running_mean, mean) for m, (mean, _) in zip(layers, before)]
    weights_moved = [not torch.equal(m.weight, weight) for m, (_, weight) in zip(layers, before)]
    assert stats_kept == [frozen] * len(layers)
    assert any(weights_moved)
    # frozen, a code depends on its own image only: coded alone or beside others, the same
    y = torch.rand(3, 3, 16, 16) * 2 - 1
    encoder = trainer.model.local_encoder
    with torch.no_grad():
        together, alone = encoder(y)[:1], encoder(y[:1].repeat(2, 1, 1, 1))[:1]
    assert torch.allclose(together, alone, atol=1e-6) == frozen


def test_freeze_encoder_batchnorms_covers_both_encoders_and_the_key_encoder():
    model = UDM(load_config(TINY).model)
    generator_modes = [m.training for m in model.generator.modules()]
    layers = freeze_encoder_batchnorms(model)
    expected = [
        m
        for part in (model.global_encoder.encoder_q, model.global_encoder.encoder_k, model.local_encoder)
        for m in part.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    assert len(layers) == len(expected) > 0 and all(not m.training for m in expected)
    assert [m.training for m in model.generator.modules()] == generator_modes
    with pytest.raises(ConfigError, match="nothing to re-estimate"):
        load_config(TINY, {"run.freeze_encoder_batchnorm": True, "run.bn_recalibration": 5})


def test_spectrum_weighting_reaches_all_spectral_terms(tmp_path):
    overrides = {
        "loss.weights.spectrum": 1.0,
        "loss.weights.spectrum_relative": 1.0,
        "loss.weights.spectrum_margin": 0.2,
        "loss.weights.transfer": 1.0,
        "loss.weights.spectrum_pool": 4,
        "loss.weights.spectrum_weighting": "rings",
    }
    trainer = Trainer(tiny(tmp_path / "run", **overrides))
    batch = trainer._to_device(next(iter(trainer._loader())))
    terms, extra = trainer.generator_terms(*batch)
    x01, y01, y_hat01 = ((extra[k] + 1) / 2 for k in ("x", "y", "y_hat"))
    for weighting, check in (("rings", torch.testing.assert_close), ("bins", _assert_differs)):
        check(terms["spectrum"].detach(), spectrum_loss(y_hat01, y01, pool=4, weighting=weighting))
        check(terms["transfer"].detach(), transfer_loss(y_hat01, y01, x01, pool=4, weighting=weighting))
        relative = relative_spectrum_loss(y_hat01, y01, x01, margin=0.2, pool=4, weighting=weighting)
        check(terms["spectrum_relative"].detach(), relative)


def _assert_differs(a, b):
    assert not torch.allclose(a, b, rtol=1e-3)


def test_l1_noise_free_averages_l1_over_the_noise_free_pairs(tmp_path):
    trainer = Trainer(tiny(tmp_path / "run", **{"loss.weights.l1_noise_free": 5.0}))
    x, y, y_key, *_ = trainer._to_device(next(iter(trainer._loader())))
    mask = torch.tensor([True, False] * (x.shape[0] // 2) + [True] * (x.shape[0] % 2))
    torch.manual_seed(0)
    terms, extra = trainer.generator_terms(x, y, y_key, mask)
    per_image = l1_loss((extra["y_hat"] + 1) / 2, y, reduction="none").double()
    expected = (per_image * mask.double()).sum() / x.shape[0]
    torch.testing.assert_close(terms["l1_noise_free"].double(), expected, rtol=1e-3, atol=1e-6)
    none_free = trainer.generator_terms(x, y, y_key, torch.zeros_like(mask))[0]["l1_noise_free"]
    assert none_free.item() == 0.0
    assert trainer.train_step(x, y, y_key, mask)[0]["l1_noise_free"].item() > 0
    with pytest.raises(ValueError, match="l1_noise_free needs to know"):
        trainer.generator_terms(x, y, y_key, None)


def test_l1_noise_free_only_trains_on_the_noise_free_pairs(tmp_path):
    trainer = Trainer(tiny(tmp_path / "run", **{"loss.weights.l1_noise_free": 1.0}))
    x, y, y_key, *_ = trainer._to_device(next(iter(trainer._loader())))
    mask = torch.zeros(x.shape[0], dtype=torch.bool)
    mask[0] = True
    y_changed = y.clone()
    y_changed[1:] = torch.rand_like(y[1:])  # only pairs with mask False change
    trainer.model.eval()  # BatchNorm on running statistics: item 0's codes do not depend on the other items
    grads = []
    for target in (y, y_changed):
        trainer.model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        trainer.generator_terms(x, target, y_key, mask)[0]["l1_noise_free"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.generator.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


def test_l1_noise_free_needs_synthesised_pairs():
    with pytest.raises(ConfigError, match="l1_noise_free needs synthesised pairs"):
        load_config(TINY, {"loss.weights.l1_noise_free": 1.0, "data.kind": "csv", "data.csv": "pairs.csv"})


@pytest.mark.parametrize("degrade_on", ["loader", "device"])
def test_both_synthesis_paths_flag_the_noise_free_pairs(tmp_path, degrade_on):
    overrides = {"data.degrade_on": degrade_on, "data.degrade.p_noise": 0.0}
    trainer = Trainer(tiny(tmp_path / "run", **overrides))
    *_, noise_free, _ = trainer._to_device(next(iter(trainer._loader())))
    assert noise_free.dtype == torch.bool and noise_free.all()
    trainer = Trainer(tiny(tmp_path / "noisy", **{**overrides, "data.degrade.p_noise": 1.0}))
    assert not trainer._to_device(next(iter(trainer._loader())))[3].any()
