"""libjpeg's lossy round trip as batched integer tensor ops, on any device.

``round_trip(pixels, quality)`` gives the pixels that libjpeg (as used by Pillow: baseline, 4:2:0,
``JDCT_ISLOW``, fancy upsampling) produces when it encodes and decodes an 8-bit RGB image, for a whole
batch at once with a quality per image, without leaving the tensor's device. Every lossy step is the
library's own integer arithmetic: the fixed-point RGB <-> YCbCr conversions, the h2v2 box downsampling
with its alternating rounding bias, the accurate integer forward and inverse DCTs, rounding
quantisation with the Annex K tables scaled by the IJG quality formula (baseline, entries <= 255),
the triangle-filter ("fancy") chroma upsampling (plain 2x2 replication for chroma planes at most 2
samples wide, as libjpeg-turbo) and the range limiting. Entropy coding is lossless and skipped. Edges
follow libjpeg too: planes are padded to whole blocks by edge replication (chroma rows after the
downsampling, columns before it), and the decoder upsamples the chroma of the visible area only.
"""

from __future__ import annotations

import torch

# JPEG Annex K tables (natural order), quality 50
LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4

_COLOR_BITS = 16  # jccolor.c / jdcolor.c fixed point
_CONST_BITS, _PASS1_BITS = 13, 2  # jfdctint.c / jidctint.c


def _fix(value: float, bits: int) -> int:
    return int(value * (1 << bits) + 0.5)


def _c(value: float) -> int:
    return _fix(value, _CONST_BITS)


def quant_tables(quality: torch.Tensor) -> torch.Tensor:
    """[B, 2, 8, 8] int64 luma / chroma quantisation tables for qualities [B] (1..100), as
    ``jpeg_set_quality(quality, force_baseline=TRUE)`` builds them."""
    q = quality.to(torch.int64).clamp(1, 100)
    scale = torch.where(q < 50, 5000 // q, 200 - 2 * q)
    base = torch.tensor((LUMA_TABLE, CHROMA_TABLE), dtype=torch.int64, device=quality.device)
    return ((base[None] * scale[:, None, None, None] + 50) // 100).clamp(1, 255)


def _descale(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x + (1 << (n - 1))) >> n


def _rotate_even(p: torch.Tensor, q: torch.Tensor) -> tuple:
    """The even part's rotation of both DCTs: ((p + q) c6 + q (c2 - c6), (p + q) c6 - p (c2 + c6)), unscaled."""
    z1 = (p + q) * _c(0.541196100)
    return z1 + q * _c(0.765366865), z1 - p * _c(1.847759065)


def _rotate_odd(t0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, t3: torch.Tensor) -> tuple:
    """The odd part of both DCTs (the same butterfly in jfdctint.c and jidctint.c): four sums, unscaled."""
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * _c(1.175875602)
    t0, t1 = t0 * _c(0.298631336), t1 * _c(2.053119869)
    t2, t3 = t2 * _c(3.072711026), t3 * _c(1.501321110)
    z1, z2 = z1 * -_c(0.899976223), z2 * -_c(2.562915447)
    z3, z4 = z3 * -_c(1.961570560) + z5, z4 * -_c(0.390180644) + z5
    return t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4


def _fdct_1d(v: list, first_pass: bool) -> list:
    """One pass of the accurate integer forward DCT (jfdctint.c) over 8 tensors."""
    tmp0, tmp7 = v[0] + v[7], v[0] - v[7]
    tmp1, tmp6 = v[1] + v[6], v[1] - v[6]
    tmp2, tmp5 = v[2] + v[5], v[2] - v[5]
    tmp3, tmp4 = v[3] + v[4], v[3] - v[4]
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    shift = _CONST_BITS - _PASS1_BITS if first_pass else _CONST_BITS + _PASS1_BITS
    if first_pass:
        dc, mid = (tmp10 + tmp11) * (1 << _PASS1_BITS), (tmp10 - tmp11) * (1 << _PASS1_BITS)
    else:
        dc, mid = _descale(tmp10 + tmp11, _PASS1_BITS), _descale(tmp10 - tmp11, _PASS1_BITS)
    out2, out6 = (_descale(a, shift) for a in _rotate_even(tmp12, tmp13))
    out7, out5, out3, out1 = (_descale(a, shift) for a in _rotate_odd(tmp4, tmp5, tmp6, tmp7))
    return [dc, out1, out2, out3, mid, out5, out6, out7]


def _idct_1d(v: list, shift: int) -> list:
    """One pass of the accurate integer inverse DCT (jidctint.c) over 8 tensors, descaled by ``shift``."""
    tmp3, tmp2 = _rotate_even(v[6], v[2])
    tmp0, tmp1 = (v[0] + v[4]) * (1 << _CONST_BITS), (v[0] - v[4]) * (1 << _CONST_BITS)
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    tmp0, tmp1, tmp2, tmp3 = _rotate_odd(v[7], v[5], v[3], v[1])
    return [
        _descale(a, shift)
        for a in (
            tmp10 + tmp3,
            tmp11 + tmp2,
            tmp12 + tmp1,
            tmp13 + tmp0,
            tmp13 - tmp0,
            tmp12 - tmp1,
            tmp11 - tmp2,
            tmp10 - tmp3,
        )
    ]


def _along_rows(blocks: torch.Tensor, transform, *args) -> torch.Tensor:
    """Applies a 1-D transform of 8 tensors to every row of [..., 8, 8] blocks."""
    return torch.stack(transform(list(blocks.unbind(-1)), *args), dim=-1)


def _to_blocks(plane: torch.Tensor) -> torch.Tensor:
    """[B, H, W] (H, W multiples of 8) -> [B, H/8, W/8, 8, 8]."""
    b, h, w = plane.shape
    return plane.reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3)


def _from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    b, nh, nw = blocks.shape[:3]
    return blocks.transpose(2, 3).reshape(b, nh * 8, nw * 8)


def _lossy_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Samples [B, H, W] (multiples of 8) after FDCT, quantisation by table [B, 8, 8], dequantisation
    and IDCT, range-limited to 0..255."""
    blocks = _to_blocks(plane - 128)
    coef = _along_rows(_along_rows(blocks, _fdct_1d, True).transpose(-1, -2), _fdct_1d, False).transpose(-1, -2)
    divisor = (table * 8)[:, None, None]  # the DCT output is scaled up by 8
    quantised = torch.sign(coef) * ((coef.abs() + divisor // 2) // divisor)
    dequantised = quantised * table[:, None, None]
    columns = _along_rows(dequantised.transpose(-1, -2), _idct_1d, _CONST_BITS - _PASS1_BITS).transpose(-1, -2)
    samples = _along_rows(columns, _idct_1d, _CONST_BITS + _PASS1_BITS + 3)
    wrapped = (samples + 512) % 1024 - 512  # libjpeg's range-limit table masks with 1023
    return _from_blocks((wrapped + 128).clamp(0, 255))


def _take(plane: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """plane[:, rows][:, :, cols] for [B, h, w], indices clamped into the plane (edge replication)."""
    h, w = plane.shape[-2:]
    return plane[:, rows.clamp(0, h - 1)][:, :, cols.clamp(0, w - 1)]


def _pad_replicate(plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, h, w] padded to [B, height, width] by repeating the last row and column."""
    return _take(plane, torch.arange(height, device=plane.device), torch.arange(width, device=plane.device))


def _downsample_h2v2(plane: torch.Tensor) -> torch.Tensor:
    """jcsample.c h2v2_downsample of [B, 2h, 2w]: 2x2 sums plus a bias alternating 1, 2 along each row, >> 2."""
    sums = plane[:, 0::2, 0::2] + plane[:, 0::2, 1::2] + plane[:, 1::2, 0::2] + plane[:, 1::2, 1::2]
    bias = 1 + torch.arange(sums.shape[-1], device=plane.device) % 2
    return (sums + bias) >> 2


def _upsample_h2v2_fancy(plane: torch.Tensor) -> torch.Tensor:
    """jdsample.c h2v2_fancy_upsample of [B, h, w] to [B, 2h, 2w]: each output sample weighs its nearest
    input 9/16, the two next-nearest 3/16 and the diagonal one 1/16, with libjpeg's rounding; the rows
    and columns beyond the edges repeat the edge ones."""
    h, w = plane.shape[-2:]
    padded = _take(plane, torch.arange(-1, h + 1, device=plane.device), torch.arange(-1, w + 1, device=plane.device))
    here = padded[:, 1:-1]
    out = []
    for far in (padded[:, :-2], padded[:, 2:]):  # output row 2i leans on row i - 1, row 2i + 1 on row i + 1
        colsum = here * 3 + far
        this, left, right = colsum[:, :, 1:-1], colsum[:, :, :-2], colsum[:, :, 2:]
        even = (this * 3 + left + 8) >> 4
        odd = (this * 3 + right + 7) >> 4
        out.append(torch.stack((even, odd), dim=-1).flatten(-2))
    return torch.stack(out, dim=-2).flatten(-3, -2)


def _rgb_to_ycc(rgb: torch.Tensor) -> tuple:
    r, g, b = rgb.unbind(1)
    half, offset = 1 << (_COLOR_BITS - 1), 128 << _COLOR_BITS

    def f(v):
        return _fix(v, _COLOR_BITS)

    y = (f(0.29900) * r + f(0.58700) * g + f(0.11400) * b + half) >> _COLOR_BITS
    cb = (-f(0.16874) * r - f(0.33126) * g + f(0.5) * b + offset + half - 1) >> _COLOR_BITS
    cr = (f(0.5) * r - f(0.41869) * g - f(0.08131) * b + offset + half - 1) >> _COLOR_BITS
    return y, cb, cr


def _ycc_to_rgb(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    half = 1 << (_COLOR_BITS - 1)
    cb, cr = cb - 128, cr - 128

    def f(v):
        return _fix(v, _COLOR_BITS)

    r = y + ((f(1.40200) * cr + half) >> _COLOR_BITS)
    g = y + ((-f(0.34414) * cb + half - f(0.71414) * cr) >> _COLOR_BITS)
    b = y + ((f(1.77200) * cb + half) >> _COLOR_BITS)
    return torch.stack((r, g, b), dim=1).clamp(0, 255)


def round_trip(pixels: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B, 3, H, W] encoded and decoded as libjpeg does at qualities [B] (1..100) -> uint8."""
    if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"jpeg.round_trip: expected uint8 [B, 3, H, W], got {pixels.dtype} {list(pixels.shape)}")
    if quality.shape != (pixels.shape[0],) or quality.is_floating_point() or quality.is_complex():
        raise ValueError(
            f"jpeg.round_trip: quality must be integers [B] = [{pixels.shape[0]}], got "
            f"{quality.dtype} {list(quality.shape)}"
        )
    if quality.numel() and not bool(((quality >= 1) & (quality <= 100)).all()):
        raise ValueError(f"jpeg.round_trip: quality must be in 1..100, got {quality.tolist()}")
    b, _, h, w = pixels.shape
    if b == 0 or h == 0 or w == 0:
        return pixels.clone()
    tables = quant_tables(quality.to(pixels.device))
    y, cb, cr = _rgb_to_ycc(pixels.to(torch.int64))
    mcu_h, mcu_w = -(-h // 16) * 16, -(-w // 16) * 16  # whole 4:2:0 MCUs
    y = _lossy_plane(_pad_replicate(y, mcu_h, mcu_w), tables[:, 0])[:, :h, :w]
    ch, cw = -(-h // 2), -(-w // 2)  # the chroma planes' own size
    # Cb and Cr as one batch [2B]; as libjpeg, columns are replicated before downsampling, rows to an
    # even count before and to whole blocks after it
    c = _pad_replicate(_downsample_h2v2(_pad_replicate(torch.cat((cb, cr)), 2 * ch, mcu_w)), mcu_h // 2, mcu_w // 2)
    c = _lossy_plane(c, tables[:, 1].repeat(2, 1, 1))[:, :ch, :cw]
    if cw > 2:
        c = _upsample_h2v2_fancy(c)
    else:  # libjpeg-turbo upsamples chroma no wider than 2 samples by plain replication
        c = c.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    c = c[:, :h, :w]
    return _ycc_to_rgb(y, *c.chunk(2)).to(torch.uint8)
