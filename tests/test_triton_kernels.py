"""Triton IDA / SFT kernels against the reference (float64 autograd), torch.library.opcheck and torch.compile.

Without a GPU the kernels run in the Triton interpreter. triton.jit decides at decoration time
whether a kernel (triton's own library functions included, some imported lazily at the first
launch) is interpreted, so TRITON_INTERPRET=1 must be set before triton is first imported and stay
set: on a machine without CUDA this module sets it for the rest of the session (nothing there can
run compiled Triton code anyway; torch reads the variable only on its GPU code paths). If another
module imported triton first, this module reruns itself in a subprocess instead.
bfloat16 runs only on a GPU (tl.dot in bfloat16 is wrong in the CPU interpreter).
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from generator_training import check_trains_like_reference, generator_loss_curve  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from udm_fast.layers import IDA, SFT, ida_reference  # noqa: E402
from udm_fast.ops import ida_triton as ida_ops  # noqa: E402
from udm_fast.ops import sft_triton as sft_ops

_common = ida_ops.kernels("_common")

INTERPRETED = isinstance(tl.random.randn, InterpretedFunction) and _common.INTERPRET
IN_PROCESS = CUDA or INTERPRETED
DEVICE = torch.device("cuda" if CUDA else "cpu")
COND = 8
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}

if not IN_PROCESS:
    _SKIP_KERNELS = (
        "triton was imported without the interpreter in this process; test_interpreter_suite_in_subprocess runs these"
    )
else:  # an interpreter that cannot run the kernels here (Triton 3.6 with numpy >= 2.4) is reported, not hit
    _SKIP_KERNELS = None if CUDA else _common.interpreter_problem()
needs_kernels = pytest.mark.skipif(_SKIP_KERNELS is not None, reason=_SKIP_KERNELS or "")


# tests of this module whose passing shows the kernels ran (forward, backward, noise, opcheck, compile)
_CORE_KERNEL_TESTS = (
    "test_ida_fp32",
    "test_sft_fp32",
    "test_in_kernel_noise_matches_materialised_noise",
    "test_opcheck_ida",
    "test_opcheck_sft",
    "test_compile_fullgraph_matches_eager",
)


def _junit_outcomes(report) -> dict:
    """{test name: (passed | skipped | failed, skip message)} from a pytest --junitxml report."""
    import xml.etree.ElementTree as ET

    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        skipped = case.find("skipped")
        failed = case.find("failure") is not None or case.find("error") is not None
        status = "failed" if failed else "skipped" if skipped is not None else "passed"
        outcomes[case.get("name")] = (status, "" if skipped is None else skipped.get("message", ""))
    return outcomes


@pytest.mark.skipif(IN_PROCESS, reason="the kernels run in this process")
def test_interpreter_suite_in_subprocess(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", __file__],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    outcomes = _junit_outcomes(report)
    assert not [name for name, (status, _) in outcomes.items() if status == "failed"]
    # the child ran the kernels itself (it did not recurse, nor skip them as run outside the interpreter)
    assert outcomes["test_interpreter_suite_in_subprocess"][0] == "skipped"
    assert not [name for name, (_, why) in outcomes.items() if "imported without the interpreter" in why]
    for core in _CORE_KERNEL_TESTS:
        runs = [(status, why) for name, (status, why) in outcomes.items() if name.split("[")[0] == core]
        assert runs, f"{core} was not collected in the subprocess"
        # each passed, or the child's interpreter cannot run the kernels and says so by name
        assert all(status == "passed" or why.startswith("the Triton interpreter") for status, why in runs), (core, runs)


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """fp32 comparisons at 1e-4 need IEEE fp32 dots on a GPU (TF32 otherwise, as cuDNN's convs)."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


class _Poison:
    """Context manager: every torch.empty / empty_like / Tensor.new_empty of a floating dtype made
    inside it is filled with NaN, so any element a kernel fails to write shows up in the results."""

    def __enter__(self):
        self.saved = (torch.empty, torch.empty_like, torch.Tensor.new_empty)
        empty, empty_like, new_empty = self.saved

        def poisoned(fn):
            def wrapper(*args, **kwargs):
                t = fn(*args, **kwargs)
                return t.fill_(float("nan")) if t.is_floating_point() else t

            return wrapper

        torch.empty, torch.empty_like, torch.Tensor.new_empty = (
            poisoned(empty),
            poisoned(empty_like),
            poisoned(new_empty),
        )
        return self

    def __exit__(self, *exc):
        torch.empty, torch.empty_like, torch.Tensor.new_empty = self.saved


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape
    assert torch.isfinite(got).all(), "output has non-finite (unwritten) elements"
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


def _inputs(batch, channels, height, width, dtype, channels_last, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=gen)
    cond_full = torch.rand(batch, COND, height, width, generator=gen)
    cond_half = torch.rand(batch, COND, height // 2, width // 2, generator=gen)
    noise = torch.randn(batch, 1, height, width, generator=gen)
    return [_layout(t.to(DEVICE, dtype), channels_last) for t in (x, cond_full, cond_half, noise)]


def _resample_near_kinks(tensors, samplers, pre_activations, eps=1e-4):
    """``tensors`` (each [B, *, H, W], one pixel grid) with every pixel whose LeakyReLU pre-activations
    (float64 ``pre_activations(*tensors)``, [B, K, H, W]) come within eps * std of 0 redrawn by
    ``samplers``: there a float32 kernel and the float64 reference may take different derivative
    branches, which no tolerance covers."""
    for _ in range(50):
        pre = pre_activations(*(t.double() for t in tensors))
        near = (pre.abs() < eps * pre.std()).any(dim=1, keepdim=True)
        if not near.any():
            return tensors
        tensors = [torch.where(near, sample(t).to(t.dtype), t) for t, sample in zip(tensors, samplers)]
    raise AssertionError("could not draw inputs away from the activation kinks")


def _map_clear_of_kinks(m, w_up):
    """m with t = ConvT2x2(m, w_up) (the IDA's LeakyReLU input) away from 0 at every low-res pixel."""
    w = w_up.double()
    return _resample_near_kinks(
        [m], [torch.rand_like], lambda m: F.pixel_unshuffle(F.conv_transpose2d(m, w, stride=2), 2)
    )[0]


def _leaves(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _seeded(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``module`` re-initialised (default init) from ``seed``, on the test device."""
    torch.manual_seed(seed)
    for sub in module.modules():
        if sub is not module and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    return module.to(DEVICE)


def _check_grads(got: dict, want: dict, tol: float):
    errors = {name: rel_err(got[name], want[name]) for name in want}
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"gradients off (tol {tol}): {bad}"


# ----------------------------------------------------------------------------- IDA / SFT vs reference


def run_ida_case(batch, channels, height, width, dtype, channels_last):
    x, _, m, _ = _inputs(batch, channels, height, width, dtype, channels_last)
    layer = _seeded(IDA(channels, COND), seed=channels)
    weights = [w.detach().to(dtype) for w in layer.weights()]
    m = _map_clear_of_kinks(m, weights[0])
    grad_out = torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)

    fused = _leaves([x, m] + weights)
    with _Poison():
        out = ida_ops.ida_triton(*fused)
        out.backward(grad_out)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last) == channels_last

    ref_in = _leaves([t.double() for t in [x, m] + weights])
    ref = ida_reference(*ref_in)
    ref.backward(grad_out.double())
    tol = TOL[dtype]
    assert rel_err(out, ref) < tol
    names = ["x", "m", "w_up", "w_map", "w_x", "w_out", "b_out"]
    _check_grads({n: t.grad for n, t in zip(names, fused)}, {n: t.grad for n, t in zip(names, ref_in)}, tol)


def run_sft_case(batch, channels, height, width, dtype, channels_last, activation=None):
    x, cond_full, cond_half, noise = _inputs(batch, channels, height, width, dtype, channels_last)
    ref_layer = _seeded(SFT(COND, channels, activation=activation, backend="reference"), seed=channels).double()
    fused_layer = SFT(COND, channels, activation=activation, backend="triton").to(DEVICE, dtype)
    fused_layer.load_state_dict(ref_layer.state_dict())
    grad_out = torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    cond_half = _map_clear_of_kinks(cond_half, fused_layer.spatial_gamma.transform_map[0].weight.detach())
    w1 = fused_layer.convs_gamma[0].conv2d.weight.detach().double()
    w3 = fused_layer.convs_beta[0].conv2d.weight.detach().double()
    cond_full, noise = _resample_near_kinks(
        [cond_full, noise],
        [torch.rand_like, torch.randn_like],
        lambda c, z: torch.cat((F.conv2d(c, w1), F.conv2d(torch.cat((c, z), 1), w3)), 1),
    )

    fused_in = _leaves([x, cond_full, cond_half, noise])
    with _Poison():
        out = fused_layer.forward_resized(*fused_in)
        out.backward(grad_out)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last) == channels_last

    ref_in = _leaves([t.double() for t in (x, cond_full, cond_half, noise)])
    ref = ref_layer.forward_resized(*ref_in)
    ref.backward(grad_out.double())
    tol = TOL[dtype]
    assert rel_err(out, ref) < tol
    got = {n: t.grad for n, t in zip(("x", "cond_full", "cond_half", "noise"), fused_in)}
    want = {n: t.grad for n, t in zip(("x", "cond_full", "cond_half", "noise"), ref_in)}
    got.update({n: p.grad for n, p in fused_layer.named_parameters()})
    want.update({n: p.grad for n, p in ref_layer.named_parameters()})
    _check_grads(got, want, tol)


# (batch, C, H, W, channels_last): every C of the sweep and the largest supported one, both batch
# sizes, the smallest and the largest (non-square) size; with the interpreter's blocks, C >= 128 runs every
# channel-chunk loop, C = 256 two mid-channel blocks (C = 512: three), 48x80 several pixel tiles per persistent
# program and split-K.
FAST_CASES = [
    (1, 16, 8, 8, False),
    (3, 64, 16, 24, True),
    (1, 128, 8, 16, False),
    (1, 256, 8, 8, True),
    (1, 512, 8, 8, True),
    (1, 16, 48, 80, False),
]
SWEEP = [
    (b, c, h, w, (b + c) % 3 == 0) for c in (16, 64, 128, 256) for b in (1, 3) for h, w in ((8, 8), (16, 24), (48, 80))
]
# the whole sweep takes ~10 min in the interpreter on 2 cores: on CPU it runs only with UDM_FAST_SLOW_TESTS=1
_sweep_mark = (
    []
    if CUDA
    else [
        pytest.mark.slow,
        pytest.mark.skipif(
            os.environ.get("UDM_FAST_SLOW_TESTS") != "1", reason="interpreter sweep: UDM_FAST_SLOW_TESTS=1"
        ),
    ]
)


@needs_kernels
@pytest.mark.parametrize("batch,channels,height,width,channels_last", FAST_CASES)
def test_ida_fp32(batch, channels, height, width, channels_last):
    run_ida_case(batch, channels, height, width, torch.float32, channels_last)


@needs_kernels
@pytest.mark.parametrize("batch,channels,height,width,channels_last", FAST_CASES)
def test_sft_fp32(batch, channels, height, width, channels_last):
    run_sft_case(batch, channels, height, width, torch.float32, channels_last)


@needs_kernels
@pytest.mark.parametrize("batch,channels,height,width,channels_last", [(3, 64, 16, 24, True), (1, 16, 8, 8, False)])
def test_fp16(batch, channels, height, width, channels_last):
    run_ida_case(batch, channels, height, width, torch.float16, channels_last)
    run_sft_case(batch, channels, height, width, torch.float16, channels_last)


@needs_kernels
def test_sft_relu_variant():
    """The decoder's last SFT layer uses ReLU (slope 0) instead of LeakyReLU(0.01)."""
    run_sft_case(1, 16, 8, 12, torch.float32, False, activation=torch.nn.ReLU())


@needs_kernels
@pytest.mark.parametrize(
    "batch,channels,height,width,channels_last", [pytest.param(*case, marks=_sweep_mark) for case in SWEEP]
)
@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        pytest.param(
            torch.bfloat16, marks=pytest.mark.skipif(not CUDA, reason="bfloat16 tl.dot is wrong in the CPU interpreter")
        ),
    ],
)
def test_sweep(batch, channels, height, width, channels_last, dtype):
    run_ida_case(batch, channels, height, width, dtype, channels_last)
    run_sft_case(batch, channels, height, width, dtype, channels_last)


GPU_CASES = [(3, c, 16, 24, c != 128, dtype) for c in (64, 128, 256) for dtype in (torch.bfloat16, torch.float32)] + [
    (1, 512, 8, 8, True, torch.bfloat16)
]


@pytest.mark.gpu
@pytest.mark.parametrize("batch,channels,height,width,channels_last,dtype", GPU_CASES)
def test_gpu_levels(batch, channels, height, width, channels_last, dtype):
    """The compiled kernels at the generator's three levels (and C = 512) on a GPU; ~100 variants to JIT."""
    run_ida_case(batch, channels, height, width, dtype, channels_last)
    run_sft_case(batch, channels, height, width, dtype, channels_last)


# ----------------------------------------------------------------------------- training through the layers


@needs_kernels
@pytest.mark.parametrize(
    "autocast_dtype,tolerance,compared_steps",
    [
        pytest.param(None, 1e-3, None, marks=_sweep_mark),  # ~2 min in the interpreter
        pytest.param(torch.bfloat16, 2e-2, 4, marks=pytest.mark.skipif(not CUDA, reason="bfloat16 tl.dot needs a GPU")),
    ],
)
def test_generator_with_fused_layers_trains_like_reference(autocast_dtype, tolerance, compared_steps):
    steps, min_drop = (10, 0.2) if CUDA else (4, 0.1)  # the interpreter runs ~20 s per step
    losses, reference = (
        generator_loss_curve(backend, DEVICE, steps, autocast_dtype=autocast_dtype)
        for backend in ("triton", "reference")
    )
    check_trains_like_reference(losses, reference, tolerance, compared_steps=compared_steps, min_drop=min_drop)


# ----------------------------------------------------------------------------- noise


@needs_kernels
def test_in_kernel_noise_matches_materialised_noise():
    """With noise=None the kernels draw z from a Philox seed in the forward and again in the backward;
    sft_triton_noise(seed) materialises the same draws, and feeding them explicitly must agree."""
    x, cond_full, cond_half, _ = _inputs(2, 16, 8, 12, torch.float32, False)
    layer = _seeded(SFT(COND, 16, backend="triton"), seed=3)
    weights = [
        layer.convs_gamma[0].conv2d.weight,
        layer.convs_gamma[1].conv2d.weight,
        layer.convs_beta[0].conv2d.weight,
        layer.convs_beta[1].conv2d.weight,
        *layer.spatial_gamma.weights(),
    ]
    seed = torch.tensor([123456789012], dtype=torch.int64, device=DEVICE)
    drawn = _leaves([x, cond_full, cond_half])
    out, _, _ = torch.ops.udm_fast.sft_triton_fwd(*drawn, None, seed, *weights, 0.01, torch.float32, True)
    grad_out = torch.randn_like(out)
    drawn_grads = torch.autograd.grad(out, drawn + weights, grad_out)

    z = torch.ops.udm_fast.sft_triton_noise(seed, 2, 8, 12)
    assert z.shape == (2, 1, 8, 12) and z.dtype == torch.float32
    explicit = _leaves([x, cond_full, cond_half])
    out_z, _, _ = torch.ops.udm_fast.sft_triton_fwd(*explicit, z, None, *weights, 0.01, torch.float32, True)
    explicit_grads = torch.autograd.grad(out_z, explicit + weights, grad_out)
    assert rel_err(out, out_z) < 1e-6
    for got, want in zip(drawn_grads, explicit_grads):
        assert rel_err(got, want) < 1e-6


@needs_kernels
def test_noise_draws_are_standard_normal_and_seeded():
    seed = torch.tensor([7], dtype=torch.int64, device=DEVICE)
    z = torch.ops.udm_fast.sft_triton_noise(seed, 4, 64, 64).flatten()
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05  # 16384 draws: ~6 sigma
    assert torch.equal(z, torch.ops.udm_fast.sft_triton_noise(seed, 4, 64, 64).flatten())
    other = torch.ops.udm_fast.sft_triton_noise(seed + 1, 4, 64, 64).flatten()
    assert abs(torch.corrcoef(torch.stack((z, other)))[0, 1].item()) < 0.05


@needs_kernels
def test_layer_noise_none_follows_torch_seed():
    x, cond_full, cond_half, _ = _inputs(1, 16, 8, 8, torch.float32, False)
    layer = _seeded(SFT(COND, 16, backend="triton"), seed=4)
    with torch.no_grad():
        torch.manual_seed(11)
        first = layer.forward_resized(x, cond_full, cond_half)
        second = layer.forward_resized(x, cond_full, cond_half)
        torch.manual_seed(11)
        again = layer.forward_resized(x, cond_full, cond_half)
    assert torch.equal(first, again) and not torch.equal(first, second)
    with torch.no_grad():
        drawn = [layer.forward_resized(x, cond_full, cond_half, torch.Generator(DEVICE).manual_seed(5)) for _ in "ab"]
    assert torch.equal(*drawn) and not torch.equal(drawn[0], first)


# ----------------------------------------------------------------------------- autocast


@needs_kernels
def test_autocast_computes_in_autocast_dtype():
    """Under autocast the kernels compute in the autocast dtype; output dtypes follow the reference
    (IDA: the autocast dtype, SFT: promoted with x's dtype)."""
    dtype = torch.bfloat16 if CUDA else torch.float16
    x, cond_full, cond_half, noise = _inputs(1, 16, 8, 12, torch.float32, False)
    ref_layer = _seeded(SFT(COND, 16, backend="reference"), seed=5)
    fused_layer = SFT(COND, 16, backend="triton").to(DEVICE)
    fused_layer.load_state_dict(ref_layer.state_dict())
    with torch.autocast(DEVICE.type, dtype=dtype):
        ida_fused = ida_ops.ida_triton(x, cond_half, *fused_layer.spatial_gamma.weights())
        sft_fused = fused_layer.forward_resized(x, cond_full, cond_half, noise)
        ida_ref = ida_reference(x, cond_half, *ref_layer.spatial_gamma.weights())
        sft_ref = ref_layer.forward_resized(x, cond_full, cond_half, noise)
    assert ida_fused.dtype == ida_ref.dtype == dtype
    assert sft_fused.dtype == sft_ref.dtype == torch.float32
    exact_ida = ida_reference(*(t.double() for t in (x, cond_half, *ref_layer.spatial_gamma.weights())))
    assert rel_err(ida_fused, exact_ida) < 2e-2
    assert (
        rel_err(sft_fused, ref_layer.double().forward_resized(*(t.double() for t in (x, cond_full, cond_half, noise))))
        < 2e-2
    )


# ----------------------------------------------------------------------------- torch.library / torch.compile


def _tiny_ida_args(requires_grad=True):
    x, _, m, _ = _inputs(2, 16, 6, 8, torch.float32, False)
    layer = _seeded(IDA(16, COND), seed=6)
    tensors = [x, m] + [w.detach() for w in layer.weights()]
    return [t.clone().requires_grad_(requires_grad) for t in tensors]


def _tiny_sft_args():
    x, cond_full, cond_half, noise = _inputs(2, 16, 6, 8, torch.float32, True)
    layer = _seeded(SFT(COND, 16), seed=7)
    weights = [
        layer.convs_gamma[0].conv2d.weight,
        layer.convs_gamma[1].conv2d.weight,
        layer.convs_beta[0].conv2d.weight,
        layer.convs_beta[1].conv2d.weight,
        *layer.spatial_gamma.weights(),
    ]
    return (
        [t.detach().clone().requires_grad_() for t in (x, cond_full, cond_half)],
        noise,
        [w.detach().clone().requires_grad_() for w in weights],
    )


@needs_kernels
def test_opcheck_ida():
    args = _tiny_ida_args()
    torch.library.opcheck(torch.ops.udm_fast.ida_triton_fwd.default, (*args, torch.float32, True))
    out, a, bx = torch.ops.udm_fast.ida_triton_fwd(*args, torch.float32, True)
    grad_out = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.udm_fast.ida_triton_bwd.default, (grad_out, *[t.detach() for t in args], a, bx, torch.float32)
    )


@needs_kernels
@pytest.mark.parametrize("explicit_noise", [True, False])
def test_opcheck_sft(explicit_noise):
    feats, noise, weights = _tiny_sft_args()
    seed = torch.tensor([5], dtype=torch.int64, device=DEVICE)
    noise_args = (noise.clone().requires_grad_(), None) if explicit_noise else (None, seed)
    fwd_args = (*feats, *noise_args, *weights, 0.01, torch.float32, True)
    torch.library.opcheck(torch.ops.udm_fast.sft_triton_fwd.default, fwd_args)
    out, a, bx = torch.ops.udm_fast.sft_triton_fwd(*fwd_args)
    plain = [t.detach() if t is not None else None for t in (*feats, *noise_args, *weights)]
    torch.library.opcheck(
        torch.ops.udm_fast.sft_triton_bwd.default, (torch.randn_like(out), *plain, a, bx, 0.01, torch.float32)
    )


@needs_kernels
def test_opcheck_noise():
    seed = torch.tensor([9], dtype=torch.int64, device=DEVICE)
    torch.library.opcheck(torch.ops.udm_fast.sft_triton_noise.default, (seed, 2, 4, 6))


@needs_kernels
def test_compile_fullgraph_matches_eager():
    """IDA + SFT on the triton backend under torch.compile(fullgraph=True), forward and backward."""
    x, cond_full, cond_half, noise = _inputs(1, 16, 8, 12, torch.float32, False)
    ida = _seeded(IDA(16, COND, backend="triton"), seed=8)
    sft = _seeded(SFT(COND, 16, backend="triton"), seed=9)

    def step(x, cond_full, cond_half, noise):
        return sft.forward_resized(ida(x, cond_half), cond_full, cond_half, noise).square().mean()

    compiled = torch.compile(step, fullgraph=True, backend="inductor" if CUDA else "aot_eager")
    eager_in, compiled_in = _leaves([x, cond_full, cond_half]), _leaves([x, cond_full, cond_half])
    eager_loss = step(*eager_in, noise)
    eager_grads = torch.autograd.grad(eager_loss, eager_in + list(ida.parameters()) + list(sft.parameters()))
    compiled_loss = compiled(*compiled_in, noise)
    compiled_grads = torch.autograd.grad(compiled_loss, compiled_in + list(ida.parameters()) + list(sft.parameters()))
    assert rel_err(compiled_loss, eager_loss) < 1e-5
    for got, want in zip(compiled_grads, eager_grads):
        assert rel_err(got, want) < 1e-5


@needs_kernels
def test_compile_fullgraph_in_kernel_noise():
    """noise=None under torch.compile: the Philox seed is drawn in the graph from torch's RNG."""
    x, cond_full, cond_half, _ = _inputs(1, 16, 8, 8, torch.float32, False)
    sft = _seeded(SFT(COND, 16, backend="triton"), seed=10)
    compiled = torch.compile(
        lambda *t: sft.forward_resized(*t), fullgraph=True, backend="inductor" if CUDA else "aot_eager"
    )
    with torch.no_grad():
        torch.manual_seed(2)
        first = compiled(x, cond_full, cond_half)
        torch.manual_seed(2)
        again = compiled(x, cond_full, cond_half)
        different = compiled(x, cond_full, cond_half)
    assert torch.isfinite(first).all() and torch.equal(first, again) and not torch.equal(first, different)


# ----------------------------------------------------------------------------- edge cases and errors


@needs_kernels
def test_empty_batch():
    args = _tiny_ida_args()
    empty = [args[0][:0].detach().requires_grad_(), args[1][:0].detach().requires_grad_()] + args[2:]
    out = ida_ops.ida_triton(*empty)
    assert out.shape == (0, 16, 6, 8)
    out.sum().backward()
    assert all(torch.count_nonzero(w.grad) == 0 for w in args[2:])


@needs_kernels
def test_unsupported_activation_falls_back_to_composition():
    """An activation the fused kernel lacks keeps the layer correct: torch MLPs + the triton IDA, said by
    the dispatcher's warning (the fallback rule of udm_fast/ops/dispatch.py)."""
    from udm_fast.ops.dispatch import BackendFallbackWarning

    with pytest.warns(BackendFallbackWarning, match="not Tanh / Tanh; running torch MLPs around the triton IDA"):
        run_sft_case(1, 16, 8, 8, torch.float32, False, activation=torch.nn.Tanh())


def test_bad_inputs_raise():
    args = _tiny_ida_args(requires_grad=False)
    with pytest.raises(ValueError, match="even"):
        ida_ops.ida_triton(args[0][..., :5], *args[1:])
    with pytest.raises(ValueError, match="map must be"):
        ida_ops.ida_triton(args[0], args[1][..., :3], *args[2:])
    with pytest.raises(ValueError, match="w_x must have shape"):
        ida_ops.ida_triton(*args[:4], args[4][:, :8], *args[5:])
    with pytest.raises(TypeError, match="dtype"):
        ida_ops.ida_triton(args[0].double(), *args[1:])
    feats, noise, weights = _tiny_sft_args()
    with pytest.raises(ValueError, match="noise must have shape"):
        sft_ops.sft_triton(*feats, *weights, slope=0.01, noise=noise[:, :, :4])
    with pytest.raises(ValueError, match="cond_full"):
        sft_ops.sft_triton(feats[0], feats[1][..., :4], feats[2], *weights, slope=0.01, noise=noise)
    with pytest.raises(TypeError, match="noise must be"):
        sft_ops.sft_triton(*feats, *weights, slope=0.01, noise=3)


@needs_kernels
@pytest.mark.parametrize(
    "make_layer", [lambda: IDA(16, COND, backend="triton"), lambda: SFT(COND, 16, backend="triton")], ids=["ida", "sft"]
)
def test_double_backward_fails_by_name(make_layer):
    torch.manual_seed(0)
    layer = make_layer().to(DEVICE)
    x = torch.randn(1, 16, 8, 8, device=DEVICE, requires_grad=True)
    (grad,) = torch.autograd.grad(
        layer(x, torch.rand(1, COND, 4, 4, device=DEVICE)).square().sum(), x, create_graph=True
    )
    with pytest.raises(NotImplementedError, match="double backward .* backend='reference'"):
        grad.square().sum().backward()


@pytest.mark.skipif(CUDA or not INTERPRETED, reason="concerns the CPU interpreter in this process")
@needs_kernels
def test_interpreter_bfloat16_is_refused_or_right():
    """Triton's interpreter gets tl.dot on bfloat16 wrong (3.6-3.8): the kernels must say so instead
    of returning garbage; an interpreter that gets it right must match the reference."""
    torch.manual_seed(0)
    layer = IDA(16, COND, backend="triton").to(torch.bfloat16)
    x, m = torch.randn(1, 16, 8, 8, dtype=torch.bfloat16), torch.rand(1, COND, 4, 4, dtype=torch.bfloat16)
    if _common.interpreter_dot_problem(tl.bfloat16) is None:
        got = layer(x, m)
        layer.backend = "reference"
        assert rel_err(got, layer(x, m)) < 2e-2
        return
    with pytest.raises(RuntimeError, match="tl.dot on torch.bfloat16 operands wrongly"):
        layer(x, m)
    with pytest.raises(RuntimeError, match="tl.dot on torch.bfloat16"), torch.autocast("cpu", dtype=torch.bfloat16):
        SFT(COND, 16, backend="triton")(x.float(), m.float())


def test_int32_guard_counts_strides_and_the_output():
    ida = ida_ops.kernels("ida")
    x, m = torch.empty(1, 16, 8, 8, device="meta"), torch.empty(1, COND, 4, 4, device="meta")
    w_x, w_out = torch.empty(12, 16, 3, 3, device="meta"), torch.empty(12, 16, 2, 2, device="meta")
    assert ida._dims(x, m, w_x, w_out, None, torch.float32)["N_lo"] == 16
    sparse_view = x.as_strided(x.shape, (1024, 2**28, 8, 1))  # few elements, offsets beyond 2**31
    wide_out = torch.empty(12, 2**26, 2, 2, device="meta")  # C_out * H * W beyond 2**31
    for args, maps in (
        ((sparse_view, m, w_x, w_out), ()),
        ((x, m, w_x, wide_out), ()),
        ((x, m, w_x, w_out), (sparse_view,)),
    ):
        with pytest.raises(ValueError, match="int32"):
            ida._dims(*args, None, torch.float32, maps=maps)


@pytest.mark.skipif(CUDA or not INTERPRETED, reason="concerns the CPU interpreter in this process")
def test_broken_interpreter_is_reported_by_name(monkeypatch):
    monkeypatch.setattr(_common, "interpreter_problem", lambda: "this interpreter cannot loop (numpy too new)")
    x, m = torch.randn(1, 16, 8, 8), torch.rand(1, COND, 4, 4)
    with pytest.raises(RuntimeError, match="numpy too new"):
        IDA(16, COND, backend="triton")(x, m)


def test_auto_backend_prefers_triton_on_cuda_only():
    from udm_fast.ops import backend

    assert backend.resolve("auto", torch.device("cpu")) == "reference"
    assert backend.resolve("auto", torch.device("cuda")) == "triton"


# ----------------------------------------------------------------------------- GPU code generation without a GPU


def _compile_check(*args):
    """Runs compile_check (every kernel variant -> cubin via ptxas) in a process without the interpreter
    (loaded through ``kernels``, so a source checkout on PYTHONPATH works as well as an install)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import sys; from udm_fast.ops.triton_loader import kernels; "
        "sys.exit(kernels('compile_check').main(sys.argv[1:]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("ok ") >= 14  # every kernel of the SFT and IDA paths, both noise modes


def test_kernels_compile_for_h100():
    _compile_check("--arch", "90", "--dtype", "bfloat16", "--channels", "64")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("UDM_FAST_SLOW_TESTS") != "1", reason="compile matrix: UDM_FAST_SLOW_TESTS=1")
def test_kernels_compile_matrix():
    _compile_check("--arch", "90", "--dtype", "float32", "float16", "--channels", "16", "128", "256", "512")
    _compile_check("--arch", "80", "--dtype", "bfloat16", "float16", "float32", "--channels", "64", "256")
