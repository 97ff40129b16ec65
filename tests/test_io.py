"""Image I/O: round trips, 16-bit precision, mode conversions with notes, EXIF orientation, errors."""

import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from udm_fast.utils.io import ImageError, ImageNote, format_for_path, load_image, save_image


def smooth_rgb(height, width, seed=0):
    """A smooth uint8 photo-like image [H, W, 3] (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(2 * np.pi * (f1 * xx + f2 * yy) + phase) for f1, f2, phase in rng.uniform(0.5, 3.0, size=(3, 3))]
    return np.round(127.5 + 120 * np.stack(channels, axis=2)).astype(np.uint8)


def load_quietly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean RGB file must load without notes
        return load_image(path)


def unit(array, scale=255.0):
    """[H, W, 3] integer array -> the expected float32 tensor [1, 3, H, W] (float64 math, then float32)."""
    return torch.from_numpy((array.astype(np.float64) / scale).transpose(2, 0, 1).copy()).float()[None]


# ----------------------------------------------------------------------------- round trips


def test_png8_round_trip_is_exact_quantisation(tmp_path):
    image = torch.rand(1, 3, 13, 21, generator=torch.Generator().manual_seed(1))
    save_image(image, tmp_path / "x.png")
    loaded = load_quietly(tmp_path / "x.png")
    expected = np.round(image[0].double().numpy() * 255) / 255
    assert loaded.shape == (1, 3, 13, 21) and loaded.dtype == torch.float32
    torch.testing.assert_close(loaded[0].double(), torch.from_numpy(expected), rtol=0, atol=1e-7)


def test_png16_round_trip_keeps_16_bit_precision(tmp_path):
    image = torch.rand(3, 11, 17, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    save_image(image, tmp_path / "deep.png", bits=16)
    loaded = load_quietly(tmp_path / "deep.png")
    expected = np.round(image.numpy() * 65535) / 65535
    torch.testing.assert_close(loaded[0].double(), torch.from_numpy(expected), rtol=0, atol=1e-7)
    assert (loaded[0].double() - image).abs().max() <= 0.5 / 65535 + 1e-7  # far below one 8-bit step
    with Image.open(tmp_path / "deep.png") as img:  # any PNG reader accepts the file: Pillow shows the high bytes
        assert img.size == (17, 11)
        np.testing.assert_array_equal(
            np.asarray(img.convert("RGB")), (np.round(expected * 65535).astype(np.uint16) >> 8).transpose(1, 2, 0)
        )


def _png16_every_filter(samples: np.ndarray) -> bytes:
    """A 16-bit RGB / RGBA PNG whose rows cycle through the five PNG filter types (written from the PNG spec)."""
    height, width, channels = samples.shape
    raw = samples.astype(">u2").reshape(height, -1).view(np.uint8).astype(np.int64)
    bpp = 2 * channels

    def paeth(a, b, c):
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        return a if pa <= pb and pa <= pc else (b if pb <= pc else c)

    lines = []
    for r in range(height):
        kind = r % 5
        line = [kind]
        for i in range(raw.shape[1]):
            a = raw[r, i - bpp] if i >= bpp else 0
            b = raw[r - 1, i] if r else 0
            c = raw[r - 1, i - bpp] if r and i >= bpp else 0
            prediction = (0, a, b, (a + b) // 2, paeth(a, b, c))[kind]
            line.append((raw[r, i] - prediction) % 256)
        lines.append(bytes(line))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"".join(lines)))
        + chunk(b"IEND", b"")
    )


def test_png16_colour_from_another_encoder_with_all_filter_types(tmp_path):
    samples = np.random.default_rng(3).integers(0, 65536, size=(10, 7, 3), dtype=np.uint16)
    (tmp_path / "filters.png").write_bytes(_png16_every_filter(samples))
    torch.testing.assert_close(load_quietly(tmp_path / "filters.png"), unit(samples, 65535.0), rtol=0, atol=1e-7)


def test_png16_rgba_keeps_16_bit_precision_before_compositing(tmp_path):
    samples = np.random.default_rng(6).integers(0, 65536, size=(9, 6, 4), dtype=np.uint16)
    (tmp_path / "rgba16.png").write_bytes(_png16_every_filter(samples))
    with pytest.warns(ImageNote, match="alpha"):
        loaded = load_image(tmp_path / "rgba16.png")
    unit_samples = samples.astype(np.float64) / 65535
    alpha = unit_samples[..., 3:]
    torch.testing.assert_close(loaded, unit(unit_samples[..., :3] * alpha + 1 - alpha, 1.0), rtol=0, atol=1e-6)


def test_png16_grayscale_divides_by_65535_with_a_note(tmp_path):
    gray = np.random.default_rng(4).integers(0, 65536, size=(6, 9), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    with pytest.warns(ImageNote, match="grayscale"):
        loaded = load_image(tmp_path / "gray16.png")
    torch.testing.assert_close(loaded, unit(np.repeat(gray[..., None], 3, axis=2), 65535.0), rtol=0, atol=1e-7)


def test_jpeg_round_trip_quality_option(tmp_path):
    image = unit(smooth_rgb(48, 64))
    errors, sizes = [], []
    for quality in (30, 95):
        path = tmp_path / f"q{quality}.jpg"
        save_image(image, path, quality=quality)
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.size == (64, 48)
        errors.append((load_quietly(path) - image).abs().mean().item())
        sizes.append(os.path.getsize(path))
    assert errors[1] < errors[0] and errors[1] < 4 / 255  # 4:2:0 chroma subsampling dominates at q95
    assert sizes[1] > sizes[0]


def test_save_clamps_and_accepts_3d(tmp_path):
    image = torch.tensor([-0.5, 0.25, 1.5]).repeat(3, 2, 1)  # [3, 2, 3]
    save_image(image, tmp_path / "clamped.png")
    with Image.open(tmp_path / "clamped.png") as img:
        pixels = np.asarray(img)
    np.testing.assert_array_equal(pixels[..., 0], np.array([[0, 64, 255], [0, 64, 255]]))


def test_save_creates_folders_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "b" / "out.jpeg"
    save_image(torch.rand(1, 3, 8, 8), target)
    assert target.is_file() and sorted(os.listdir(target.parent)) == ["out.jpeg"]


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    save_image(torch.zeros(1, 3, 4, 4), target)
    before = target.read_bytes()

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(torch.ones(1, 3, 4, 4), target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["keep.png"]


@pytest.mark.parametrize(
    "name, kwargs, error, match",
    [
        ("x.bmp", {}, ImageError, "unsupported output extension"),
        ("noextension", {}, ImageError, "unsupported output extension"),
        ("x.jpg", {"bits": 16}, ValueError, "8 bits"),
        ("x.png", {"bits": 12}, ValueError, "bits must be 8 or 16"),
        ("x.jpg", {"quality": 0}, ValueError, "quality"),
    ],
)
def test_save_rejects_bad_options(tmp_path, name, kwargs, error, match):
    with pytest.raises(error, match=match):
        save_image(torch.rand(1, 3, 4, 4), tmp_path / name, **kwargs)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "image, error, match",
    [
        (torch.rand(2, 3, 4, 4), ValueError, r"\[1, 3, H, W\]"),
        (torch.rand(1, 4, 4, 4), ValueError, r"\[1, 3, H, W\]"),
        (torch.full((1, 3, 4, 4), float("nan")), ValueError, "NaN"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), TypeError, "float"),
        (np.zeros((4, 4, 3)), TypeError, "torch.Tensor"),
    ],
)
def test_save_rejects_bad_tensors(tmp_path, image, error, match):
    with pytest.raises(error, match=match):
        save_image(image, tmp_path / "x.png")


def test_format_for_path():
    assert format_for_path("a/b.PNG") == "PNG" and format_for_path("c.JPeg") == "JPEG"


# ----------------------------------------------------------------------------- conversions with notes


def test_rgba_is_composited_onto_white(tmp_path):
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, size=(5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    with pytest.warns(ImageNote, match="alpha channel, composited onto white"):
        loaded = load_image(tmp_path / "rgba.png")
    alpha = rgba[..., 3:].astype(np.float64) / 255
    expected = rgba[..., :3].astype(np.float64) / 255 * alpha + (1 - alpha)
    torch.testing.assert_close(loaded, unit(expected, 1.0), rtol=0, atol=1e-6)


def test_gray_alpha_palette_and_cmyk_convert_with_notes(tmp_path):
    rgb = smooth_rgb(8, 10)
    gray = Image.fromarray(rgb).convert("L")
    gray.save(tmp_path / "gray.png")
    with pytest.warns(ImageNote, match="grayscale image, replicated to RGB"):
        loaded = load_image(tmp_path / "gray.png")
    torch.testing.assert_close(loaded, unit(np.repeat(np.asarray(gray)[..., None], 3, axis=2)), rtol=0, atol=1e-7)

    Image.fromarray(rgb).convert("LA").save(tmp_path / "gray_alpha.png")
    with pytest.warns(ImageNote) as notes:
        load_image(tmp_path / "gray_alpha.png")
    messages = " ".join(str(note.message) for note in notes)
    assert "grayscale" in messages and "alpha" in messages

    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    with pytest.warns(ImageNote, match="palette image"):
        loaded = load_image(tmp_path / "palette.png")
    torch.testing.assert_close(loaded, unit(np.asarray(palette.convert("RGB"))), rtol=0, atol=1e-7)

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    with pytest.warns(ImageNote, match="CMYK image, converted to RGB"):
        loaded = load_image(tmp_path / "cmyk.jpg")
    with Image.open(tmp_path / "cmyk.jpg") as img:
        torch.testing.assert_close(loaded, unit(np.asarray(img.convert("RGB"))), rtol=0, atol=1e-7)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(smooth_rgb(12, 20)).save(path, exif=exif, quality=95)
    with Image.open(path) as img:
        upright = np.asarray(ImageOps.exif_transpose(img))
    loaded = load_quietly(path)
    assert loaded.shape[-2:] == ((20, 12) if orientation >= 5 else (12, 20))
    torch.testing.assert_close(loaded, unit(upright), rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- errors


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file") as info:
        load_image(tmp_path / "nope.png")
    assert info.value.path == str(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_non_image_and_corrupt_files(tmp_path):
    (tmp_path / "notes.png").write_text("not an image at all")
    with pytest.raises(ImageError, match="not an image file"):
        load_image(tmp_path / "notes.png")

    Image.fromarray(smooth_rgb(32, 32)).save(tmp_path / "good.png")
    data = bytearray((tmp_path / "good.png").read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 40] = bytes(40)  # zero part of the compressed pixel data (and break the CRC)
    (tmp_path / "corrupt.png").write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"corrupt\.png: corrupt or truncated"):
        load_image(tmp_path / "corrupt.png")


def test_truncated_jpeg(tmp_path):
    Image.fromarray(smooth_rgb(64, 64)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg: corrupt or truncated"):
        load_image(tmp_path / "cut.jpg")


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os
    import stat

    from udm_fast.utils.files import write_bytes_atomic

    umask = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "new.bin", b"x")
        assert stat.S_IMODE(os.stat(tmp_path / "new.bin").st_mode) == 0o644
        os.chmod(tmp_path / "new.bin", 0o600)
        write_bytes_atomic(tmp_path / "new.bin", b"y")  # an existing file keeps its permissions
        assert stat.S_IMODE(os.stat(tmp_path / "new.bin").st_mode) == 0o600
        assert (tmp_path / "new.bin").read_bytes() == b"y"
    finally:
        os.umask(umask)
