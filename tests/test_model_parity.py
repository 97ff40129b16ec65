"""UDM.from_official against an independent functional restatement of the reference network."""

import math

import pytest
import reference_functional as ref
import torch

from udm_fast import UDM
from udm_fast.models.checkpoint import CheckpointError

compressai = pytest.importorskip("compressai")


def random_official_checkpoint(seed=0, **sizes):
    """An authors'-layout checkpoint with random weights; coder tables from compressai's update()."""
    from compressai.entropy_models import EntropyBottleneck

    g = torch.Generator().manual_seed(seed)
    layout = ref.official_key_layout(**sizes)
    parts = {}
    for part, keys in layout.items():
        sd = {}
        for key, shape in keys.items():
            if key.endswith("num_batches_tracked"):
                sd[key] = torch.tensor(7)
            elif key.endswith("running_var"):
                sd[key] = torch.rand(shape, generator=g) + 0.5
            elif key.endswith(("running_mean", "norm.bias")):
                sd[key] = 0.1 * torch.randn(shape, generator=g)
            elif key.endswith("norm.weight"):
                sd[key] = 1 + 0.1 * torch.randn(shape, generator=g)
            elif ".model." in "." + key or key.startswith("model."):
                continue  # entropy bottleneck: filled below
            else:
                fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
                if "tconv2d" in key or "deconv.weight" in key or "transform_map.0" in key or "LPE_p.4.weight" in key:
                    fan_in = shape[0] * math.prod(shape[2:])
                sd[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        if part in ("netCprs", "netCprs_loc"):
            c = keys["model.quantiles"][0]
            eb = EntropyBottleneck(c)
            with torch.no_grad():
                for p in eb.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
            eb.update(force=True)
            sd.update({f"model.{k}": v for k, v in eb.state_dict().items()})
        parts[part] = sd
    return {"model": parts, "epoch": 3, "global_step": 1000}


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("filters,c_l", [(16, 4), (64, 4), (16, 3)])
def test_outputs_match_reference(filters, c_l):
    checkpoint = random_official_checkpoint(filters=filters, c_l=c_l)
    parts = checkpoint["model"]
    model = UDM.from_official(checkpoint)
    assert not model.training
    assert model.config.filters == filters and model.config.local_channels == c_l

    g = torch.Generator().manual_seed(1)
    y = torch.rand(2, 3, 24, 40, generator=g)
    x = torch.rand(2, 3, 32, 48, generator=g)
    with torch.no_grad():
        e_g, e_l = model.encode(y, quantize=False)
        assert rel_err(e_g, ref.lpe(parts["netE"], y * 2 - 1)) < 1e-4
        assert rel_err(e_l, ref.lpel(parts["netE_loc"], y * 2 - 1)) < 1e-4
        assert e_l.shape == (2, c_l, 12, 20)

        q_g, q_l = model.encode(y, quantize=True)
        ref_g, _ = ref.compressor(parts["netCprs"], e_g)
        ref_l, _ = ref.compressor(parts["netCprs_loc"], e_l)
        assert rel_err(q_g, ref_g) < 1e-4 and rel_err(q_l, ref_l) < 1e-4
        lik_ours = model.global_compressor(e_g)[1]
        assert rel_err(lik_ours, ref.compressor(parts["netCprs"], e_g)[1]) < 1e-4

        noise = [torch.randn(s, generator=g) for s in model.noise_shapes(2, 32, 48)]
        y_hat = model.synthesize(x, q_g, q_l, noise)
        expected = (ref.generator(parts["netG"], x * 2 - 1, q_g, q_l, noise) + 1) / 2
        assert y_hat.shape == x.shape
        assert rel_err(y_hat, expected) < 1e-4


def test_checkpoint_key_layout_matches_model():
    model = UDM(filters=16, discriminator=True, disc_ndf=8)
    ours = model.official_state_dict()["model"]
    layout = ref.official_key_layout(filters=16, ndf=8)
    for part, keys in layout.items():
        assert set(ours[part]) == set(keys), part
        for key, shape in keys.items():
            if key.rsplit(".", 1)[-1] not in ("_quantized_cdf", "_offset", "_cdf_length"):  # sized by update()
                assert tuple(ours[part][key].shape) == tuple(shape), key
    assert len(ours["netG"]) == 331 and len(ours["netE"]) == 74 and len(ours["netE_loc"]) == 76


def test_from_official_infers_discriminator_and_round_trips():
    checkpoint = random_official_checkpoint(filters=16, ndf=8)
    model = UDM.from_official(checkpoint)
    assert model.discriminator is not None and model.config.disc_ndf == 8
    again = model.official_state_dict()["model"]
    for part, sd in checkpoint["model"].items():
        for key, value in sd.items():
            assert torch.equal(again[part][key], value), (part, key)


def test_old_compressai_names_and_dataparallel_prefix_are_converted():
    checkpoint = random_official_checkpoint(filters=16)
    parts = checkpoint["model"]
    old = {}
    for key, value in parts["netCprs_loc"].items():
        for new, prefix in (("matrices.", "_matrix"), ("biases.", "_bias"), ("factors.", "_factor")):
            key = key.replace(new, prefix)
        old["module." + key] = value
    parts["netCprs_loc"] = old
    model = UDM.from_official(checkpoint)
    assert torch.equal(model.local_compressor.model.matrices[0], old["module.model._matrix0"])


def test_bad_checkpoints_list_every_problem(tmp_path):
    checkpoint = random_official_checkpoint(filters=16)
    netg = checkpoint["model"]["netG"]
    del netg["net.conv_last.conv2d.weight"]
    netg["net.bogus"] = torch.zeros(1)
    netg["net.blocks1.0.conv1.conv2d.weight"] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(CheckpointError) as info:
        UDM.from_official(checkpoint, filters=16)
    text = str(info.value)
    assert "net.conv_last.conv2d.weight" in text and "net.bogus" in text and "net.blocks1.0.conv1" in text

    missing = {"model": {"netE": {}}}
    with pytest.raises(CheckpointError, match="lacks the sub-networks"):
        UDM.from_official(missing)
    with pytest.raises(FileNotFoundError):
        UDM.from_official(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        UDM.from_official(bad)
