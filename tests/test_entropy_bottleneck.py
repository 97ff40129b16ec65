"""udm_fast.EntropyBottleneck against compressai's EntropyBottleneck (the reference)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

compressai_eb = pytest.importorskip("compressai.entropy_models")
from compressai._CXX import pmf_to_quantized_cdf as reference_pmf_to_cdf  # noqa: E402
from compressai.models.utils import update_registered_buffers  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st

from udm_fast.entropy.bottleneck import EntropyBottleneck, pmf_to_quantized_cdf  # noqa: E402

TABLES = ("_quantized_cdf", "_offset", "_cdf_length")


def _perturbed_pair(channels, seed=0, filters=(3, 3, 3, 3)):
    """A compressai EB with non-default random weights and ours loaded from it."""
    torch.manual_seed(seed)
    reference = compressai_eb.EntropyBottleneck(channels, filters=filters)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.3 * torch.randn_like(p))
        # Per-channel spreads from narrow to wide, so the tables vary in length.
        reference.quantiles.copy_(
            torch.stack(
                [
                    torch.linspace(-3, -40, channels),
                    torch.linspace(-0.4, 0.4, channels),
                    torch.linspace(2.5, 35, channels),
                ],
                dim=1,
            )[:, None, :]
        )
    ours = EntropyBottleneck(channels, filters=filters)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def _inputs(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = 6 * torch.randn(shape, generator=g)
    x.view(-1)[::17] *= 40  # far tails: likelihoods at the lower bound
    return x


def test_same_seed_same_initialisation():
    torch.manual_seed(3)
    reference = compressai_eb.EntropyBottleneck(7)
    torch.manual_seed(3)
    ours = EntropyBottleneck(7)
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert list(ref_state) == list(our_state)
    for key in ref_state:
        assert ref_state[key].dtype == our_state[key].dtype, key
        torch.testing.assert_close(our_state[key], ref_state[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("shape", [(5, 6), (3, 6, 4, 5), (2, 6, 3)])
@pytest.mark.parametrize("training", [False, True])
def test_forward_and_gradients_match_compressai(shape, training):
    reference, ours = _perturbed_pair(6)
    x = _inputs(shape)
    outputs = []
    for module in (reference, ours):
        module.zero_grad()
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(11)  # same noise draw in training mode
        y_hat, likelihoods = module(xi, training=training)
        objective = -torch.log2(likelihoods).sum() + (y_hat**2).sum() + module.loss()
        objective.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters()}
        outputs.append((y_hat.detach(), likelihoods.detach(), module.loss().detach(), xi.grad, grads))
    (ry, rl, rloss, rgx, rgrads), (oy, ol, oloss, ogx, ograds) = outputs
    assert oy.shape == ol.shape == x.shape
    assert (ol == 1e-9).any(), "test data should reach the likelihood bound"
    torch.testing.assert_close(oy, ry, rtol=0, atol=0)
    torch.testing.assert_close(ol, rl, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(oloss, rloss)
    torch.testing.assert_close(ogx, rgx, rtol=1e-5, atol=1e-6)
    assert rgrads.keys() == ograds.keys()
    for name in rgrads:
        torch.testing.assert_close(ograds[name], rgrads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_forward_uses_module_mode_by_default():
    _, ours = _perturbed_pair(4)
    x = _inputs((3, 4, 2, 2))
    ours.eval()
    y_eval, _ = ours(x)
    medians = ours._get_medians().detach().reshape(1, 4, 1, 1)
    torch.testing.assert_close(y_eval, torch.round(x - medians) + medians, rtol=0, atol=0)
    ours.train()
    y_train, _ = ours(x)
    assert (y_train - x).abs().max() <= 0.5 and not torch.equal(y_train, y_eval)


def test_straight_through_gives_the_inference_rounding_with_the_identity_gradient_and_the_noisy_rate():
    _, ours = _perturbed_pair(4)
    x = _inputs((5, 4, 3, 2)).requires_grad_(True)
    rounded, _ = ours(x.detach(), training=False)
    torch.manual_seed(3)
    _, noisy_likelihoods = ours(x.detach(), training=True)
    torch.manual_seed(3)  # the same noise draw: the rate must be the noisy one
    y_hat, likelihoods = ours(x, training=True, straight_through=True)
    torch.testing.assert_close(y_hat.detach(), rounded, rtol=0, atol=0)
    torch.testing.assert_close(likelihoods, noisy_likelihoods, rtol=0, atol=0)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    (y_hat * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights, rtol=0, atol=0)
    x.grad = None
    eval_again, _ = ours(x, training=False, straight_through=True)  # eval: the same values, the identity gradient
    torch.testing.assert_close(eval_again.detach(), rounded, rtol=0, atol=0)
    (eval_again * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights, rtol=0, atol=0)


def test_likelihoods_float32_under_autocast():
    _, ours = _perturbed_pair(4)
    x = _inputs((2, 4, 3, 3))
    expected_y, expected_l = ours(x, training=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_hat, likelihoods = ours(x, training=False)
    assert likelihoods.dtype == torch.float32 and y_hat.dtype == torch.float32
    torch.testing.assert_close(likelihoods, expected_l, rtol=0, atol=0)
    y_half, l_half = ours(x.to(torch.bfloat16), training=False)
    assert y_half.dtype == torch.bfloat16 and l_half.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_compress_other_dtypes_matches_compressai(dtype):
    """compressai subtracts the medians in place, so the difference is rounded to x's dtype before
    torch.round: 3.6 - 0.1 in float16 / bfloat16 is 3.5, which rounds to 4 (float32 gives 3)."""
    reference, ours = _perturbed_pair(4)
    with torch.no_grad():
        reference.quantiles[:, 0, 1] = 0.1
    ours.load_state_dict(reference.state_dict())
    reference.update(force=True)
    ours.update(force=True)
    x = torch.cat([torch.full((1, 4, 4, 4), 3.6), _inputs((2, 4, 4, 4))]).to(dtype)
    strings = reference.compress(x)
    assert ours.compress(x) == strings
    assert torch.equal(ours.decompress(strings, (4, 4)), reference.decompress(strings, (4, 4)))


def test_float64_module_matches_compressai():
    reference, ours = _perturbed_pair(6)
    reference, ours = reference.double(), ours.double()
    x = _inputs((3, 6, 5, 4)).double()
    for training in (False, True):
        torch.manual_seed(0)
        expected = reference(x, training=training)
        torch.manual_seed(0)
        got = ours(x, training=training)
        for a, b in zip(got, expected):
            assert a.dtype == b.dtype == torch.float64
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-300)
    reference.update(force=True)
    ours.update(force=True)
    assert ours.compress(x) == reference.compress(x)
    bad = x.clone()
    bad[0, 1, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="not finite or outside int32"):
        ours.compress(bad)


def test_compress_empty_batch_and_empty_maps():
    reference, ours = _perturbed_pair(3)
    reference.update(force=True)
    ours.update(force=True)
    assert ours.compress(torch.zeros(0, 3, 4, 4)) == reference.compress(torch.zeros(0, 3, 4, 4)) == []
    for shape in ((0, 3, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0)):
        x = torch.zeros(shape)
        assert ours.decompress(ours.compress(x), shape[2:]).shape == shape
        assert ours.decompress_parallel(ours.compress_parallel(x)).shape == shape


def test_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="expected input"):
        EntropyBottleneck(4)(torch.zeros(2, 3, 5, 5))


@pytest.mark.parametrize("filters", [(3, 3, 3, 3), (2, 5)])
def test_update_tables_identical(filters):
    reference, ours = _perturbed_pair(9, seed=5, filters=filters)
    assert reference.update(force=True) and ours.update(force=True)
    for name in TABLES:
        ref, got = getattr(reference, name), getattr(ours, name)
        assert got.dtype == torch.int32 and got.shape == ref.shape, name
        assert torch.equal(got, ref), name
    assert not ours.update()  # tables exist: no-op without force


def test_update_quantiles_matches_compressai():
    reference, ours = _perturbed_pair(3, seed=2)
    reference.update(force=True, update_quantiles=True)
    ours.update(force=True, update_quantiles=True)
    torch.testing.assert_close(ours.quantiles, reference.quantiles, rtol=0, atol=0)
    for name in TABLES:
        assert torch.equal(getattr(ours, name), getattr(reference, name)), name


def test_state_dict_round_trip_both_directions():
    reference, _ = _perturbed_pair(5, seed=7)
    reference.update(force=True)
    # compressai -> ours: plain load_state_dict resizes the table buffers.
    ours = EntropyBottleneck(5)
    ours.load_state_dict(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    # ours -> a fresh compressai module, loaded the way compressai models do it.
    ours.update(force=True)
    back = compressai_eb.EntropyBottleneck(5)
    state = {"eb." + k: v for k, v in ours.state_dict().items()}
    update_registered_buffers(back, "eb", list(TABLES), state)
    back.load_state_dict(ours.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_state_dict_without_likelihood_bound():
    reference = compressai_eb.EntropyBottleneck(3, likelihood_bound=0)
    ours = EntropyBottleneck(3, likelihood_bound=0)
    assert reference.state_dict().keys() == ours.state_dict().keys()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_pmf_quantization_matches_compressai(data):
    n = data.draw(st.integers(2, 70))
    # Many tiny masses force the zero-frequency repair; a few large ones act as donors.
    exponents = data.draw(st.lists(st.floats(-30, 0), min_size=n, max_size=n))
    pmf = np.float32(2.0) ** np.asarray(exponents, dtype=np.float32)
    pmf = (pmf / pmf.sum()).astype(np.float32)
    expected = np.asarray(reference_pmf_to_cdf(pmf.tolist(), 16), dtype=np.int64)
    got = pmf_to_quantized_cdf(pmf)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    assert got[-1] == 65536 and np.all(np.diff(got) > 0)


def test_deterministic_algorithms_use_the_torch_composition(monkeypatch):
    """The fused likelihood's backward sums parameter gradients with atomics (order-dependent)."""
    from udm_fast.entropy import bottleneck as module

    _, ours = _perturbed_pair(4)
    x = _inputs((2, 4, 3, 3))
    _, expected = ours(x, training=False)  # the CPU takes the torch composition
    monkeypatch.setattr(module._backend, "resolve", lambda name, device: "triton")
    monkeypatch.setattr(module._FusedLikelihood, "apply", lambda *args: pytest.fail("fused path taken"))
    torch.use_deterministic_algorithms(True)
    try:
        _, likelihood = ours(x, training=False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(likelihood, expected)
    with pytest.raises(pytest.fail.Exception, match="fused path taken"):  # the patch is live
        ours(x, training=False)


def test_pmf_quantization_rejects_bad_pmfs():
    with pytest.raises(ValueError, match="negative"):
        pmf_to_quantized_cdf(np.array([0.5, -0.1, 0.6], dtype=np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        pmf_to_quantized_cdf(np.array([1.0], dtype=np.float32))
    with pytest.raises(ValueError, match="at most 65536"):
        pmf_to_quantized_cdf(np.full(70000, 1 / 70000, dtype=np.float32))


# -- fused Triton likelihood (GPU by default; here under the Triton interpreter) -----------------
def _fused_against_torch(device):
    from udm_fast.ops import backend

    _, ours = _perturbed_pair(3, seed=8, filters=(3, 2, 5))
    ours = ours.to(device)
    x = _inputs((2, 3, 5, 7)).to(device)
    for training in (False, True):
        results = []
        for name in ("reference", "triton"):
            backend.set_backend(name)
            try:
                ours.zero_grad()
                xi = x.clone().requires_grad_(True)
                torch.manual_seed(5)
                y_hat, likelihoods = ours(xi, training=training)
                (
                    torch.log(likelihoods)
                    * torch.linspace(-1, 2, likelihoods.numel(), device=device).reshape(likelihoods.shape)
                ).sum().backward()
                results.append(
                    (
                        likelihoods.detach(),
                        xi.grad,
                        {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None},
                    )
                )
            finally:
                backend.set_backend(None)
        (ref_l, ref_gx, ref_g), (got_l, got_gx, got_g) = results
        assert (ref_l == 1e-9).any()
        torch.testing.assert_close(got_l, ref_l, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got_gx, ref_gx, rtol=1e-3, atol=1e-3 * ref_gx.abs().max().item())
        assert ref_g.keys() == got_g.keys()
        for name in ref_g:
            scale = ref_g[name].abs().max().item()
            torch.testing.assert_close(got_g[name], ref_g[name], rtol=1e-3, atol=1e-3 * scale + 1e-6, msg=name)


def test_fused_likelihood_matches_torch_composition():
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        _fused_against_torch("cuda")
    elif os.environ.get("UDM_FAST_EB_INTERPRETER_CHILD") == "1":
        _fused_against_torch("cpu")
    else:  # the interpreter must be on before triton is first imported: run in a fresh process
        env = dict(os.environ, TRITON_INTERPRET="1", UDM_FAST_EB_INTERPRETER_CHILD="1")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                __file__,
                "-k",
                "fused_likelihood_matches",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
