"""bench/jpeg_floor.py: the shifted grid is a real shift of the block grid; the oracles' ratios are honest."""

import importlib.util
import os

import pytest
import torch

from udm_fast.synthesis.degrade import jpeg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("jpeg_floor", os.path.join(ROOT, "bench", "jpeg_floor.py"))
jpeg_floor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(jpeg_floor)


def _photos():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=48, mode="bilinear")
    return (smooth + 0.05 * torch.rand(2, 3, 48, 48, generator=g)).clamp(0, 1)


def test_a_shift_of_16_pixels_is_the_same_grid():
    """Padding by a whole 4:2:0 MCU (16 px) keeps every block where it was: away from the padded border the
    result equals jpeg(), so the comparison below sees the grid and nothing else; a 4-px shift differs."""
    x = _photos()
    shifted = jpeg_floor.jpeg_shifted(x, 74, 4)
    padded = torch.nn.functional.pad(x, (16, 0, 16, 0), mode="reflect")
    same_grid = jpeg(padded, 74)[..., 16:, 16:]
    assert torch.equal(same_grid[..., 8:, 8:], jpeg(x, 74)[..., 8:, 8:])
    assert not torch.equal(shifted, jpeg(x, 74))  # a shift of 4 is another grid
    assert shifted.shape == x.shape


def test_shift_out_of_range_is_refused():
    with pytest.raises(ValueError, match="shift"):
        jpeg_floor.jpeg_shifted(_photos(), 74, 8)


def test_oracles_rank_as_expected():
    rows = {label: (d, r) for label, d, r in jpeg_floor.oracle_distances(_photos(), 60, [4], [30])}
    assert rows["identity (x)"][1] == pytest.approx(1.0)
    assert rows["y re-encoded at q60"][0] < rows["identity (x)"][0]  # JPEG is nearly idempotent
    assert rows["q60, grid shifted 4 px"][0] > 0
