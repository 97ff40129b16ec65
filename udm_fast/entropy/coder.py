"""rANS entropy coding of integer symbols under compressai-style quantized CDF tables.

Two formats, both driven by the tables an ``EntropyBottleneck`` stores (``_quantized_cdf``
[rows, width], ``_cdf_length`` [rows], ``_offset`` [rows]):

* **compat** -- byte-identical to compressai's ``ans`` coder: one stream (``bytes``) per batch
  item, values outside a row's range escape-coded exactly as compressai does.
  :func:`encode_compat` / :func:`decode_compat`, and the multi-segment variants
  :func:`encode_compat_segments` / :func:`decode_compat_segments` (compressai's
  ``BufferedRansEncoder`` / ``RansDecoder.decode_stream``).
* **parallel** -- one self-describing container (magic, version, shape, lane layout, table
  fingerprint, checksums) holding many independent interleaved rANS lanes, sized from the
  estimated compressed size so the fixed cost stays small: :func:`encode_parallel` /
  :func:`decode_parallel` / :func:`parallel_info`.

Rows: by default symbol ``[n, c, ...]`` of a ``[N, C, *spatial]`` tensor uses row ``c`` (the
channel, as in ``EntropyBottleneck``); pass ``indexes`` (int32, same shape) to choose rows per
symbol (``GaussianConditional`` style). Coding runs on the CPU in C++ with torch's intra-op
threads (``torch.set_num_threads``) over streams / lane groups; inputs on other devices are
copied to the CPU. Malformed tables, symbols or streams raise ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..ops import extension as _ext

DEFAULT_LANE_OVERHEAD = 0.003


def _rans():
    return _ext.require().rans


class CoderTables:
    """Validated CDF tables prepared for coding (decoder lookup and encoder reciprocals).

    Build once per set of tables and reuse; ``fingerprint`` identifies the table contents.
    """

    def __init__(self, quantized_cdf: Tensor, cdf_length: Tensor, offset: Tensor):
        if quantized_cdf.numel() == 0:
            raise ValueError("empty CDF tables: run update() on the entropy model first")
        self.native = _rans().Tables(
            _as_int32(quantized_cdf, "quantized_cdf"),
            _as_int32(cdf_length, "cdf_length").reshape(-1),
            _as_int32(offset, "offset").reshape(-1),
        )

        self._device_tables = {}

    def device_tables(self, device: torch.device):
        """The tables copied to a CUDA device (cached per device) for the CUDA coder."""
        key = str(device)
        if key not in self._device_tables:
            self._device_tables[key] = _rans().DeviceTables(self.native, key)
        return self._device_tables[key]

    @property
    def rows(self) -> int:
        return self.native.rows

    @property
    def fingerprint(self) -> int:
        return self.native.fingerprint


def _as_int32(t: Tensor, name: str, device="cpu") -> Tensor:
    """Integer tensor ``t`` as a contiguous int32 tensor on ``device``; values outside int32 are an error
    (a cast would wrap them silently)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
    if t.dtype == torch.int64 and t.numel() and (t.min() < -(2**31) or t.max() >= 2**31):
        raise ValueError(f"{name} must fit int32, got values in [{t.min().item()}, {t.max().item()}]")
    return t.detach().to(device=device, dtype=torch.int32).contiguous()


def _row_layout(shape: Sequence[int], indexes: Tensor | None):
    """(indexes or None, channels, per_channel) for symbols of ``shape`` = [N, C, *spatial]."""
    if indexes is not None:
        if tuple(indexes.shape) != tuple(shape):
            raise ValueError(f"indexes shape {tuple(indexes.shape)} differs from symbols shape {tuple(shape)}")
        return _as_int32(indexes, "indexes"), 1, 1
    if len(shape) < 2:
        raise ValueError(f"symbols must be [N, C, *spatial] for channel rows (or pass indexes), got {tuple(shape)}")
    return None, int(shape[1]), max(math.prod(int(d) for d in shape[2:]), 1)


def encode_compat(symbols: Tensor, tables: CoderTables, indexes: Tensor | None = None) -> list[bytes]:
    """Integer symbols [N, ...] -> N compressai-compatible rANS streams (one per item).

    Without ``indexes`` the symbols are [N, C, *spatial] and channel c uses row c (the bytes
    equal ``compressai.ans.RansEncoder().encode_with_indexes`` with compressai's
    ``_build_indexes``). Values outside a row's range are escape-coded; compressai's own coder
    only handles escapes of magnitude below about 2**27, larger ones round-trip here only.
    """
    symbols = _as_int32(symbols, "symbols")
    if symbols.dim() < 1:
        raise ValueError("symbols need a batch dimension")
    index_tensor, channels, per_channel = _row_layout(symbols.shape, indexes)
    n = symbols.shape[0]
    if n == 0:
        return []
    flat = symbols.reshape(n, -1)
    if index_tensor is not None:
        index_tensor = index_tensor.reshape(n, -1)
    return _rans().compat_encode(tables.native, flat, None, index_tensor, channels, per_channel)


def decode_compat(
    strings: Sequence[bytes], tables: CoderTables, shape: Sequence[int] | None = None, indexes: Tensor | None = None
) -> Tensor:
    """N compat streams -> int32 symbols [N, *shape] (``shape`` = (C, *spatial) of one item),
    or of ``indexes.shape`` ([N, ...]) when explicit rows are given.

    Raises ValueError when a stream is truncated, corrupted or does not end exactly where the
    symbols do (e.g. decoded with other tables or another size).
    """
    strings = _check_strings(strings)
    if indexes is not None:
        if shape is not None:
            raise ValueError("pass either shape (channel rows) or indexes, not both")
        if indexes.dim() < 1 or indexes.shape[0] != len(strings):
            raise ValueError(f"indexes must be [{len(strings)}, ...] (one row per stream), got {tuple(indexes.shape)}")
        full_shape = tuple(indexes.shape)
    else:
        if shape is None:
            raise ValueError("shape (C, *spatial) of one item is required without indexes")
        full_shape = (len(strings), *(int(d) for d in shape))
    index_tensor, channels, per_channel = _row_layout(full_shape, indexes)
    out = _rans().compat_decode(
        tables.native, strings, math.prod(full_shape[1:]), None, index_tensor, channels, per_channel
    )
    return out.reshape(full_shape)


def _check_strings(strings) -> list[bytes]:
    if isinstance(strings, (bytes, bytearray, str)) or not isinstance(strings, Sequence):
        raise ValueError("strings must be a list of bytes (one per item)")
    return [bytes(s) if isinstance(s, (bytearray, memoryview)) else s for s in strings]


def encode_compat_segments(segments: Sequence[tuple[Tensor, Tensor, CoderTables]]) -> bytes:
    """One compat stream holding several segments ``(symbols, indexes, tables)`` (1-D or any
    shape, indexes of the same shape), like compressai's ``BufferedRansEncoder``: the bytes
    equal several ``encode_with_indexes`` calls followed by one ``flush()``."""
    native = []
    for symbols, indexes, tables in segments:
        symbols = _as_int32(symbols, "symbols").reshape(-1)
        indexes = _as_int32(indexes, "indexes").reshape(-1)
        if symbols.numel() != indexes.numel():
            raise ValueError("segment symbols and indexes must have the same number of elements")
        native.append((tables.native, symbols, indexes))
    return _rans().compat_encode_segments(native)


def decode_compat_segments(data: bytes, segments: Sequence[tuple[Tensor, CoderTables]]) -> list[Tensor]:
    """Decodes the segments ``(indexes, tables)`` of one compat stream in order (compressai's
    ``RansDecoder.set_stream`` + ``decode_stream`` calls); int32 symbols shaped like each
    segment's indexes."""
    native, shapes = [], []
    for indexes, tables in segments:
        shapes.append(tuple(indexes.shape))
        native.append((tables.native, _as_int32(indexes, "indexes").reshape(-1)))
    decoded = _rans().compat_decode_segments(bytes(data), native)
    return [symbols.reshape(shape) for symbols, shape in zip(decoded, shapes)]


def _cuda_coder_for(t: Tensor) -> bool:
    """True when ``t`` is on a CUDA device and the extension has the CUDA coder."""
    return t.is_cuda and hasattr(_rans(), "lanes_encode_cuda")


def _encode_parallel(
    inputs: Tensor,
    medians: Tensor | None,
    tables: CoderTables,
    indexes: Tensor | None,
    lane_overhead: float,
    lanes: int | None,
    as_tensor: bool,
):
    """Shared body of encode_parallel / encode_parallel_values (GPU when the input is on CUDA)."""
    shape = inputs.shape
    lanes = int(lanes or 0)
    if _cuda_coder_for(inputs):
        device = inputs.device
        if indexes is not None:
            if tuple(indexes.shape) != tuple(shape):
                raise ValueError(f"indexes shape {tuple(indexes.shape)} differs from symbols shape {tuple(shape)}")
            index_tensor, channels, per_channel = _as_int32(indexes, "indexes", device), 1, 1
        else:
            index_tensor, channels, per_channel = _row_layout(shape, None)
        if medians is not None:
            medians = medians.detach().to(device=device, dtype=torch.float32).reshape(-1).contiguous()
        data = _rans().lanes_encode_cuda(
            tables.device_tables(device),
            inputs.detach().contiguous(),
            medians,
            index_tensor,
            channels,
            per_channel,
            float(lane_overhead),
            lanes,
        )
        return data if as_tensor else data.cpu().numpy().tobytes()
    index_tensor, channels, per_channel = _row_layout(shape, indexes)
    data = _rans().lanes_encode(
        tables.native,
        inputs.cpu().contiguous(),
        medians,
        index_tensor,
        channels,
        per_channel,
        float(lane_overhead),
        lanes,
    )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if as_tensor else data


def encode_parallel(
    symbols: Tensor,
    tables: CoderTables,
    indexes: Tensor | None = None,
    *,
    lane_overhead: float = DEFAULT_LANE_OVERHEAD,
    lanes: int | None = None,
    as_tensor: bool = False,
):
    """Integer symbols (any shape; [N, C, *spatial] without ``indexes``) -> one parallel-format
    container (``bytes``, or a uint8 tensor on the symbols' device with ``as_tensor``).

    The number of lanes (groups of 32 interleaved lanes) is chosen so their fixed cost is about
    ``lane_overhead`` of the estimated compressed size, or set with ``lanes``. The shape is
    stored; decoding needs the same tables (checked by fingerprint) and the same ``indexes``.
    CUDA symbols are coded on their GPU (same bytes as the CPU coder).
    """
    symbols = _as_int32(symbols, "symbols", symbols.device if _cuda_coder_for(symbols) else "cpu")
    return _encode_parallel(symbols, None, tables, indexes, lane_overhead, lanes, as_tensor)


def _decode_parallel(data, medians: Tensor | None, tables: CoderTables, indexes: Tensor | None, device) -> Tensor:
    """Shared body of decode_parallel / decode_parallel_values (GPU for CUDA data or device)."""
    target = (
        torch.device(device)
        if device is not None
        else (data.device if isinstance(data, Tensor) else torch.device("cpu"))
    )
    if target.type == "cuda" and hasattr(_rans(), "lanes_decode_cuda"):
        if not isinstance(data, Tensor):
            data = torch.frombuffer(bytearray(_as_bytes(data)), dtype=torch.uint8)
        data = data.to(target).reshape(-1)
        if data.data_ptr() % 4 or not data.is_contiguous():  # the kernels read the payload as 32-bit words
            data = data.clone(memory_format=torch.contiguous_format)
        if indexes is not None:
            indexes = _as_int32(indexes, "indexes", target)
        if medians is not None:
            medians = medians.detach().to(device=target, dtype=torch.float32).reshape(-1).contiguous()
        return _rans().lanes_decode_cuda(tables.native, tables.device_tables(target), data, medians, indexes)
    index_tensor = None if indexes is None else _as_int32(indexes, "indexes")
    if medians is not None:
        medians = medians.detach().to(device="cpu", dtype=torch.float32).reshape(-1).contiguous()
    return _rans().lanes_decode(tables.native, _as_bytes(data), medians, index_tensor).to(target)


def decode_parallel(data, tables: CoderTables, indexes: Tensor | None = None, *, device=None) -> Tensor:
    """Parallel-format container (``bytes`` or a uint8 tensor) -> int32 symbols in the stored
    shape, decoded on ``device`` (default: the data tensor's device, else the CPU).

    Raises ValueError for a wrong magic/version, failed checksums, truncation, other tables
    (fingerprint) or a corrupted lane.
    """
    return _decode_parallel(data, None, tables, indexes, device)


def parallel_info(data) -> dict:
    """Validated header of a parallel-format container: version, shape, lanes, groups, ..."""
    return _rans().lanes_info(_as_bytes(data))


def _as_bytes(data) -> bytes:
    """A container given as bytes, bytearray, memoryview or a uint8 tensor, as bytes."""
    if isinstance(data, Tensor):
        if data.dtype != torch.uint8:
            raise ValueError(f"data must be a uint8 tensor, got {data.dtype}")
        return data.detach().cpu().contiguous().numpy().tobytes()
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if not isinstance(data, bytes):
        raise ValueError(f"data must be bytes or a uint8 tensor, got {type(data).__name__}")
    return data


# -- float values quantized against per-channel medians (EntropyBottleneck's layout) ----------
# Symbol = round(value - medians[c]) (half to even, as torch.round) and value' = symbol +
# medians[c], computed in float32 inside the coder: no int32 tensor is materialised.


def _values_and_medians(values: Tensor, medians: Tensor, tables: CoderTables):
    if values.dim() < 2:
        raise ValueError(f"values must be [N, C, *spatial], got {tuple(values.shape)}")
    medians = medians.detach().to(device="cpu", dtype=torch.float32).reshape(-1).contiguous()
    if medians.numel() != tables.rows:
        raise ValueError(f"medians must have one value per CDF row ({tables.rows}), got {medians.numel()}")
    return values.detach().to(device="cpu", dtype=torch.float32).contiguous(), medians


def encode_compat_values(values: Tensor, medians: Tensor, tables: CoderTables) -> list[bytes]:
    """Float values [N, C, *spatial] -> N compat streams of round(values - medians[c])."""
    values, medians = _values_and_medians(values, medians, tables)
    _, channels, per_channel = _row_layout(values.shape, None)
    n = values.shape[0]
    if n == 0:
        return []
    return _rans().compat_encode(tables.native, values.reshape(n, -1), medians, None, channels, per_channel)


def decode_compat_values(
    strings: Sequence[bytes], medians: Tensor, tables: CoderTables, shape: Sequence[int]
) -> Tensor:
    """N compat streams -> float32 [N, *shape] (shape = (C, *spatial)) of symbol + medians[c]."""
    strings = _check_strings(strings)
    full_shape = (len(strings), *(int(d) for d in shape))
    medians = medians.detach().to(device="cpu", dtype=torch.float32).reshape(-1).contiguous()
    _, channels, per_channel = _row_layout(full_shape, None)
    out = _rans().compat_decode(tables.native, strings, math.prod(full_shape[1:]), medians, None, channels, per_channel)
    return out.reshape(full_shape)


def encode_parallel_values(
    values: Tensor,
    medians: Tensor,
    tables: CoderTables,
    *,
    lane_overhead: float = DEFAULT_LANE_OVERHEAD,
    lanes: int | None = None,
    as_tensor: bool = False,
):
    """Float values [N, C, *spatial] -> one parallel container of round(values - medians[c])
    (on the GPU for CUDA values)."""
    if values.dim() < 2:
        raise ValueError(f"values must be [N, C, *spatial], got {tuple(values.shape)}")
    if medians.numel() != tables.rows:
        raise ValueError(f"medians must have one value per CDF row ({tables.rows}), got {medians.numel()}")
    medians = medians.detach().float().reshape(-1).contiguous()
    values = values.detach().float()
    if not _cuda_coder_for(values):
        values, medians = values.cpu(), medians.cpu()
    return _encode_parallel(values, medians, tables, None, lane_overhead, lanes, as_tensor)


def decode_parallel_values(data, medians: Tensor, tables: CoderTables, *, device=None) -> Tensor:
    """Parallel container (implicit channel rows) -> float32 symbol + medians[c], stored shape,
    on ``device`` (default: the data tensor's device, else the CPU)."""
    return _decode_parallel(data, medians, tables, None, device)
