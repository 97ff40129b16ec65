"""Degradation codes as bytes: the ``.udm`` format behind ``UDM.compress_degradation``.

Layout (little endian)::

    magic "UDMC" | version u8 | 3 zero bytes | weights SHA-256 (32 bytes) |
    y height u32 | y width u32 | global stream length u32 | local stream length u32 |
    global stream | local stream | CRC-32 of everything before (u32)

Both streams are the coder's parallel containers (``udm_fast.entropy.coder``): the global one holds
round(head(e_g) - medians), the local one round(e_l - medians), under the compressors' own
quantized CDF tables (built from the weights when missing). Decoding adds the medians back (and applies the tail
MLP), which gives
exactly the eval-mode quantized codes ``UDM.encode(y)`` returns. The weights hash ties a file to
the model that wrote it: another model's file is refused.
"""

from __future__ import annotations

import contextlib
import struct
import zlib

import torch

from . import coder

MAGIC = b"UDMC"
VERSION = 1
_HEADER = struct.Struct("<4sB3x32sIIII")
_CRC = struct.Struct("<I")


class DegradationCodeError(ValueError):
    """A .udm code that is malformed, truncated, corrupted, of another version or of another model."""


def _tables(compressor) -> coder.CoderTables:
    """The compressor's coder tables, built from its weights first when it has none."""
    eb = compressor.model
    eb.update()
    return eb.coder_tables()


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Every submodule in eval mode for the block (BatchNorm uses and keeps its running statistics:
    coding must neither depend on the batch nor change the weights hash), then each flag restored."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@torch.no_grad()
def compress(model, y: torch.Tensor) -> bytes:
    """Bytes of the degradation codes of y [B, 3, H, W] in [0, 1] (see the module docstring); the
    codes are the eval-mode ones whatever mode the model is in."""
    with _eval_mode(model):
        e_g, e_l = model.encode(y, quantize=False)
    gc, lc = model.global_compressor, model.local_compressor
    g_values = gc.latent(e_g)
    g_stream = coder.encode_parallel_values(g_values, gc.model._get_medians(), _tables(gc))
    l_stream = coder.encode_parallel_values(e_l, lc.model._get_medians(), _tables(lc))
    header = _HEADER.pack(
        MAGIC, VERSION, bytes.fromhex(model.weights_hash()), y.shape[-2], y.shape[-1], len(g_stream), len(l_stream)
    )
    body = header + g_stream + l_stream
    return body + _CRC.pack(zlib.crc32(body))


def parse(data: bytes) -> dict:
    """Header fields and the two streams of a .udm code; raises DegradationCodeError when malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DegradationCodeError(f"a degradation code must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size + _CRC.size:
        raise DegradationCodeError(f"degradation code truncated: {len(data)} bytes")
    magic, version, digest, height, width, len_g, len_l = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DegradationCodeError("not a udm_fast degradation code (bad magic)")
    if version != VERSION:
        raise DegradationCodeError(
            f"degradation code version {version} is not supported (this udm_fast reads {VERSION})"
        )
    end = _HEADER.size + len_g + len_l
    if end + _CRC.size != len(data):
        raise DegradationCodeError(f"degradation code has {len(data)} bytes, its header announces {end + _CRC.size}")
    (crc,) = _CRC.unpack_from(data, end)
    if zlib.crc32(data[:end]) != crc:
        raise DegradationCodeError("degradation code is corrupted (checksum mismatch)")
    return {
        "version": version,
        "weights_hash": digest.hex(),
        "height": height,
        "width": width,
        "global_stream": data[_HEADER.size : _HEADER.size + len_g],
        "local_stream": data[_HEADER.size + len_g : end],
    }


@torch.no_grad()
def decompress(model, data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """(e_g [B, global_dim], e_l [B, c_l, h, w]) on the model's device, as ``model.encode(y)`` in eval mode."""
    fields = parse(data)
    if fields["weights_hash"] != model.weights_hash():
        raise DegradationCodeError(
            f"this code was made by another model (weights {fields['weights_hash'][:12]}...); "
            f"the loaded model is {model.weights_hash()[:12]}...: decode with the model that encoded it"
        )
    gc, lc = model.global_compressor, model.local_compressor
    try:
        g_latent = coder.decode_parallel_values(fields["global_stream"], gc.model._get_medians(), _tables(gc))
        e_l = coder.decode_parallel_values(fields["local_stream"], lc.model._get_medians(), _tables(lc))
    except ValueError as exc:
        raise DegradationCodeError(f"degradation code streams cannot be decoded: {exc}") from exc
    weights = next(model.parameters())  # codes in the model's device and dtype, as encode gives them
    g_latent, e_l = g_latent.to(weights.device, weights.dtype), e_l.to(weights.device, weights.dtype)
    if (
        g_latent.dim() != 2
        or g_latent.shape[1] != gc.channels
        or e_l.dim() != 4
        or e_l.shape[1] != lc.channels
        or e_l.shape[0] != g_latent.shape[0]
    ):
        raise DegradationCodeError(
            f"degradation code shapes {list(g_latent.shape)} / {list(e_l.shape)} do not fit "
            f"the model ({gc.channels} global, {lc.channels} local channels)"
        )
    with _eval_mode(model):
        return gc.forward_finish(g_latent), e_l


def info(data: bytes) -> dict:
    """Summary of a code without a model: version, weights hash, y size, stream sizes in bytes and bits."""
    fields = parse(data)
    return {
        "version": fields["version"],
        "weights_hash": fields["weights_hash"],
        "height": fields["height"],
        "width": fields["width"],
        "bytes": len(data),
        "global_bytes": len(fields["global_stream"]),
        "local_bytes": len(fields["local_stream"]),
    }
