"""The training configuration: the shipped files, strict keys, types and cross-checks."""

import os

import pytest
import yaml

from udm_fast.train.config import ConfigError, TrainingConfig, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "default.yaml")
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def _dotted_keys(tree: dict, prefix: str = "") -> set:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _dotted_keys(value, prefix + key + ".")
    return keys


def test_default_yaml_documents_every_key_with_the_code_defaults():
    with open(DEFAULT, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    defaults = TrainingConfig().to_dict()
    assert _dotted_keys(raw) == _dotted_keys(defaults)
    assert load_config(DEFAULT).to_dict() == defaults
    # the film-grain weights of docs/architecture.md §10.2 (L1 doubled for [0, 1] images)
    w = load_config(DEFAULT).loss.weights
    assert (w.dists, w.l1, w.color, w.bits_global, w.bits_local, w.contrastive, w.gan_generator) == (
        10.0,
        20.0,
        10.0,
        2e-3,
        0.05,
        1e-4,
        10.0,
    )


def test_tiny_config_is_valid_and_small():
    c = load_config(TINY)
    assert c.run.device == "cpu" and c.loss.weights.dists == 0 and c.data.crop_size == 32
    assert c.model.disc_in_width == c.data.crop_size


def test_embedded_config_is_valid_and_needs_no_downloaded_weights():
    c = load_config(os.path.join(ROOT, "configs", "embedded.yaml"))
    w = c.loss.weights
    assert w.dists == 0 and w.lpips == 0 and w.spectrum > 0 and w.lowpass_l1 > 0
    assert c.model.disc_in_width == c.data.crop_size and c.model.queue_size >= c.data.batch_size


def test_round_trip_through_dict():
    c = load_config(TINY)
    assert TrainingConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "values, key, suggestion",
    [
        ({"sed": 1}, "sed", "seed"),
        ({"data": {"crop_szie": 64}}, "data.crop_szie", "crop_size"),
        ({"model": {"filtrs": 8}}, "model.filtrs", "filters"),
        ({"loss": {"weights": {"dits": 1.0}}}, "loss.weights.dits", "dists"),
        ({"data": {"degrade": {"p_nosie": 0.1}}}, "data.degrade.p_nosie", "p_noise"),
        ({"optim": {"generator_schedule": {"gama": 0.1}}}, "optim.generator_schedule.gama", "gamma"),
    ],
)
def test_unknown_key_is_named_with_a_suggestion_and_the_valid_keys(values, key, suggestion):
    with pytest.raises(ConfigError) as info:
        TrainingConfig.from_dict(values)
    message = str(info.value)
    assert f"unknown key '{key}'" in message
    assert f"did you mean '{suggestion}'" in message
    assert "valid keys" in message and suggestion in message.split("valid keys", 1)[1]


@pytest.mark.parametrize(
    "values, match",
    [
        ({"data": {"batch_size": "24"}}, "'data.batch_size' must be an integer"),
        ({"data": {"batch_size": 2.5}}, "'data.batch_size' must be an integer"),
        ({"run": {"compile": "yes"}}, "'run.compile' must be true or false"),
        ({"run": {"amp": "fp8"}}, r"'run.amp' must be one of \['none', 'bf16', 'fp16'\]"),
        ({"optim": {"lr_generator": "fast"}}, "'optim.lr_generator' must be a number"),
        ({"optim": {"betas": 0.9}}, "'optim.betas' must be a list"),
        ({"data": 3}, "'data' must be a mapping"),
        ({"data": {"degrade": {"p_noise": 2.0}}}, "p_noise must be a probability"),
        ({"loss": {"weights": {"l1": -1.0}}}, "l1 must be a finite number >= 0"),
        ({"data": {"crop_size": 100}}, "multiple of 8"),
        ({"data": {"kind": "csv"}}, "needs csv"),
        ({"run": {"epochs": 0, "max_steps": 0}}, "never end"),
        ({"model": {"discriminator": False}}, "gan_generator > 0 needs a critic"),
        ({"data": {"crop_size": 64}}, r"disc_in_width \(128\) must equal data.crop_size \(64\)"),
        ({"model": {"queue_size": 8}}, r"queue_size \(8\) must be >= data.batch_size \(24\)"),
        ({"optim": {"generator_schedule": {"gamma": 0.0}}}, "gamma must be in"),
    ],
)
def test_bad_values_name_the_key(values, match):
    with pytest.raises(ConfigError, match=match):
        TrainingConfig.from_dict(values)


def test_yaml_exponent_without_dot_is_a_number():
    # YAML 1.1 reads 1e-4 as a string; the schema converts it for float keys
    assert TrainingConfig.from_dict({"optim": {"lr_generator": "1e-4"}}).optim.lr_generator == 1e-4


def test_yaml_on_off_are_accepted_for_on_off_choices(tmp_path):
    config = tmp_path / "c.yaml"
    for text, expected in (("on", "on"), ("off", "off"), ("'on'", "on"), ("auto", "auto")):
        config.write_text(f"log:\n  tensorboard: {text}\n")  # bare on / off are YAML 1.1 booleans
        assert load_config(config).log.tensorboard == expected
    with pytest.raises(ConfigError, match="log.tensorboard' must be one of"):
        TrainingConfig.from_dict({"log": {"tensorboard": 1}})


def test_errors_from_overrides_name_them():
    with pytest.raises(ConfigError, match=r"tiny.yaml with overrides run.max_steps=-5: 'run': .*>= 0"):
        load_config(TINY, {"run.max_steps": -5})


def test_partial_sections_keep_the_other_defaults():
    c = TrainingConfig.from_dict({"model": {"filters": 16}, "loss": {"weights": {"l1": 1.0}}})
    assert c.model.filters == 16 and c.model.discriminator  # the training default, not UDMConfig's
    assert c.loss.weights.l1 == 1.0 and c.loss.weights.dists == 10.0


def test_load_config_overrides_and_file_errors(tmp_path):
    c = load_config(TINY, {"run.max_steps": 7, "log.out_dir": str(tmp_path), "data.degrade.p_jpeg": 0.5})
    assert (c.run.max_steps, c.log.out_dir, c.data.degrade.p_jpeg) == (7, str(tmp_path), 0.5)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    bad.write_text("run:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'run.max_step' \(did you mean 'max_steps'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot set run.max_steps.x: 'max_steps' is not a section"):
        load_config(TINY, {"run.max_steps.x": 1})
