"""Image files <-> float tensors [1, 3, H, W] in [0, 1] (Pillow).

``load_image`` reads anything Pillow decodes (PNG and JPEG are the tested formats), applies the
EXIF orientation, keeps 16-bit precision (grayscale and colour PNGs) and converts every other
layout to RGB; each lossy or non-obvious conversion is reported with an ``ImageNote`` warning.
``save_image`` writes PNG (8 or 16 bits per channel) or JPEG, chosen by the file extension,
atomically.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from typing import BinaryIO, Callable, Optional

import numpy as np
import torch
from PIL import ExifTags, Image

from .files import write_atomic

SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}

# Pillow's raw modes of 16-bit colour PNG scanlines (big-endian samples) -> the little-endian
# twins, whose unpacker keeps the other byte of every sample.
_PNG16_LOW_BYTES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}

# EXIF orientation tag value -> numpy operation on an [H, W, C] array that shows the image upright.
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


class ImageError(ValueError):
    """An image file that cannot be read or written; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {problem}")


class ImageNote(UserWarning):
    """A conversion made while loading an image (alpha composited, gray expanded, precision lost)."""


def format_for_path(path: str | os.PathLike) -> str:
    """Pillow format name ("PNG" or "JPEG") that ``save_image`` writes for the extension of ``path``."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension not in SAVE_FORMATS:
        raise ImageError(
            path, f"unsupported output extension {extension or '(none)'!r}; use one of {', '.join(SAVE_FORMATS)}"
        )
    return SAVE_FORMATS[extension]


# ----------------------------------------------------------------------------- loading


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Reads an image file as a float32 tensor [1, 3, H, W] in [0, 1], upright per its EXIF orientation.

    8-bit data are divided by 255, 16-bit data by 65535. Transparency is composited onto white;
    grayscale, palette, CMYK and other modes become RGB. Each such conversion emits an
    ``ImageNote`` warning. Raises ``ImageError`` for missing paths, folders and unreadable files.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(path, "no such file")
    if os.path.isdir(path):
        raise ImageError(path, "is a directory, not an image file")
    try:
        with Image.open(path) as img:
            pixels, notes = _decode(img, path)
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
            frames = getattr(img, "n_frames", 1)
    except Image.UnidentifiedImageError:
        raise ImageError(path, "not an image file Pillow can read (unknown format or damaged header)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"refused: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:  # Pillow's ways to say "corrupt"
        raise ImageError(path, f"corrupt or truncated image file ({type(exc).__name__}: {exc})") from None
    if frames > 1:
        notes.append(f"has {frames} frames; using the first")
    if orientation in _ORIENTATIONS:
        pixels = _ORIENTATIONS[orientation](pixels)
    for note in notes:
        warnings.warn(f"{path}: {note}", ImageNote, stacklevel=2)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]


def _decode(img: Image.Image, path: str) -> tuple[np.ndarray, list]:
    """Pixels of the (first frame of the) open image as float32 [H, W, 3] in [0, 1], and the notes."""
    notes = []
    samples, bands = _samples(img, path, notes)
    if bands.startswith("L"):
        notes.append("grayscale image, replicated to RGB")
        samples = np.concatenate((np.repeat(samples[..., :1], 3, axis=2), samples[..., 1:]), axis=2)
    if bands.endswith("A"):
        notes.append("has an alpha channel, composited onto white")
        alpha = samples[..., 3:]
        samples = samples[..., :3] * alpha + (1.0 - alpha)
    return samples, notes


def _samples(img: Image.Image, path: str, notes: list) -> tuple[np.ndarray, str]:
    """(float32 [H, W, C] in [0, 1], bands "L" / "LA" / "RGB" / "RGBA") of the open image; loads it."""
    rawmode = _png_rawmode(img)
    deep_colour = _png16_colour(img, path, rawmode)
    img.load()
    if deep_colour is not None:
        return deep_colour.astype(np.float32) / 65535.0, img.mode
    mode = img.mode
    if rawmode == "LA;16B":
        notes.append("16-bit gray+alpha PNG, read at 8-bit precision (a Pillow limitation)")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(img).astype(np.float32)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(
                f"{mode} image values span [{values.min():.0f}, {values.max():.0f}], outside the 16-bit range"
            )
        return values[..., None] / 65535.0, "L"
    if mode in ("1", "L"):
        return _as_unit(img.convert("L")), "L"
    if mode in ("LA", "La"):
        return _as_unit(img.convert("LA")), "LA"
    if mode in ("P", "PA"):
        notes.append("palette image, converted to RGB")
        bands = "RGBA" if mode == "PA" or "transparency" in img.info else "RGB"
        return _as_unit(img.convert(bands)), bands
    if mode in ("RGBA", "RGBa"):
        return _as_unit(img.convert("RGBA")), "RGBA"
    if mode not in ("RGB", "RGBX"):
        notes.append(f"{mode} image, converted to RGB")
    return _as_unit(img.convert("RGB")), "RGB"


def _as_unit(img: Image.Image) -> np.ndarray:
    """8-bit Pillow image -> float32 array [H, W, C] in [0, 1]."""
    return np.asarray(img, dtype=np.float32).reshape(img.height, img.width, -1) / 255.0


def _png_rawmode(img: Image.Image) -> Optional[str]:
    """Pillow's raw mode of the scanlines of a PNG file that is not loaded yet, else None."""
    if img.format != "PNG" or len(img.tile) != 1:
        return None
    rawmode = img.tile[0][3]
    return rawmode if isinstance(rawmode, str) else None


def _png16_colour(img: Image.Image, path: str, rawmode: Optional[str]) -> Optional[np.ndarray]:
    """uint16 [H, W, 3|4] of a 16-bit RGB / RGBA PNG, or None for any other file. Call before ``load``.

    Pillow decodes these files to 8 bits by keeping the high byte of each sample. The PNG
    unfiltering runs on bytes before the samples are unpacked, so decoding the file a second time
    with the little-endian unpacker yields exactly the low bytes.
    """
    if rawmode not in _PNG16_LOW_BYTES:
        return None
    name, extents, offset, _ = img.tile[0]
    img.load()
    high = np.asarray(img, dtype=np.uint16)
    with Image.open(path) as again:
        again.tile = [(name, extents, offset, _PNG16_LOW_BYTES[rawmode])]
        again.load()
        low = np.asarray(again, dtype=np.uint16)
    return (high << 8) | low


# ----------------------------------------------------------------------------- saving


def save_image(image: torch.Tensor, path: str | os.PathLike, *, bits: int = 8, quality: int = 95) -> None:
    """Writes a float image [1, 3, H, W] or [3, H, W] (clamped to [0, 1]) to ``path``, atomically.

    The extension picks the format: ``.png`` (``bits`` = 8 or 16 per channel) or ``.jpg``/``.jpeg``
    (8 bits, ``quality`` 1..100). Missing parent folders are created.
    """
    write_atomic(path, image_writer(image, path, bits=bits, quality=quality))


def image_writer(
    image: torch.Tensor, path: str | os.PathLike, *, bits: int = 8, quality: int = 95
) -> Callable[[BinaryIO], None]:
    """``write(f)`` that encodes the image as ``save_image`` does for ``path`` (its arguments checked
    now), for ``utils.files.write_all_atomic``."""
    path = os.fspath(path)
    file_format = format_for_path(path)
    if bits not in (8, 16):
        raise ValueError(f"save_image: bits must be 8 or 16, got {bits}")
    if file_format == "JPEG" and bits != 8:
        raise ValueError(f"save_image: JPEG stores 8 bits per channel, got bits={bits} for {path}")
    if not 1 <= quality <= 100:
        raise ValueError(f"save_image: JPEG quality must be in 1..100, got {quality}")
    pixels = _to_hwc(image, bits)

    def write(f) -> None:
        if bits == 16:
            f.write(_encode_png16(pixels))
        elif file_format == "JPEG":
            Image.fromarray(pixels).save(f, format="JPEG", quality=quality)
        else:
            Image.fromarray(pixels).save(f, format="PNG")

    return write


def _to_hwc(image: torch.Tensor, bits: int) -> np.ndarray:
    """[1, 3, H, W] / [3, H, W] float in [0, 1] -> uint8 or uint16 array [H, W, 3] (rounded, clamped)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"save_image: expected a torch.Tensor, got {type(image).__name__}")
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"save_image: expected an image [1, 3, H, W] or [3, H, W], got {list(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"save_image: expected a float tensor in [0, 1], got {image.dtype}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"save_image: empty image {list(image.shape)}")
    image = image.detach().to("cpu", torch.float64)
    if torch.isnan(image).any():
        raise ValueError("save_image: the image contains NaN values")
    scale = 65535 if bits == 16 else 255
    values = (image.clamp(0.0, 1.0) * scale).round().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(values.astype(np.uint16 if bits == 16 else np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encode_png16(pixels: np.ndarray) -> bytes:
    """PNG file bytes of a uint16 RGB array [H, W, 3] (Pillow cannot write 16-bit colour PNGs)."""
    height, width, _ = pixels.shape
    rows = pixels.astype(">u2").reshape(height, width * 3).view(np.uint8)  # 6 bytes per pixel
    scanlines = np.concatenate((np.zeros((height, 1), np.uint8), rows), axis=1)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, truecolour, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )
