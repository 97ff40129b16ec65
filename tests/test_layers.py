"""IDA / SFT drop-in layers: gradients, state-dict names, backends, dispatch and its fallback rule, errors."""

import warnings

import pytest
import reference_functional as ref
import torch

import udm_fast
from udm_fast import IDA, SFT
from udm_fast.layers import SFTResBlock, ida_reference


def _sft_reference_state_keys(prefix, c, cond=8):
    layout = ref.official_key_layout(filters=c, cond=cond)["netG"]
    return {k[len(prefix) :]: s for k, s in layout.items() if k.startswith(prefix)}


@pytest.mark.parametrize("c", [16, 64])
def test_sft_state_dict_matches_reference_names(c):
    layer = SFT(8, c)
    expected = _sft_reference_state_keys("net.blocks1.0.sft1.", c)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {k: tuple(s) for k, s in expected.items()}
    # a reference-named state dict loads strictly into both the SFT and its IDA
    layer.load_state_dict({k: torch.randn(s) for k, s in expected.items()}, strict=True)
    ida_keys = {k[len("spatial_gamma.") :]: s for k, s in expected.items() if k.startswith("spatial_gamma.")}
    IDA(c, 8, (c + 8) // 2, c).load_state_dict({k: torch.randn(s) for k, s in ida_keys.items()}, strict=True)


def test_parameter_counts():
    assert sum(p.numel() for p in IDA(64, 8, 36, 64).parameters()) == 42832
    assert sum(p.numel() for p in SFT(8, 64).parameters()) == 45442
    assert sum(p.numel() for p in SFTResBlock(64, 3, 8).parameters()) == 164612
    assert sum(p.numel() for p in SFTResBlock(128, 3, 8).parameters()) == 627620
    assert sum(p.numel() for p in SFTResBlock(256, 3, 8).parameters()) == 2450660


@pytest.mark.parametrize("c,h,w", [(16, 8, 8), (32, 12, 20)])
def test_ida_matches_functional_reference_and_list_call(c, h, w):
    layer = IDA(c, 8)
    x, m = torch.randn(2, c, h, w), torch.randn(2, 8, h // 2, w // 2)
    sd = {f"sg.{k}": v for k, v in layer.state_dict().items()}
    expected = ref.ida(sd, "sg", x, m)
    torch.testing.assert_close(layer(x, m), expected)
    torch.testing.assert_close(layer([x, m]), expected)


def test_ida_gradcheck_float64():
    layer = IDA(4, 3, 5, 4).double()
    x = torch.randn(1, 4, 4, 6, dtype=torch.float64, requires_grad=True)
    m = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    weights = [w.detach().clone().requires_grad_(True) for w in layer.weights()]
    assert torch.autograd.gradcheck(lambda *a: ida_reference(*a), (x, m, *weights))


@pytest.mark.parametrize("backend", ["reference", "cuda"])
def test_sft_gradcheck_float64(backend):
    if backend == "cuda" and not udm_fast.build_info()["cpu"]["available"]:
        pytest.skip("compiled extension missing")
    layer = SFT(3, 4, backend=backend).double()
    x = torch.randn(2, 4, 4, 6, dtype=torch.float64, requires_grad=True)
    cond = torch.randn(2, 3, 3, 5, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 1, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, n: layer(a, b, n), (x, cond, z))


def test_sft_matches_functional_reference_with_explicit_noise():
    layer = SFT(8, 32)
    x, cond, z = torch.randn(2, 32, 16, 24), torch.randn(2, 8, 5, 7), torch.randn(2, 1, 16, 24)
    sd = {f"s.{k}": v for k, v in layer.state_dict().items()}
    expected = ref.sft(sd, "s", x, cond, z, lambda t: torch.nn.functional.leaky_relu(t, 0.01))
    torch.testing.assert_close(layer(x, cond, z), expected)
    layer.backend = "cuda"
    torch.testing.assert_close(layer(x, cond, z), expected)


def test_sft_noise_generator_is_reproducible_and_none_is_random():
    layer = SFT(8, 16)
    x, cond = torch.randn(1, 16, 8, 8), torch.randn(1, 8, 4, 4)
    a = layer(x, cond, torch.Generator().manual_seed(3))
    b = layer(x, cond, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(layer(x, cond), layer(x, cond))


def test_sft_errors():
    layer = SFT(8, 16)
    with pytest.raises(ValueError, match="even"):
        layer(torch.randn(1, 16, 7, 8), torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        layer(torch.randn(1, 15, 8, 8), torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="noise must have shape"):
        layer(torch.randn(1, 16, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 1, 4, 4))
    with pytest.raises(TypeError, match="noise"):
        layer(torch.randn(1, 16, 8, 8), torch.randn(1, 8, 4, 4), "seed")
    with pytest.raises(ValueError, match="unknown backend"):
        SFT(8, 16, backend="fast")
    with pytest.raises(ValueError, match="map must be"):
        IDA(16, 8)(torch.randn(1, 16, 8, 8), torch.randn(1, 8, 3, 4))


def test_backend_selection(monkeypatch):
    monkeypatch.setenv("UDM_FAST_BACKEND", "reference")
    assert udm_fast.get_backend() == "reference"
    monkeypatch.setenv("UDM_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="UDM_FAST_BACKEND"):
        udm_fast.get_backend()
    monkeypatch.delenv("UDM_FAST_BACKEND")
    udm_fast.set_backend("cuda")
    try:
        assert udm_fast.get_backend() == "cuda"
    finally:
        udm_fast.set_backend(None)
    assert udm_fast.get_backend() == "auto"


def test_set_layer_backend_reaches_every_fused_layer():
    block = torch.nn.Sequential(SFTResBlock(16, 3, 8), IDA(16, 8, backend="cuda"))
    layers = [m for m in block.modules() if isinstance(m, (IDA, SFT))]
    assert len(layers) == 5  # two SFT (each with its IDA) and the extra IDA
    assert udm_fast.set_layer_backend(block, "reference") is block
    assert {m.backend for m in layers} == {"reference"}
    udm_fast.set_layer_backend(block, None)
    assert {m.backend for m in layers} == {None}
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        udm_fast.set_layer_backend(block, "tpu")


def test_build_info_reports_every_backend():
    info = udm_fast.build_info()
    for name in ("cpu", "cuda", "triton", "reference"):
        assert isinstance(info[name]["available"], bool) and info[name]["detail"]
    if not torch.cuda.is_available():
        assert not info["cuda"]["available"]


# ----------------------------------------------------------------------------- the cuda backend's ops

needs_ext = pytest.mark.skipif(not udm_fast.build_info()["cpu"]["available"], reason="compiled extension missing")


@needs_ext
def test_sft_compiles_fullgraph_on_the_cuda_backend():
    layer = SFT(8, 16, backend="cuda")
    x, cond, z = torch.randn(1, 16, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 1, 8, 8)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, cond, z), layer(x, cond, z))


# ----------------------------------------------------------------------------- dispatch


def test_dispatch_tables_cover_every_backend_with_one_signature():
    from udm_fast.ops.backend import BACKENDS
    from udm_fast.ops.dispatch import IDA_BACKENDS, SFT_BACKENDS, select

    assert set(IDA_BACKENDS) == set(SFT_BACKENDS) == set(BACKENDS)
    with pytest.raises(ValueError, match="IDA: backend 'tpu' has no IDA kernel; available: reference, cuda, triton"):
        select(IDA_BACKENDS, "IDA", "tpu")


def test_cuda_backend_without_the_extension_says_why(monkeypatch):
    from udm_fast.ops import extension

    monkeypatch.setattr(extension, "load", lambda: None)
    monkeypatch.setattr(extension, "error", lambda: "udm_fast._C could not be imported (test)")
    x, cond = torch.randn(1, 16, 8, 8), torch.randn(1, 8, 4, 4)
    for layer in (IDA(16, 8, backend="cuda"), SFT(8, 16, backend="cuda")):
        with pytest.raises(
            RuntimeError, match=r"backend 'cuda' cannot run: udm_fast._C could not be imported \(test\)"
        ):
            layer(x, cond)


@needs_ext
def test_activation_the_fused_kernel_lacks_falls_back_by_the_rule_with_a_warning():
    """GELU MLPs on the cuda backend: torch MLPs and epilogue around the cuda IDA, said by a warning;
    the result matches the layer in float64 on the reference backend."""
    from udm_fast.ops.dispatch import BackendFallbackWarning

    torch.manual_seed(0)
    layer = SFT(8, 16, activation=torch.nn.GELU(), backend="cuda")
    x, cond, z = torch.randn(2, 16, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 1, 8, 8)
    with pytest.warns(BackendFallbackWarning, match="not GELU / GELU; running torch MLPs around the cuda IDA"):
        out = layer(x, cond, z)
    expected = SFT(8, 16, activation=torch.nn.GELU(), backend="reference").double()
    expected.load_state_dict(layer.state_dict())
    torch.testing.assert_close(out.double(), expected(x.double(), cond.double(), z.double()), rtol=1e-5, atol=1e-5)
    layer.backend = "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendFallbackWarning)
        layer(x, cond, z)  # the reference backend serves every activation: no warning


def test_ida_shape_errors_come_from_the_shared_check():
    layer = IDA(16, 8)
    with pytest.raises(
        ValueError, match=r"IDA: w_x must have shape \[12, 15, 3, 3\].*\(15 feature and 8 map channels\)"
    ):
        layer(torch.randn(1, 15, 8, 8), torch.randn(1, 8, 4, 4))
