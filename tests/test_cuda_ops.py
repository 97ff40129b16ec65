"""The fused IDA / SFT ops of the ``cuda`` backend: udm_fast::ida_forward, ida_backward, sft_forward.

On the CPU these ops run the same tile code (csrc/ida_core.h) as the CUDA kernels, so the CPU
tests check its indexing and math against ``ida_reference`` / a functional SFT in float64 and
against autograd; the ``gpu`` tests check the CUDA kernels themselves.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from generator_training import check_trains_like_reference, generator_loss_curve

from udm_fast import IDA, SFT, ops
from udm_fast.ops.dispatch import BackendFallbackWarning
from udm_fast.ops.reference import ida_reference

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason="udm_fast._C missing")

if ops.AVAILABLE:
    from udm_fast.ops import ida_cuda


def rel_err(actual, expected):
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def off_kinks(source, pre_activation, dtype, generator, scale):
    """Nudge the pixels of ``source`` (float64) whose activation inputs ``pre_activation(source)`` (after
    rounding to ``dtype``) lie within 1e-4 of the LeakyReLU kink, where a float64 reference and a
    lower-precision kernel may take different derivative branches. ``scale``: activation pixels per
    source pixel along each axis."""
    for _ in range(20):
        near = (pre_activation(source.to(dtype).double()).abs() < 1e-4).any(dim=1, keepdim=True)
        if scale > 1:
            near = F.max_pool2d(near.double(), scale) > 0
        if not near.any():
            return source
        source = source + 1e-2 * near * torch.randn(source.shape, generator=generator, dtype=torch.float64)
    raise AssertionError("could not move the test inputs off the activation kinks")


def ida_operands(b, c, h, w, cc=8, cm=None, co=None, dtype=torch.float32, device="cpu", seed=0):
    """x, m and IDA weights scaled by 1/sqrt(fan-in) so every stage is O(1)."""
    cm = (c + cc) // 2 if cm is None else cm
    co = c if co is None else co
    g = torch.Generator().manual_seed(seed)
    shapes = [
        (b, c, h, w),
        (b, cc, h // 2, w // 2),
        (cc, cm, 2, 2),
        (cm, cm, 3, 3),
        (cm, c, 3, 3),
        (cm, co, 2, 2),
        (co,),
    ]
    scales = [1.0, 1.0, cc**-0.5, (9 * cm) ** -0.5, (9 * c) ** -0.5, cm**-0.5, 1.0]
    x, m, w_up, *rest = [torch.randn(s, generator=g, dtype=torch.float64) * k for s, k in zip(shapes, scales)]
    w_up_rounded = w_up.to(dtype).double()
    m = off_kinks(m, lambda src: F.conv_transpose2d(src, w_up_rounded, stride=2), dtype, g, scale=2)
    return [t.to(dtype=dtype, device=device) for t in (x, m, w_up, *rest)]


def sft_operands(b, c, h, w, cc=8, dtype=torch.float32, device="cpu", seed=0):
    """x, cond, cond_half, noise, the four MLP weights and the IDA weights of an SFT layer."""
    x, cond_half, *ida_w = ida_operands(b, c, h, w, cc, dtype=dtype, device=device, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    rd = (c + cc) // 4
    shapes = [(b, cc, h, w), (b, 1, h, w), (rd, cc, 1, 1), (c, rd, 1, 1), (rd, cc + 1, 1, 1), (c, rd, 1, 1)]
    scales = [1.0, 1.0, cc**-0.5, rd**-0.5, (cc + 1) ** -0.5, rd**-0.5]
    cond, noise, *mlp = [torch.randn(s, generator=g, dtype=torch.float64) * k for s, k in zip(shapes, scales)]
    noise_r, w_gamma1_r, w_beta1_r = (t.to(dtype).double() for t in (noise, mlp[0], mlp[2]))
    cond = off_kinks(
        cond,
        lambda src: torch.cat((F.conv2d(src, w_gamma1_r), F.conv2d(torch.cat((src, noise_r), 1), w_beta1_r)), 1),
        dtype,
        g,
        scale=1,
    )
    return [x, *(t.to(dtype=dtype, device=device) for t in (cond, cond_half, noise, *mlp)), *ida_w]


def sft_reference(x, cond, cond_half, noise, w_gamma1, w_gamma2, w_beta1, w_beta2, *ida_w, slope):
    """The SFT layer as torch ops: x * (1 + gamma) + beta + IDA, pre-activation 1x1 MLPs."""
    gamma = F.conv2d(F.leaky_relu(F.conv2d(cond, w_gamma1), slope), w_gamma2)
    beta = F.conv2d(F.leaky_relu(F.conv2d(torch.cat((cond, noise), 1), w_beta1), slope), w_beta2)
    return x * (1 + gamma) + beta + ida_reference(x, cond_half, *ida_w)


def to_layout(tensors, channels_last):
    if not channels_last:
        return tensors
    return [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and t.shape[-1] > 1 else t for t in tensors]


def autograd_grads(fn, operands, grad_out):
    """Gradients of sum(fn(*operands) * grad_out) in float64 with autograd."""
    leaves = [t.detach().double().requires_grad_(True) for t in operands]
    fn(*leaves).backward(grad_out.double())
    return [t.grad for t in leaves]


def poison_cuda_allocator(*like):
    """Leave NaN-filled blocks (all bits set) of the sizes of the coming outputs in the caching
    allocator, which hands them out again, so an element the kernels leave unwritten shows up."""
    blocks = [torch.full((t.numel() * t.element_size(),), 0xFF, dtype=torch.uint8, device="cuda") for t in like]
    del blocks


def assert_written_and_close(got, want, tol, what):
    assert torch.isfinite(got).all(), f"{what}: elements left unwritten (NaN poison) or non-finite"
    assert rel_err(got, want) < tol, f"{what}: relative error {rel_err(got, want):.2e}"


def layout_format(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def check_ida_op(shape, channels_last, dtype, device, tol):
    """ida_forward vs ida_reference and ida_backward vs autograd, both in float64, with outputs in the
    input's layout; on CUDA the outputs land in NaN-poisoned memory."""
    operands = to_layout(ida_operands(*shape, dtype=dtype, device=device), channels_last)
    grad_out = torch.randn(shape, dtype=dtype, device=device)
    if device == "cuda":
        poison_cuda_allocator(operands[0])
    out = torch.ops.udm_fast.ida_forward(*operands)
    assert out.dtype == dtype and out.is_contiguous(memory_format=layout_format(channels_last))
    assert_written_and_close(out, ida_reference(*[t.double() for t in operands]), tol, "out")
    if device == "cuda":
        poison_cuda_allocator(*operands[:2])
    grads = torch.ops.udm_fast.ida_backward(grad_out, *operands[:6])
    assert grads[0].is_contiguous(memory_format=layout_format(channels_last))
    names = ["x", "m", "w_up", "w_map", "w_x", "w_out", "b_out"]
    for name, got, want, operand in zip(names, grads, autograd_grads(ida_reference, operands, grad_out), operands):
        assert got.shape == operand.shape and got.dtype == dtype, name
        assert_written_and_close(got, want, tol, f"d{name}")


def check_sft_op(shape, channels_last, slope, dtype, device, tol):
    """The fused SFT forward and its autograd backward vs the torch-op SFT in float64."""
    operands = to_layout(sft_operands(*shape, dtype=dtype, device=device), channels_last)
    leaves = [t.detach().clone().requires_grad_(True) for t in operands]
    if device == "cuda":
        poison_cuda_allocator(operands[0])
    out = ida_cuda.sft(*leaves, slope)
    assert out.dtype == dtype and out.is_contiguous(memory_format=layout_format(channels_last))
    reference = lambda *a: sft_reference(*a, slope=slope)  # noqa: E731
    assert_written_and_close(out, reference(*[t.double() for t in operands]), tol, "out")
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    for i, want in enumerate(autograd_grads(reference, operands, grad_out)):
        assert_written_and_close(leaves[i].grad, want, tol, f"grad of operand {i}")


TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


# ------------------------------------------------------------------------------------------- IDA


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 16, 20, 36), (1, 64, 12, 20), (1, 512, 4, 6)])  # odd batch, non-square,
# ragged tiles, and the largest supported C (several channel chunks per pass)
def test_ida_forward_and_backward(shape, channels_last, dtype):
    check_ida_op(shape, channels_last, dtype, "cpu", TOL[dtype])


def test_ida_odd_channel_counts_and_strided_views():
    # Cm = 5 and Co = 7 are not multiples of the 4-channel micro-tiles; C = 20 leaves a partial chunk;
    # x and grad_out are non-contiguous views
    x, m, *w = ida_operands(2, 20, 10, 14, cc=3, cm=5, co=7, dtype=torch.float64)
    x_view = torch.stack((x, -x), dim=-1)[..., 0]  # x with a column stride of 2
    grad_out = torch.randn(2, 7, 10, 28, dtype=torch.float64)[..., 1::2]
    out = torch.ops.udm_fast.ida_forward(x_view, m, *w)
    assert rel_err(out, ida_reference(x, m, *w)) < 1e-12
    grads = torch.ops.udm_fast.ida_backward(grad_out, x_view, m, *w[:4])
    for got, want in zip(grads, autograd_grads(ida_reference, [x, m, *w], grad_out)):
        assert rel_err(got, want) < 1e-12


def test_ida_gradcheck_float64():
    operands = [t.requires_grad_(True) for t in ida_operands(1, 4, 4, 6, cc=3, cm=5, co=6, dtype=torch.float64)]
    assert torch.autograd.gradcheck(ida_cuda.ida, operands)


def test_ida_bfloat16_on_cpu():
    operands = ida_operands(2, 16, 8, 12, dtype=torch.bfloat16)
    out = torch.ops.udm_fast.ida_forward(*operands)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ida_reference(*[t.double() for t in operands])) < 2e-2


def test_ida_empty_batch():
    x, m, *w = ida_operands(0, 16, 8, 8)
    assert torch.ops.udm_fast.ida_forward(x, m, *w).shape == (0, 16, 8, 8)
    grads = torch.ops.udm_fast.ida_backward(torch.zeros(0, 16, 8, 8), x, m, *w[:4])
    assert grads[0].shape == x.shape and grads[1].shape == m.shape
    assert all(torch.equal(g, torch.zeros_like(t)) for g, t in zip(grads[2:], w))


def _replace(operands, index, value):
    return [value if i == index else t for i, t in enumerate(operands)]


@pytest.mark.parametrize(
    "index,value,message",
    [
        (0, torch.randn(2, 16, 7, 8), "even"),
        (0, torch.randn(2, 16, 8), "4-D"),
        (1, torch.randn(2, 8, 3, 4), r"m must have shape \[2, 8, 4, 4\]"),
        (4, torch.randn(12, 15, 3, 3), "w_x must have shape"),
        (6, torch.randn(3), "b_out must have shape"),
        (2, torch.randn(8, 12, 2, 2, dtype=torch.float64), "w_up has dtype Double"),
        (0, torch.randint(0, 3, (2, 16, 8, 8)), "expected float32"),
    ],
)
def test_ida_rejects_bad_inputs(index, value, message):
    operands = _replace(ida_operands(2, 16, 8, 8), index, value)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.udm_fast.ida_forward(*operands)


# ------------------------------------------------------------------------------------------- SFT


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "channels_last,slope,shape",
    [
        (False, 0.01, (3, 16, 10, 14)),
        (True, 0.0, (3, 16, 10, 14)),
        (True, 0.01, (1, 64, 8, 12)),
        (False, 0.01, (1, 512, 4, 6)),
    ],
)
def test_sft_forward_and_backward(shape, slope, channels_last, dtype):
    check_sft_op(shape, channels_last, slope, dtype, "cpu", TOL[dtype])


def test_sft_gradcheck_float64():
    operands = [t.requires_grad_(True) for t in sft_operands(1, 4, 4, 6, cc=3, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: ida_cuda.sft(*a, 0.01), operands)


@pytest.mark.parametrize(
    "index,value,message",
    [
        (1, torch.randn(2, 8, 8, 6), r"cond must have shape \[2, 8, 8, 8\]"),
        (3, torch.randn(2, 2, 8, 8), "noise must have shape"),
        (6, torch.randn(6, 8, 1, 1), r"w_beta1 must have shape \[6, 9, 1, 1\]"),
        (11, torch.randn(12, 8, 2, 2), "keep the channel count"),
    ],
)
def test_sft_rejects_bad_inputs(index, value, message):
    operands = _replace(sft_operands(2, 16, 8, 8), index, value)
    if index == 11:
        operands[12] = torch.randn(8)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.udm_fast.sft_forward(*operands, 0.01)


# ----------------------------------------------------------------------- registration and compile


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(channels_last):
    ida_args = to_layout(ida_operands(2, 8, 4, 6, cc=3), channels_last)
    sft_args = to_layout(sft_operands(2, 8, 4, 6, cc=3), channels_last)
    grad_out = torch.randn(2, 8, 4, 6)
    torch.library.opcheck(torch.ops.udm_fast.ida_forward.default, [t.requires_grad_(True) for t in ida_args])
    torch.library.opcheck(torch.ops.udm_fast.ida_backward.default, [grad_out, *[t.detach() for t in ida_args[:6]]])
    torch.library.opcheck(torch.ops.udm_fast.sft_forward.default, [*[t.requires_grad_(True) for t in sft_args], 0.01])


def test_compile_fullgraph_without_graph_breaks():
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = SFT(8, 16, backend="cuda").double()
    ida_layer = IDA(16, 8, backend="cuda").double()

    def step(x, cond, noise):
        return ida_layer(layer(x, cond, noise), cond).square().sum()

    x = torch.randn(2, 16, 8, 12, dtype=torch.float64, requires_grad=True)
    cond, noise = torch.randn(2, 8, 4, 6, dtype=torch.float64), torch.randn(2, 1, 8, 12, dtype=torch.float64)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x, cond, noise)
    (grad,) = torch.autograd.grad(loss, x)
    loss_eager = step(x, cond, noise)
    (grad_eager,) = torch.autograd.grad(loss_eager, x)
    assert rel_err(loss, loss_eager) < 1e-12 and rel_err(grad, grad_eager) < 1e-12


# ------------------------------------------------------------------------------------------ layers


def test_layers_use_fused_ops_and_match_reference():
    torch.manual_seed(0)
    ida_layer = IDA(16, 8).double()
    sft_layer = SFT(8, 16, activation=torch.nn.ReLU()).double()
    x, cond = torch.randn(3, 16, 12, 16, dtype=torch.float64), torch.randn(3, 8, 6, 8, dtype=torch.float64)
    noise = torch.randn(3, 1, 12, 16, dtype=torch.float64)
    results = {}
    for name in ("reference", "cuda"):
        ida_layer.backend = sft_layer.backend = name
        results[name] = (ida_layer(x, cond), sft_layer(x, cond, noise))
    for fused, reference in zip(results["cuda"], results["reference"]):
        assert rel_err(fused, reference) < 1e-12


def test_autocast_computes_in_bfloat16_with_the_reference_dtypes():
    torch.manual_seed(0)
    sft_layer, ida_layer = SFT(8, 16, backend="cuda"), IDA(16, 8, backend="cuda")
    x, cond, noise = torch.randn(2, 16, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 1, 8, 8)
    results = {}
    for name in ("cuda", "reference"):
        sft_layer.backend = ida_layer.backend = name
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results[name] = (sft_layer(x, cond, noise), ida_layer(x, cond))
    # the reference's x * (1 + gamma) promotes to x's float32; its ConvTranspose2d gives bfloat16
    for fused, reference in zip(results["cuda"], results["reference"]):
        assert fused.dtype == reference.dtype
        assert rel_err(fused, reference) < 2e-2
    assert results["cuda"][0].dtype == torch.float32 and results["cuda"][1].dtype == torch.bfloat16


def test_mixed_dtypes_outside_autocast_are_rejected_by_name():
    torch.manual_seed(0)
    x, cond = torch.randn(1, 16, 8, 8, dtype=torch.float64), torch.randn(1, 8, 4, 4, dtype=torch.float64)
    for layer in (IDA(16, 8, backend="cuda"), SFT(8, 16, backend="cuda")):  # float32 weights
        with pytest.raises(TypeError, match="must have x's dtype torch.float64 outside autocast"):
            layer(x, cond)


@pytest.mark.parametrize(
    "make_layer",
    [
        lambda: IDA(16, 8, backend="cuda"),
        lambda: SFT(8, 16, backend="cuda"),
        lambda: SFT(8, 16, activation=torch.nn.GELU(), backend="cuda"),
    ],  # GELU: torch MLPs around the cuda IDA
    ids=["ida", "sft", "sft_fallback"],
)
def test_double_backward_fails_by_name(make_layer):
    torch.manual_seed(0)
    layer = make_layer()
    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackendFallbackWarning)
        (grad,) = torch.autograd.grad(layer(x, torch.randn(1, 8, 4, 4)).square().sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward .* backend='reference'"):
        grad.square().sum().backward()


def test_meta_tensors_give_shapes():
    ida_layer, sft_layer = IDA(16, 8, backend="cuda").to("meta"), SFT(8, 16, backend="cuda").to("meta")
    x, cond = torch.empty(2, 16, 8, 12, device="meta"), torch.empty(2, 8, 4, 6, device="meta")
    assert ida_layer(x, cond).shape == sft_layer(x, cond, torch.empty(2, 1, 8, 12, device="meta")).shape == x.shape


# --------------------------------------------------------------------------------------------- GPU
# The same checks on the CUDA kernels, outputs in NaN-poisoned memory.

GPU_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape,channels_last",
    [
        ((1, 16, 8, 8), False),
        ((3, 64, 48, 80), True),
        ((3, 64, 48, 80), False),
        ((3, 128, 16, 24), True),
        ((1, 256, 32, 32), True),
        ((3, 256, 8, 8), False),
    ],
)
def test_gpu_ida_forward_and_backward(shape, channels_last, dtype):
    check_ida_op(shape, channels_last, dtype, "cuda", GPU_TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape,channels_last",
    [((3, 16, 8, 8), False), ((3, 64, 48, 80), True), ((1, 128, 16, 24), True), ((3, 256, 32, 32), True)],
)
def test_gpu_sft_forward_and_backward(shape, channels_last, dtype):
    check_sft_op(shape, channels_last, 0.01, dtype, "cuda", GPU_TOL[dtype])


@pytest.mark.gpu
def test_gpu_backward_follows_deterministic_algorithms():
    layer = IDA(16, 8, backend="cuda").cuda()
    x = torch.randn(1, 16, 8, 8, device="cuda", requires_grad=True)
    out = layer(x, torch.randn(1, 8, 4, 4, device="cuda")).sum()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="no deterministic implementation"):
            out.backward()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.gpu
def test_gpu_rejects_float64():
    operands = ida_operands(1, 16, 8, 8, dtype=torch.float64, device="cuda")
    with pytest.raises(RuntimeError, match="float64 is not supported on CUDA"):
        torch.ops.udm_fast.ida_forward(*operands)


# ------------------------------------------------------------------------- training through the layers


def test_generator_with_fused_layers_trains_like_reference():
    """On the CPU: the cuda backend's tile code (the CUDA kernels' code) in all 32 SFT layers of a generator."""
    cpu = torch.device("cpu")
    check_trains_like_reference(generator_loss_curve("cuda", cpu), generator_loss_curve("reference", cpu), 1e-4)


def test_generator_with_fused_layers_trains_in_bfloat16_autocast():
    cpu = torch.device("cpu")
    losses, reference = (
        generator_loss_curve(backend, cpu, autocast_dtype=torch.bfloat16) for backend in ("cuda", "reference")
    )
    check_trains_like_reference(losses, reference, 2e-2, compared_steps=4, min_drop=0.2)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "autocast_dtype,tolerance,compared_steps,min_drop", [(None, 1e-3, None, 0.25), (torch.bfloat16, 2e-2, 4, 0.2)]
)
def test_gpu_generator_with_fused_layers_trains_like_reference(autocast_dtype, tolerance, compared_steps, min_drop):
    gpu = torch.device("cuda")
    losses, reference = (
        generator_loss_curve(backend, gpu, autocast_dtype=autocast_dtype) for backend in ("cuda", "reference")
    )
    check_trains_like_reference(losses, reference, tolerance, compared_steps=compared_steps, min_drop=min_drop)
