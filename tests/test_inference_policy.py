"""CPU inference precision of UDM.synthesize (udm_fast/models/inference.py): bf16 within its stated
tolerance of float64, fp32 the float32 computation, the policy's choices, and the CLI flags."""

import os

import pytest
import torch
import torch.nn.functional as F

from udm_fast import UDM, build_info, default_model
from udm_fast.cli import build_parser
from udm_fast.cli.common import apply_inference_arguments
from udm_fast.models.inference import BF16_TOLERANCE, cpu_has_native_bf16, synthesis_autocast_dtype
from udm_fast.ops.backend import resolve


def _images(count: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, size // 8, size // 8, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (smooth + 0.05 * torch.randn(smooth.shape, generator=g)).clamp(0, 1)


def _synthesize(model: UDM, x, e_g, e_l, precision: str) -> torch.Tensor:
    model.precision = precision
    with torch.no_grad():
        return model.synthesize(x, e_g, e_l, noise=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kind, size", [("bundled", 64), ("default-size", 32)])
def test_bf16_stays_within_tolerance_of_float64(kind, size):
    torch.manual_seed(0)
    model = (default_model() if kind == "bundled" else UDM()).eval()
    x, y = _images(2, size, 0), _images(2, size, 1)
    with torch.no_grad():
        e_g, e_l = model.encode(y)
    exact = _synthesize(model.double(), x.double(), e_g.double(), e_l.double(), "fp32")
    model.float()
    fp32 = _synthesize(model, x, e_g, e_l, "fp32")
    bf16 = _synthesize(model, x, e_g, e_l, "bf16")
    assert fp32.dtype == bf16.dtype == torch.float32
    assert (fp32.double() - exact).abs().max() < 1e-4
    bf16_error = (bf16.double() - exact).abs()
    assert bf16_error.max() > 1e-4, "bf16 precision did not change the computation"
    assert bf16_error.mean() <= BF16_TOLERANCE["mean_abs"]
    assert bf16_error.max() <= BF16_TOLERANCE["max_abs"]


def test_auto_is_bf16_where_native_else_fp32():
    model = default_model().eval()
    x, y = _images(1, 32, 2), _images(1, 32, 3)
    with torch.no_grad():
        e_g, e_l = model.encode(y)
    auto = _synthesize(model, x, e_g, e_l, "auto")
    if cpu_has_native_bf16():
        assert torch.equal(auto, _synthesize(model, x, e_g, e_l, "bf16"))
    else:
        torch.testing.assert_close(auto, _synthesize(model, x, e_g, e_l, "fp32"), rtol=1e-5, atol=1e-5)


def test_calls_that_need_gradients_compute_as_called():
    model = default_model().eval()
    x, y = _images(1, 32, 6), _images(1, 32, 7)
    with torch.no_grad():
        e_g, e_l = model.encode(y)
    fp32 = _synthesize(model, x, e_g, e_l, "fp32")
    model.precision = "bf16"
    x = x.clone().requires_grad_(True)
    out = model.synthesize(x, e_g, e_l, noise=torch.Generator().manual_seed(3))
    assert torch.equal(out.detach(), fp32)
    out.sum().backward()
    assert x.grad.dtype == torch.float32


def test_accelerated_paths_run_channels_last_and_fp32_moves_the_weights_back():
    torch.manual_seed(0)
    model = UDM(filters=16).eval()
    weight = next(p for p in model.generator.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] == 3)
    x = _images(1, 32, 5)
    with torch.no_grad():
        e_g, e_l = model.encode(x)
    fp32 = _synthesize(model, x, e_g, e_l, "fp32")
    assert weight.is_contiguous()
    for precision in ("auto", "bf16"):
        assert _synthesize(model, x, e_g, e_l, precision).dtype == torch.float32
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert torch.equal(_synthesize(model, x, e_g, e_l, "fp32"), fp32)
    assert weight.is_contiguous()


def test_policy_leaves_training_gpu_other_dtypes_and_caller_autocast_alone():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert synthesis_autocast_dtype("bf16", cpu, torch.float32, training=False) == torch.bfloat16
    assert synthesis_autocast_dtype("fp32", cpu, torch.float32, training=False) is None
    assert synthesis_autocast_dtype("bf16", cpu, torch.float32, training=True) is None
    assert synthesis_autocast_dtype("bf16", cuda, torch.float32, training=False) is None
    assert synthesis_autocast_dtype("bf16", cpu, torch.float64, training=False) is None
    with torch.autocast("cpu", dtype=torch.float16):
        assert synthesis_autocast_dtype("bf16", cpu, torch.float32, training=False) is None


def test_unknown_precision_is_refused_by_name():
    model = default_model().eval()
    x = _images(1, 32, 4)
    with torch.no_grad():
        e_g, e_l = model.encode(x)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        _synthesize(model, x, e_g, e_l, "fp16")


@pytest.mark.parametrize(
    "command",
    [
        ["transfer", "--clean", "x.png", "--degraded", "y.png", "--out", "z.png"],
        ["demo"],
        ["eval", "--clean", "photos"],
    ],
)
def test_cli_inference_flags(command):
    parser = build_parser()
    args = parser.parse_args(command)
    assert args.precision is None and args.global_code is None  # the model's own settings
    model = UDM(filters=16)
    apply_inference_arguments(model, args)
    assert model.precision == os.environ.get("UDM_FAST_PRECISION", "auto") and model.global_code == "rounded"
    both = ["--precision", "bf16", "--global-code", "continuous"]
    apply_inference_arguments(model, parser.parse_args(command + both))
    assert model.precision == "bf16" and model.global_code == "continuous"
    for bad in (["--precision", "fp16"], ["--global-code", "noisy"]):
        with pytest.raises(SystemExit):
            parser.parse_args(command + bad)


def test_auto_backend_never_picks_the_cuda_tile_code_on_cpu():
    assert resolve("auto", torch.device("cpu")) == "reference"
    cpu = build_info()["cpu"]
    if cpu["available"]:
        assert "test vehicle" in cpu["detail"]
