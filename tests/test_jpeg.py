"""udm_fast.jpeg (libjpeg's arithmetic as batched tensor ops) against Pillow's own libjpeg round trip."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pillow_jpeg import pillow_round_trip

from udm_fast.synthesis import degrade as D
from udm_fast.synthesis import jpeg as J


def tensor_round_trip(images: list, qualities: list, device: str = "cpu") -> list:
    """The same images in one batch through J.round_trip on ``device`` (all images of one size)."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(device)
    out = J.round_trip(batch, torch.tensor(qualities, device=device))
    assert out.device == batch.device
    return list(out.permute(0, 2, 3, 1).cpu().numpy())


def sample_images(height: int, width: int, rng: np.random.Generator) -> list:
    """A photo crop, uniform noise and a black-and-white pattern (saturating the range limits)."""
    from skimage import data

    photo = data.astronaut()
    top, left = rng.integers(0, photo.shape[0] - height + 1), rng.integers(0, photo.shape[1] - width + 1)
    return [
        np.ascontiguousarray(photo[top : top + height, left : left + width]),
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        (rng.integers(0, 2, (height, width, 3)) * 255).astype(np.uint8),
    ]


@pytest.mark.parametrize(
    "height,width", [(128, 128), (100, 70), (33, 17), (8, 8), (1, 1), (7, 1), (5, 4), (3, 6), (129, 131), (16, 48)]
)
def test_round_trip_is_bit_identical_to_pillow(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    qualities = [1, 10, 30, 50, 75, 95, 100]
    images = [image for image in sample_images(height, width, rng) for _ in qualities]
    per_image = qualities * 3  # every image at every quality, mixed in one batch
    for got, image, quality in zip(tensor_round_trip(images, per_image), images, per_image):
        expected = pillow_round_trip(image, quality)
        assert np.array_equal(got, expected), (quality, int(np.abs(got.astype(int) - expected).max()))


@pytest.mark.gpu
@pytest.mark.parametrize("height,width", [(128, 128), (33, 17), (7, 1)])
def test_gpu_round_trip_is_bit_identical_to_pillow(height, width):
    images = sample_images(height, width, np.random.default_rng(5))
    qualities = [30, 75, 95]
    for got, image, quality in zip(tensor_round_trip(images, qualities, "cuda"), images, qualities):
        assert np.array_equal(got, pillow_round_trip(image, quality))


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40), quality=st.integers(1, 100), seed=st.integers(0, 2**32 - 1))
def test_round_trip_matches_pillow_on_random_images(height, width, quality, seed):
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.integers(-20, 21, (height, width, 3)), axis=1) + rng.integers(0, 256, (1, 1, 3))
    image = np.clip(smooth, 0, 255).astype(np.uint8)
    assert np.array_equal(tensor_round_trip([image], [quality])[0], pillow_round_trip(image, quality))


def test_quant_tables_follow_the_ijg_quality_scaling():
    tables = J.quant_tables(torch.tensor([50, 100, 1, 75]))
    assert tables[0, 0].tolist() == [list(row) for row in J.LUMA_TABLE]  # quality 50 is the table itself
    assert tables[1].unique().tolist() == [1]  # quality 100: all ones
    assert tables[2].unique().tolist() == [255]  # quality 1: 5000 % scaling, clamped to baseline 255
    assert tables[3, 0, 0, 0].item() == (16 * 50 + 50) // 100  # quality 75: scale 50 %


def test_degrade_jpeg_impls_agree_and_auto_uses_pillow_on_the_cpu(monkeypatch):
    x = torch.rand(4, 3, 24, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    quality = [30, 55, 80, 95]
    tensor = D.jpeg(x, quality, impl="tensor")
    assert tensor.dtype == torch.float64 and torch.equal(tensor, D.jpeg(x, quality, impl="pillow"))

    def refuse(*args):
        raise AssertionError("auto took the tensor path on the CPU")

    monkeypatch.setattr(J, "round_trip", refuse)
    assert torch.equal(D.jpeg(x, quality), tensor)


def test_degrade_pipeline_gives_the_same_pixels_with_either_impl():
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    outputs = [D.degrade(x, config=D.DegradeConfig(jpeg_impl=impl), generator=7)[0] for impl in ("pillow", "tensor")]
    assert torch.equal(*outputs)


def test_bad_arguments_are_named():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="impl must be one of auto, pillow, tensor"):
        D.jpeg(x, 50, impl="nvjpeg")
    with pytest.raises(ValueError, match="jpeg_impl must be one of"):
        D.DegradeConfig(jpeg_impl="fast")
    with pytest.raises(ValueError, match="uint8"):
        J.round_trip(torch.zeros(1, 3, 8, 8), torch.tensor([50]))
    pixels = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="quality must be integers"):
        J.round_trip(pixels, torch.tensor([50]))
    with pytest.raises(ValueError, match="quality must be integers"):
        J.round_trip(pixels, torch.tensor([50.0, 60.0]))
    with pytest.raises(ValueError, match=r"in 1..100, got \[0, 101\]"):
        J.round_trip(pixels, torch.tensor([0, 101]))
    empty = torch.zeros(0, 3, 8, 8, dtype=torch.uint8)
    assert J.round_trip(empty, torch.zeros(0, dtype=torch.int64)).shape == empty.shape
