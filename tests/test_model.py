"""UDM public API: shapes for any sizes, noise control, tiling, save/load, MoCo, input checks."""

import os

import pytest
import torch

import udm_fast
from udm_fast import UDM, CheckpointError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = UDM(filters=8, encoder_dim=32, global_dim=16, queue_size=12, head_layers=1, tail_layers=1).eval()
    for c in (m.global_compressor, m.local_compressor):
        c.model.update(force=True)
    return m


def test_default_sizes_parameter_counts():
    m = UDM()
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(m.global_encoder.encoder_q) == 1_064_960
    assert count(m.global_encoder.encoder_k) == 1_064_960
    assert count(m.local_encoder) == 1_147_524
    assert count(m.generator) == 11_684_520
    assert count(m.global_compressor) == 147_968
    assert count(m.local_compressor) == 244
    assert count(UDM(discriminator=True).discriminator) == 44_700_673


@pytest.mark.parametrize("x_size,y_size", [((37, 45), (33, 21)), ((16, 16), (64, 48)), ((9, 130), (5, 6))])
def test_any_sizes(model, x_size, y_size):
    x, y = torch.rand(2, 3, *x_size), torch.rand(2, 3, *y_size)
    with torch.no_grad():
        e_g, e_l = model.encode(y)
        out = model.transfer(x, y)
    assert e_g.shape == (2, 16)
    assert e_l.shape == (2, 4, (y_size[0] + 1) // 2, (y_size[1] + 1) // 2)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # eval mode codes and synthesises every image on its own: each image alone (with its slice of the
    # same explicit noise) gives the batch's row, and transfer is encode followed by synthesize
    noise = [
        torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(model.noise_shapes(2, *x_size))
    ]
    with torch.no_grad():
        batch = model.transfer(x, y, noise)
        torch.testing.assert_close(batch, model.synthesize(x, e_g, e_l, noise), rtol=0, atol=0)
        for b in range(2):
            e_g_b, e_l_b = model.encode(y[b : b + 1])
            torch.testing.assert_close(e_g_b, e_g[b : b + 1], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(e_l_b, e_l[b : b + 1], rtol=1e-5, atol=1e-6)
            alone = model.synthesize(x[b : b + 1], e_g_b, e_l_b, [n[b : b + 1] for n in noise])
            torch.testing.assert_close(alone, batch[b : b + 1], rtol=1e-4, atol=1e-5)


def test_quantized_codes_are_rounded_around_medians(model):
    with torch.no_grad():
        raw_g, raw_l = model.encode(torch.rand(1, 3, 16, 16), quantize=False)
        _, q_l = model.encode(torch.rand(1, 3, 16, 16))
    assert ((raw_l > 0) & (raw_l < 1)).all()
    medians = model.local_compressor.model._get_medians().reshape(1, -1, 1, 1)
    torch.testing.assert_close(q_l - medians, (q_l - medians).round())


def test_noise_control(model):
    x, y = torch.rand(1, 3, 24, 32), torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        e_g, e_l = model.encode(y)
        shapes = model.noise_shapes(1, 24, 32)
        assert len(shapes) == 32 and shapes[0] == (1, 1, 24, 32) and shapes[8] == (1, 1, 12, 16)
        noise = [torch.randn(s) for s in shapes]
        a = model.synthesize(x, e_g, e_l, noise)
        b = model.synthesize(x, e_g, e_l, noise)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        c = model.synthesize(x, e_g, e_l, torch.Generator().manual_seed(5))
        d = model.synthesize(x, e_g, e_l, torch.Generator().manual_seed(5))
        torch.testing.assert_close(c, d, rtol=0, atol=0)
        assert not torch.equal(model.synthesize(x, e_g, e_l), model.synthesize(x, e_g, e_l))
    with pytest.raises(ValueError, match="32 tensors"):
        model.synthesize(x, e_g, e_l, noise[:5])
    with pytest.raises(ValueError, match="noise must have shape"):
        model.synthesize(x, e_g, e_l, [torch.randn(1, 1, 8, 8)] * 32)


def test_generator_is_differentiable_in_the_noise(model):
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        e_g, e_l = model.encode(y)
    noise = [torch.randn(s, requires_grad=True) for s in model.noise_shapes(1, 16, 16)]
    model.synthesize(x, e_g, e_l, noise).square().sum().backward()
    assert all(n.grad is not None for n in noise)
    assert sum(n.grad.abs().sum() for n in noise) > 0
    # the gradient itself, in float64: autograd's directional derivative against central differences
    double = UDM(model.config).eval()
    double.load_state_dict(model.state_dict())
    double = double.double()
    g = torch.Generator().manual_seed(1)
    x64, y64 = torch.rand(2, 1, 3, 16, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        e_g64, e_l64 = double.encode(y64)
    base = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in model.noise_shapes(1, 16, 16)]
    direction = [torch.randn(s, generator=g, dtype=torch.float64) for s in model.noise_shapes(1, 16, 16)]
    loss = lambda maps: double.synthesize(x64, e_g64, e_l64, maps).square().sum()  # noqa: E731
    grads = torch.autograd.grad(loss(base), base)
    analytic = sum((gr * d).sum() for gr, d in zip(grads, direction)).item()
    eps = 1e-6
    with torch.no_grad():
        plus = loss([n + eps * d for n, d in zip(base, direction)])
        minus = loss([n - eps * d for n, d in zip(base, direction)])
    assert (plus - minus).item() / (2 * eps) == pytest.approx(analytic, rel=1e-5, abs=1e-9)
    # a layer's noise enters only through beta's first 1x1 conv: zero its noise column and that
    # layer's noise gradient is exactly zero, while the other layers' are not
    first = double.generator.net.sft_layers()[0]
    with torch.no_grad():
        first.convs_beta[0].conv2d.weight[:, -1] = 0
    grads = torch.autograd.grad(loss(base), base)
    assert torch.count_nonzero(grads[0]) == 0 and all(torch.count_nonzero(gr) > 0 for gr in grads[1:])


def test_tiled_encoding_is_exact(model):
    y = torch.rand(1, 3, 100, 76)
    with torch.no_grad():
        whole = model.encode(y, quantize=False)
        model.tile_size, model.encoder_halo, model.generator_halo = 32, 16, 8
        try:
            tiled = model.encode(y, quantize=False)
        finally:
            model.tile_size, model.encoder_halo, model.generator_halo = 512, 16, 64
    torch.testing.assert_close(tiled[0], whole[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tiled[1], whole[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(48, 72), (45, 67)])  # the second is padded to 48 x 72 inside
def test_tiled_synthesis_plumbing_matches_whole_image(model, size):
    """With a halo covering the image, every tile sees the whole image: tiling must then be exact."""
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        e_g, e_l = model.encode(torch.rand(1, 3, 30, 22))
        noise = [torch.randn(s) for s in model.noise_shapes(1, *size)]
        whole = model.synthesize(x, e_g, e_l, noise)
        model.tile_size, model.generator_halo = 16, 80
        try:
            tiled = model.synthesize(x, e_g, e_l, noise)
        finally:
            model.tile_size, model.generator_halo = 512, 64
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-5)


def test_condition_follows_the_image_not_its_padding():
    """For an image padded to a multiple of 8, the condition map is stretched over the image's own
    extent at every level (bilinear, align_corners) and its border repeats over the padding."""
    from udm_fast.models.udm import _resize_window

    m = torch.rand(1, 3, 5, 7, dtype=torch.float64)
    got = _resize_window(m, 16, 24, slice(0, 16), slice(0, 24), extent=(13, 20))
    real = torch.nn.functional.interpolate(m, size=(13, 20), mode="bilinear", align_corners=True)
    torch.testing.assert_close(got[..., :13, :20], real)
    assert torch.equal(got[..., 13:, :], got[..., 12:13, :].expand(-1, -1, 3, -1))  # the border repeats
    assert torch.equal(got[..., :, 20:], got[..., :, 19:20].expand(-1, -1, -1, 4))
    whole = torch.nn.functional.interpolate(m, size=(16, 24), mode="bilinear", align_corners=True)
    torch.testing.assert_close(_resize_window(m, 16, 24, slice(0, 16), slice(0, 24)), whole)


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "sub" / "m.pt"
    model.save(path)
    assert os.listdir(path.parent) == ["m.pt"]  # no temporary files left
    loaded = UDM.load(path)
    assert loaded.config == model.config and not loaded.training
    assert loaded.weights_hash() == model.weights_hash()
    x, y = torch.rand(1, 3, 16, 24), torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.transfer(x, y, torch.Generator().manual_seed(1)),
            model.transfer(x, y, torch.Generator().manual_seed(1)),
        )


def test_load_rejects_foreign_files(model, tmp_path):
    torch.save({"model": {}}, tmp_path / "official.pt")
    with pytest.raises(CheckpointError, match="from_official"):
        UDM.load(tmp_path / "official.pt")
    payload = torch.load(_saved(model, tmp_path), weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        UDM.load(tmp_path / "future.pt")
    payload["version"] = 1
    payload["config"]["filters"] = 16
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="shape mismatches") as error:
        UDM.load(tmp_path / "mismatch.pt")
    assert "more" in str(error.value) and len(str(error.value)) < 3000  # one wrong size shifts hundreds of keys
    payload["config"]["bogus"] = 1
    torch.save(payload, tmp_path / "typo.pt")
    with pytest.raises(ValueError, match="unknown key"):
        UDM.load(tmp_path / "typo.pt")


def test_other_dtypes_save_load_and_code(model, tmp_path):
    y = torch.rand(1, 3, 24, 32)
    double = UDM(model.config).eval()
    double.load_state_dict(model.state_dict())
    double = double.double()
    double.save(tmp_path / "double.pt")
    loaded = UDM.load(tmp_path / "double.pt")  # comes back float64, so its hash (and its codes) stay valid
    assert loaded.dtype == torch.float64 and loaded.weights_hash() == double.weights_hash()
    e_g, e_l = loaded.decompress_degradation(double.compress_degradation(y.double()))
    expected = double.encode(y.double())
    assert e_g.dtype == e_l.dtype == torch.float64
    assert torch.equal(e_g, expected[0]) and torch.equal(e_l, expected[1])
    half = UDM(model.config).eval()
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16)  # the entropy models compute in float32 inside
    e_g, _ = half.encode(y.to(torch.bfloat16))
    assert e_g.dtype == torch.bfloat16 and torch.isfinite(e_g.float()).all()
    with torch.no_grad():  # the raw codes agree with float32 to bfloat16 accuracy (rounding may move a bin)
        for got, want in zip(half.encode(y.to(torch.bfloat16), quantize=False), model.encode(y, quantize=False)):
            assert ((got.float() - want).norm() / want.norm()).item() < 0.02
    with pytest.raises(CheckpointError, match="udm_fast file .*UDM.load"):
        UDM.from_official(tmp_path / "double.pt")


def _saved(model, tmp_path):
    path = tmp_path / "ok.pt"
    model.save(path)
    return path


def test_weights_hash_changes_with_weights(model):
    other = UDM(model.config)
    assert other.weights_hash() != model.weights_hash()


def test_input_checks(model):
    ok = torch.rand(1, 3, 16, 16)
    with pytest.raises(TypeError, match="float"):
        model.transfer(ok, (ok * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.transfer(ok, ok * 255)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.transfer(ok, torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="at least 4x4"):
        model.encode(torch.rand(1, 3, 3, 16))
    with pytest.raises(ValueError, match="batch"):
        model.transfer(torch.rand(2, 3, 16, 16), ok)
    nan = ok.clone()
    nan[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="finite values"):
        model.encode(nan)
    with pytest.raises(TypeError, match="float64 but the model's weights are torch.float32"):
        model.transfer(ok.double(), ok)
    noise = [torch.randn(s) for s in model.noise_shapes(1, 16, 16)]
    with torch.no_grad():
        full = model.transfer(ok, ok, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast handles the casts itself
        mixed = model.transfer(ok.to(torch.bfloat16), ok, noise)
    assert mixed.shape == ok.shape
    assert ((mixed.detach().float() - full).norm() / full.norm()).item() < 0.02  # float32's result, to bf16 accuracy
    model.tile_size = 0
    try:
        with pytest.raises(ValueError, match="tile_size must be None"):
            model.encode(ok)
    finally:
        model.tile_size = 512


def test_moco_queue_and_momentum():
    torch.manual_seed(0)
    m = UDM(filters=8, encoder_dim=32, global_dim=16, queue_size=6, moco_momentum=0.5).train()
    moco = m.global_encoder
    for pk, pq in zip(moco.encoder_k.parameters(), moco.encoder_q.parameters()):
        assert torch.equal(pk, pq) and not pk.requires_grad
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.add_(1.0)
    before_k = [p.clone() for p in moco.encoder_k.parameters()]
    y, y_key = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 2 - 1
    q, logits, keys = moco(y, y_key)
    for pk, pk0, pq in zip(moco.encoder_k.parameters(), before_k, moco.encoder_q.parameters()):
        torch.testing.assert_close(pk, 0.5 * pk0 + 0.5 * pq)
    assert q.shape == (4, 16) and logits.shape == (4, 7)
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(moco.queue[:, :4].t(), keys)
    assert moco.queue_ptr.item() == 4
    qn = torch.nn.functional.normalize(q, dim=1)
    torch.testing.assert_close(logits[:, 0], (qn * keys).sum(1) / moco.T)
    moco(y, y_key)  # wraps around: columns 4, 5, 0, 1
    assert moco.queue_ptr.item() == 2
    assert "global_encoder.queue" in m.state_dict() and "global_encoder.encoder_k.last_mlp.0.weight" in m.state_dict()


def test_set_backend_switches_every_layer(model):
    model.set_backend("reference")
    assert all(s.backend == "reference" for s in model.generator.net.sft_layers())
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        a = model.transfer(x, y, torch.Generator().manual_seed(0))
        if udm_fast.build_info()["cpu"]["available"]:
            model.set_backend("cuda")  # compiled ops (their CPU kernels here)
            torch.testing.assert_close(model.transfer(x, y, torch.Generator().manual_seed(0)), a)
    model.set_backend(None)
