"""rANS coders: compat streams against compressai.ans, the parallel format against a pure-Python
reference implementation of its specification, round trips and error handling."""

import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

ans = pytest.importorskip("compressai.ans")
from compressai._CXX import pmf_to_quantized_cdf as reference_pmf_to_cdf  # noqa: E402
from compressai.entropy_models import EntropyBottleneck as ReferenceEB  # noqa: E402

from udm_fast.entropy import coder  # noqa: E402
from udm_fast.entropy.bottleneck import EntropyBottleneck  # noqa: E402

COMPRESSAI_MAX_ESCAPE = 2**26  # compressai's coder overflows for escapes of magnitude >= ~2**27


# -- tables and data ------------------------------------------------------------------------
def random_tables(rng, rows, max_length=40, min_length=3):
    """compressai-quantized CDF rows of random lengths, zero-padded like _quantized_cdf.

    min_length 2 gives rows holding only the escape bin (frequency 65536): compressai's encoder
    stores frequencies as uint16 and divides by zero on them, so only our coders get those."""
    lengths = rng.integers(min_length, max_length + 1, size=rows)  # CDF entries = pmf bins (tail included) + 1
    cdfs = []
    for n in lengths:
        pmf = rng.gamma(0.3, size=int(n) - 1).astype(np.float32) + np.float32(1e-7)
        pmf = (pmf / pmf.sum()).astype(np.float32)
        cdfs.append(reference_pmf_to_cdf(pmf.tolist(), 16))
    width = max(len(c) for c in cdfs)
    table = np.zeros((rows, width), dtype=np.int32)
    for r, c in enumerate(cdfs):
        table[r, : len(c)] = c
    cdf_length = np.array([len(c) for c in cdfs], dtype=np.int32)
    offsets = rng.integers(-30, 10, size=rows).astype(np.int32)
    return torch.from_numpy(table), torch.from_numpy(cdf_length), torch.from_numpy(offsets)


def sample_symbols(rng, rows_of_symbols, cdf, cdf_length, offset, escape_rate=0.02, escape_scale=5000):
    """Symbols drawn from each row's CDF, with some escapes on both sides."""
    cdf, cdf_length, offset = cdf.numpy(), cdf_length.numpy(), offset.numpy()
    rows = np.asarray(rows_of_symbols).reshape(-1)
    u = rng.integers(0, 65536, size=rows.size)
    values = np.empty(rows.size, dtype=np.int64)
    for i, (r, cum) in enumerate(zip(rows, u)):
        n = cdf_length[r]
        values[i] = min(np.searchsorted(cdf[r, :n], cum, side="right") - 1, n - 3)  # in-range bins only
    escapes = rng.random(rows.size) < escape_rate
    big = rng.integers(1, escape_scale, size=rows.size) * rng.choice([-1, 1], size=rows.size)
    max_values = cdf_length[rows] - 2
    values = np.where(escapes, np.where(big < 0, big, max_values + big), values)
    values = np.where(max_values == 0, big, values)  # rows that only have the escape bin
    return torch.from_numpy((values + offset[rows]).astype(np.int32)).reshape(np.shape(rows_of_symbols))


def compressai_encode(symbols, indexes, cdf, cdf_length, offset):
    return ans.RansEncoder().encode_with_indexes(
        symbols.reshape(-1).tolist(), indexes.reshape(-1).tolist(), cdf.tolist(), cdf_length.tolist(), offset.tolist()
    )


def compressai_decode(data, indexes, cdf, cdf_length, offset):
    return ans.RansDecoder().decode_with_indexes(
        data, indexes.reshape(-1).tolist(), cdf.tolist(), cdf_length.tolist(), offset.tolist()
    )


def channel_indexes(shape):
    return torch.arange(shape[1], dtype=torch.int32).reshape(1, -1, *([1] * (len(shape) - 2))).expand(shape)


# -- compat: byte equality with compressai ------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (4, 6), (2, 3, 40), (1, 1, 5, 5)])
def test_compat_channel_rows_match_compressai(shape):
    rng = np.random.default_rng(sum(shape))
    cdf, cdf_length, offset = random_tables(rng, shape[1])
    indexes = channel_indexes(shape)
    symbols = sample_symbols(rng, indexes, cdf, cdf_length, offset)
    tables = coder.CoderTables(cdf, cdf_length, offset)
    ours = coder.encode_compat(symbols, tables)
    expected = [compressai_encode(symbols[n], indexes[n], cdf, cdf_length, offset) for n in range(shape[0])]
    assert ours == expected
    decoded = coder.decode_compat(expected, tables, shape[1:])
    assert decoded.dtype == torch.int32 and torch.equal(decoded, symbols)


def test_compat_explicit_indexes_and_escapes_match_compressai():
    rng = np.random.default_rng(7)
    cdf, cdf_length, offset = random_tables(rng, 12)
    indexes = torch.from_numpy(rng.integers(0, 12, size=(3, 500)).astype(np.int32))
    symbols = sample_symbols(rng, indexes, cdf, cdf_length, offset, escape_rate=0.2, escape_scale=COMPRESSAI_MAX_ESCAPE)
    tables = coder.CoderTables(cdf, cdf_length, offset)
    ours = coder.encode_compat(symbols, tables, indexes)
    for n in range(3):
        assert ours[n] == compressai_encode(symbols[n], indexes[n], cdf, cdf_length, offset)
    assert torch.equal(coder.decode_compat(ours, tables, indexes=indexes), symbols)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_compat_tiny_streams_decode_with_compressai(count):
    # compressai's encoder writes out of bounds for streams this short: compare decoding only.
    rng = np.random.default_rng(count)
    cdf, cdf_length, offset = random_tables(rng, 2)
    indexes = torch.from_numpy(rng.integers(0, 2, size=(1, count)).astype(np.int32))
    symbols = sample_symbols(rng, indexes, cdf, cdf_length, offset, escape_rate=0.5)
    tables = coder.CoderTables(cdf, cdf_length, offset)
    (data,) = coder.encode_compat(symbols, tables, indexes)
    assert compressai_decode(data, indexes[0], cdf, cdf_length, offset) == symbols[0].tolist()
    assert torch.equal(coder.decode_compat([data], tables, indexes=indexes), symbols)


def test_compat_segments_match_buffered_encoder():
    rng = np.random.default_rng(11)
    segments, reference = [], ans.BufferedRansEncoder()
    for rows, length in ((5, 300), (9, 1), (3, 77)):
        cdf, cdf_length, offset = random_tables(rng, rows)
        indexes = torch.from_numpy(rng.integers(0, rows, size=length).astype(np.int32))
        symbols = sample_symbols(rng, indexes, cdf, cdf_length, offset, escape_rate=0.1)
        reference.encode_with_indexes(
            symbols.tolist(), indexes.tolist(), cdf.tolist(), cdf_length.tolist(), offset.tolist()
        )
        segments.append((symbols, indexes, (cdf, cdf_length, offset)))
    expected = reference.flush()
    tables = [coder.CoderTables(*t) for _, _, t in segments]
    data = coder.encode_compat_segments([(s, i, t) for (s, i, _), t in zip(segments, tables)])
    assert data == expected
    decoded = coder.decode_compat_segments(expected, [(i, t) for (_, i, _), t in zip(segments, tables)])
    decoder = ans.RansDecoder()
    decoder.set_stream(expected)
    for (symbols, indexes, (cdf, cdf_length, offset)), got in zip(segments, decoded):
        assert torch.equal(got, symbols)
        assert (
            decoder.decode_stream(indexes.tolist(), cdf.tolist(), cdf_length.tolist(), offset.tolist())
            == symbols.tolist()
        )


def test_compat_huge_values_round_trip():
    rng = np.random.default_rng(3)
    cdf, cdf_length, offset = random_tables(rng, 4, min_length=2)
    tables = coder.CoderTables(cdf, cdf_length, offset)
    extremes = torch.tensor([[[2**31 - 1, -(2**31), 2**27 + 5, -(2**29), 0, 1, -1, 123456789]] * 4], dtype=torch.int32)
    for data in (coder.encode_compat(extremes, tables), coder.encode_parallel(extremes, tables)):
        decoded = (
            coder.decode_compat(data, tables, extremes.shape[1:])
            if isinstance(data, list)
            else coder.decode_parallel(data, tables)
        )
        assert torch.equal(decoded, extremes)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 6),
    items=st.integers(1, 3),
    length=st.integers(4, 120),
    escape_rate=st.sampled_from([0.0, 0.05, 0.5]),
)
def test_compat_property_matches_compressai(seed, rows, items, length, escape_rate):
    rng = np.random.default_rng(seed)
    cdf, cdf_length, offset = random_tables(rng, rows, max_length=int(rng.integers(3, 70)))
    indexes = torch.from_numpy(rng.integers(0, rows, size=(items, length)).astype(np.int32))
    symbols = sample_symbols(
        rng,
        indexes,
        cdf,
        cdf_length,
        offset,
        escape_rate=escape_rate,
        escape_scale=int(rng.choice([20, 5000, COMPRESSAI_MAX_ESCAPE])),
    )
    tables = coder.CoderTables(cdf, cdf_length, offset)
    ours = coder.encode_compat(symbols, tables, indexes)
    assert ours == [compressai_encode(symbols[n], indexes[n], cdf, cdf_length, offset) for n in range(items)]
    assert torch.equal(coder.decode_compat(ours, tables, indexes=indexes), symbols)


# -- EntropyBottleneck.compress / decompress --------------------------------------------------
def _updated_pair(channels, seed=0):
    torch.manual_seed(seed)
    reference = ReferenceEB(channels)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.2 * torch.randn_like(p))
    reference.update(force=True)
    ours = EntropyBottleneck(channels)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


@pytest.mark.parametrize("shape", [(3, 6, 9, 7), (5, 6), (2, 6, 11)])
def test_entropy_bottleneck_compress_matches_compressai(shape):
    reference, ours = _updated_pair(shape[1])
    x = 4 * torch.randn(shape)
    x.view(-1)[::37] *= 200  # escapes
    x.view(-1)[5] = 0.5 + ours.quantiles[0, 0, 1].item()  # a tie: round half to even
    strings = reference.compress(x)
    assert ours.compress(x) == strings
    assert ours.compress(x.double()) == reference.compress(x.double())
    expected = reference.decompress(strings, shape[2:])
    got = ours.decompress(strings, shape[2:])
    assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_entropy_bottleneck_parallel_round_trip_and_cache():
    _, ours = _updated_pair(4, seed=1)
    x = 3 * torch.randn(2, 4, 8, 8)
    data = ours.compress_parallel(x)
    y_hat, _ = ours(x, training=False)
    assert torch.equal(ours.decompress_parallel(data), y_hat)
    tables = ours.coder_tables()
    assert ours.coder_tables() is tables  # prepared once
    ours._offset.data -= 1  # edits through .data (or numpy) leave no version trace: contents are compared
    assert ours.coder_tables() is not tables and ours.compress_parallel(x) != data
    ours._offset.data += 1
    assert ours.compress_parallel(x) == data


def test_entropy_bottleneck_rejects_nan_and_missing_tables():
    _, ours = _updated_pair(3)
    x = torch.zeros(1, 3, 4, 4)
    x[0, 1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        ours.compress(x)
    with pytest.raises(ValueError, match="update"):
        EntropyBottleneck(3).compress(torch.zeros(1, 3, 2, 2))


# -- parallel format: reference implementation of the specification -----------------------
def _checksum(block: bytes) -> int:
    mask = (1 << 64) - 1
    total = 0
    for i, (word,) in enumerate(struct.iter_unpack("<I", block)):
        z = (((i << 32) | word) + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        total = (total + (z ^ (z >> 31))) & mask
    return total


def _fingerprint(cdf, cdf_length, offset) -> int:
    mask, h = (1 << 64) - 1, 0xCBF29CE484222325

    def mix(h, value):
        for byte in (value & mask).to_bytes(8, "little"):
            h = ((h ^ byte) * 0x100000001B3) & mask
        return h

    h = mix(h, cdf.shape[0])
    for r in range(cdf.shape[0]):
        h = mix(mix(h, int(cdf_length[r])), int(offset[r]))
        for v in cdf[r, : cdf_length[r]].tolist():
            h = mix(h, v)
    return h


def reference_encode_parallel(
    symbols, rows, cdf, cdf_length, offset, lanes_per_group, group_symbols, channels, per_channel, shape
):
    """The parallel format, written from its specification (rans_core.h, lanes_format.h)."""
    symbols, rows = symbols.reshape(-1).tolist(), rows.reshape(-1).tolist()
    cdf, cdf_length, offset = cdf.tolist(), cdf_length.tolist(), offset.tolist()
    n, width = len(symbols), lanes_per_group
    groups = -(-n // group_symbols) if n else 0
    states_block, words_block, counts = b"", [], []
    for g in range(groups):
        first = g * group_symbols
        count = min(group_symbols, n - first)
        x = [1 << 16] * width
        emitted = []
        for t in reversed(range(-(-count // width))):
            ops = {}
            for j in range(min(width, count - t * width)):
                i = first + t * width + j
                r = rows[i]
                max_value = cdf_length[r] - 2
                value = symbols[i] - offset[r]
                if 0 <= value < max_value:
                    ops[j] = [(cdf[r][value], cdf[r][value + 1] - cdf[r][value], 16)]
                    continue
                raw = -2 * value - 1 if value < 0 else 2 * (value - max_value)
                nibbles = [(raw >> (4 * k)) & 15 for k in range((raw.bit_length() + 3) // 4)]
                ops[j] = [(cdf[r][max_value], cdf[r][max_value + 1] - cdf[r][max_value], 16), (len(nibbles), 1, 4)]
                ops[j] += [(v, 1, 4) for v in nibbles]
            for k in reversed(range(max(len(o) for o in ops.values()))):
                for j in sorted(ops, reverse=True):
                    if k < len(ops[j]):
                        start, freq, scale = ops[j][k]
                        if x[j] >= (((1 << 16) >> scale) << 16) * freq:
                            emitted.append(x[j] & 0xFFFF)
                            x[j] >>= 16
                        x[j] = ((x[j] // freq) << scale) + x[j] % freq + start
        states_block += struct.pack(f"<{width}I", *x)
        words_block += emitted[::-1]
        counts.append(len(emitted))
    if len(words_block) % 2:
        words_block.append(0)
    payload = states_block + struct.pack(f"<{len(words_block)}H", *words_block)
    explicit = channels == 0
    fixed = bytearray(
        struct.pack(
            "<4sHBBQQQIIIHHQQ",
            b"UDMr",
            1,
            1,
            int(explicit),
            _fingerprint(np.array(cdf), cdf_length, offset),
            n,
            per_channel,
            channels,
            groups,
            group_symbols,
            len(shape),
            width,
            _checksum(payload),
            0,
        )
    )
    header = bytes(fixed) + struct.pack(f"<{len(shape)}Q", *shape) + struct.pack(f"<{groups}I", *counts)
    header = header[:56] + struct.pack("<Q", _checksum(header)) + header[64:]
    return header + payload


@pytest.mark.parametrize("explicit,lanes", [(False, None), (False, 70), (True, 40), (False, 5)])
def test_parallel_bytes_match_reference_implementation(explicit, lanes):
    rng = np.random.default_rng(5)
    shape = (2, 6, 10, 13)
    cdf, cdf_length, offset = random_tables(rng, 6)
    indexes = (
        torch.from_numpy(rng.integers(0, 6, size=shape).astype(np.int32))
        if explicit
        else channel_indexes(shape).contiguous()
    )
    symbols = sample_symbols(rng, indexes, cdf, cdf_length, offset, escape_rate=0.05)
    tables = coder.CoderTables(cdf, cdf_length, offset)
    data = coder.encode_parallel(symbols, tables, indexes if explicit else None, lanes=lanes)
    info = coder.parallel_info(data)
    assert info["shape"] == list(shape) and info["explicit_indexes"] == explicit
    if lanes is not None:
        assert info["lanes_per_group"] == min(lanes, 32)
    expected = reference_encode_parallel(
        symbols,
        indexes,
        cdf,
        cdf_length,
        offset,
        info["lanes_per_group"],
        info["group_symbols"],
        0 if explicit else 6,
        0 if explicit else 130,
        shape,
    )
    assert data == expected
    decoded = coder.decode_parallel(data, tables, indexes if explicit else None)
    assert torch.equal(decoded, symbols)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 5),
    size=st.integers(0, 400),
    lanes=st.sampled_from([None, 1, 7, 32, 33, 200]),
    escape_rate=st.sampled_from([0.0, 0.1, 1.0]),
)
def test_parallel_property_round_trip(seed, rows, size, lanes, escape_rate):
    rng = np.random.default_rng(seed)
    cdf, cdf_length, offset = random_tables(rng, rows, max_length=int(rng.integers(2, 60)), min_length=2)
    indexes = torch.from_numpy(rng.integers(0, rows, size=(size,)).astype(np.int32))
    symbols = sample_symbols(
        rng, indexes, cdf, cdf_length, offset, escape_rate=escape_rate, escape_scale=int(rng.choice([10, 2**30]))
    )
    tables = coder.CoderTables(cdf, cdf_length, offset)
    data = coder.encode_parallel(symbols, tables, indexes, lanes=lanes)
    assert torch.equal(coder.decode_parallel(data, tables, indexes), symbols)


def laplace_tables_and_symbols(channels, shape, scales, seed=0):
    """Tables of discretised Laplace pmfs (as update() builds them) and symbols drawn from them."""
    rng = np.random.default_rng(seed)
    rows, lengths, offsets = [], [], []
    for b in scales:
        half = int(np.ceil(b * 21)) + 1  # covers all but ~1e-9 of the mass
        k = np.arange(-half, half + 1)
        cdf_at = lambda v: np.where(v < 0, 0.5 * np.exp(v / b), 1 - 0.5 * np.exp(-v / b))  # noqa: E731, B023
        pmf = (cdf_at(k + 0.5) - cdf_at(k - 0.5)).astype(np.float32)
        tail = np.float32(1 - pmf.sum(dtype=np.float64))
        rows.append(reference_pmf_to_cdf(np.append(pmf, max(tail, np.float32(1e-9))).tolist(), 16))
        lengths.append(len(rows[-1]))
        offsets.append(-half)
    table = np.zeros((channels, max(lengths)), dtype=np.int32)
    for r, row in enumerate(rows):
        table[r, : len(row)] = row
    symbols = np.rint(rng.laplace(0, np.asarray(scales)[None, :, None, None], size=shape)).astype(np.int32)
    tables = (
        torch.from_numpy(table),
        torch.tensor(lengths, dtype=torch.int32),
        torch.tensor(offsets, dtype=torch.int32),
    )
    return tables, torch.from_numpy(symbols)


@pytest.mark.parametrize("scales", [np.geomspace(0.3, 8, 16), np.full(16, 0.3)])
def test_parallel_size_within_one_percent_of_compat(scales):
    (cdf, cdf_length, offset), symbols = laplace_tables_and_symbols(16, (8, 16, 48, 48), scales)
    tables = coder.CoderTables(cdf, cdf_length, offset)
    compat = sum(map(len, coder.encode_compat(symbols, tables)))
    parallel = coder.encode_parallel(symbols, tables)
    assert len(parallel) <= 1.01 * compat, (len(parallel), compat, coder.parallel_info(parallel))
    assert torch.equal(coder.decode_parallel(parallel, tables), symbols)


def test_parallel_tiny_global_latent_within_one_percent():
    (cdf, cdf_length, offset), symbols = laplace_tables_and_symbols(64, (24, 64, 1, 1), np.geomspace(0.5, 20, 64))
    tables = coder.CoderTables(cdf, cdf_length, offset)
    compat = sum(map(len, coder.encode_compat(symbols, tables)))
    assert len(coder.encode_parallel(symbols, tables)) <= 1.01 * compat


# -- errors ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coded():
    rng = np.random.default_rng(1)
    cdf, cdf_length, offset = random_tables(rng, 4)
    shape = (2, 4, 30)
    symbols = sample_symbols(rng, channel_indexes(shape), cdf, cdf_length, offset, escape_rate=0.05)
    tables = coder.CoderTables(cdf, cdf_length, offset)
    return tables, symbols, coder.encode_compat(symbols, tables), coder.encode_parallel(symbols, tables, lanes=64)


def test_compat_decode_errors(coded):
    tables, symbols, strings, _ = coded
    shape = symbols.shape[1:]
    with pytest.raises(ValueError, match="truncated|multiple of 4|initial state"):
        coder.decode_compat([strings[0][:-4], strings[1]], tables, shape)
    with pytest.raises(ValueError, match="left after"):
        coder.decode_compat([strings[0] + b"\0\0\0\0", strings[1]], tables, shape)
    with pytest.raises(ValueError, match="multiple of 4"):
        coder.decode_compat([strings[0][:6], strings[1]], tables, shape)
    with pytest.raises(ValueError):
        coder.decode_compat(strings, tables, (4, 31))  # wrong size
    with pytest.raises(ValueError, match="list of bytes"):
        coder.decode_compat(strings[0], tables, shape)


def test_parallel_decode_errors(coded):
    tables, symbols, _, data = coded
    with pytest.raises(ValueError, match="magic"):
        coder.decode_parallel(b"XXXX" + data[4:], tables)
    newer = bytearray(data)
    newer[4] = 2
    with pytest.raises(ValueError, match="version 2"):
        coder.decode_parallel(bytes(newer), tables)
    with pytest.raises(ValueError, match="truncated"):
        coder.decode_parallel(data[:-2], tables)
    with pytest.raises(ValueError, match="trailing"):
        coder.decode_parallel(data + b"\0\0", tables)
    corrupted = bytearray(data)
    corrupted[-3] ^= 0x10
    with pytest.raises(ValueError, match="checksum"):
        coder.decode_parallel(bytes(corrupted), tables)
    header = bytearray(data)
    header[20] ^= 1
    with pytest.raises(ValueError, match="header checksum"):
        coder.parallel_info(bytes(header))
    rng = np.random.default_rng(2)
    other = coder.CoderTables(*random_tables(rng, 4))
    with pytest.raises(ValueError, match="different CDF tables"):
        coder.decode_parallel(data, other)
    with pytest.raises(ValueError, match="implicit rows"):
        coder.decode_parallel(data, tables, indexes=torch.zeros(symbols.shape, dtype=torch.int32))


def test_parallel_headers_whose_shape_contradicts_the_rows_are_refused():
    rng = np.random.default_rng(3)
    cdf, cdf_length, offset = random_tables(rng, 4)
    tables = coder.CoderTables(cdf, cdf_length, offset)
    cases = [
        ((2**63, 0), 4, 1),  # a zero dim hides a dim beyond int64
        ((2**64 - 1, 0, 4), 4, 4),
        ((2, 4, 3), 2, 3),
    ]  # rows claim 2 channels of 3, the shape says 4 channels
    for shape, channels, per_channel in cases:
        n = int(np.prod(shape, dtype=object))
        rows = torch.tensor([(i // per_channel) % channels for i in range(n)], dtype=torch.int32)
        symbols = offset[rows.long()]  # each row's first symbol: always in range
        data = reference_encode_parallel(symbols, rows, cdf, cdf_length, offset, 32, 64, channels, per_channel, shape)
        with pytest.raises(ValueError, match="header is invalid"):
            coder.parallel_info(data)
        with pytest.raises(ValueError, match="header is invalid"):
            coder.decode_parallel(data, tables)


def test_int64_inputs_beyond_int32_are_refused_not_wrapped(coded):
    tables, symbols, _, data = coded
    too_big = torch.full(symbols.shape, 2**32 + 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="indexes must fit int32"):
        coder.encode_compat(symbols, tables, indexes=too_big)
    with pytest.raises(ValueError, match="indexes must fit int32"):
        coder.encode_parallel(symbols, tables, indexes=too_big)
    rng = np.random.default_rng(0)
    cdf, cdf_length, offset = random_tables(rng, 2)
    with pytest.raises(ValueError, match="quantized_cdf must fit int32"):
        coder.CoderTables(cdf.long() + 2**32, cdf_length, offset)
    assert coder.parallel_info(torch.frombuffer(bytearray(data), dtype=torch.uint8)) == coder.parallel_info(data)


def test_invalid_tables_and_symbols_raise():
    cdf = torch.tensor([[0, 100, 65536, 0], [0, 70000, 65536, 0]], dtype=torch.int32)
    with pytest.raises(ValueError, match="row 1 is not strictly increasing"):
        coder.CoderTables(cdf, torch.tensor([3, 3], dtype=torch.int32), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="length 5"):
        coder.CoderTables(cdf[:1], torch.tensor([5], dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match="end at 65536"):
        coder.CoderTables(cdf[:1], torch.tensor([2], dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
    tables = coder.CoderTables(cdf[:1], torch.tensor([3], dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match="outside the 1 CDF rows"):
        coder.encode_compat(torch.zeros(1, 4, dtype=torch.int32), tables, torch.full((1, 4), 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="channels"):
        coder.encode_compat(torch.zeros(1, 2, 4, dtype=torch.int32), tables)
    with pytest.raises(ValueError, match="integer"):
        coder.encode_compat(torch.zeros(1, 1, 4), tables)


def test_float_quantization_matches_torch_round():
    """The coders' fused float path rounds exactly like torch.round(x - median).int()."""
    rng = np.random.default_rng(9)
    cdf, cdf_length, offset = random_tables(rng, 3)
    tables = coder.CoderTables(cdf, cdf_length, offset)
    medians = torch.tensor([0.0, 0.25, -3.5])
    edges = torch.tensor(
        [
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            0.49999997,
            -0.49999997,
            8388607.5,
            -8388607.5,
            8388609.0,
            2.0**30,
            -(2.0**31),
            2147483520.0,
            -0.0,
            1e-30,
            3.4999998,
            100.5,
        ]
    )
    values = torch.cat([edges, torch.randn(300) * 50, torch.randn(300).round() + 0.5]).reshape(1, 1, -1)
    values = (values.expand(2, 3, -1) + medians.reshape(1, 3, 1)).contiguous()
    symbols = torch.round(values - medians.reshape(1, 3, 1)).int()
    assert coder.encode_compat_values(values, medians, tables) == coder.encode_compat(symbols, tables)
    assert coder.encode_parallel_values(values, medians, tables) == coder.encode_parallel(symbols, tables)
    for bad in (float("inf"), float("nan"), 2.0**31, -(2.0**32)):
        broken = values.clone()
        broken[1, 2, 7] = bad
        with pytest.raises(ValueError, match="position"):
            coder.encode_compat_values(broken, medians, tables)
        with pytest.raises(ValueError, match="position"):
            coder.encode_parallel_values(broken, medians, tables)


# -- CUDA coder of the parallel format: same bytes as the CPU coder ---------------------------
def _cuda_coder_or_skip():
    from udm_fast.ops import extension as _ext

    if not hasattr(_ext.require().rans, "lanes_encode_cuda"):
        pytest.skip("extension built without the CUDA coder")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "explicit,lanes,escape_rate",
    [(False, None, 0.0), (False, 5, 0.05), (True, 70, 0.05), (False, 4096, 0.3), (True, None, 0.0)],
)
def test_cuda_parallel_bytes_match_cpu(explicit, lanes, escape_rate):
    _cuda_coder_or_skip()
    rng = np.random.default_rng(21)
    shape = (3, 7, 33, 35)
    cdf, cdf_length, offset = random_tables(rng, 7, min_length=2)
    indexes = (
        torch.from_numpy(rng.integers(0, 7, size=shape).astype(np.int32))
        if explicit
        else channel_indexes(shape).contiguous()
    )
    symbols = sample_symbols(
        rng, indexes, cdf, cdf_length, offset, escape_rate=escape_rate, escape_scale=int(rng.choice([30, 2**30]))
    )
    tables = coder.CoderTables(cdf, cdf_length, offset)
    rows = indexes if explicit else None
    expected = coder.encode_parallel(symbols, tables, rows, lanes=lanes)
    on_gpu = coder.encode_parallel(
        symbols.cuda(), tables, None if rows is None else rows.cuda(), lanes=lanes, as_tensor=True
    )
    assert on_gpu.is_cuda and on_gpu.cpu().numpy().tobytes() == expected
    decoded = coder.decode_parallel(on_gpu, tables, None if rows is None else rows.cuda())
    assert decoded.is_cuda and torch.equal(decoded.cpu(), symbols)
    assert torch.equal(coder.decode_parallel(expected, tables, rows, device="cuda").cpu(), symbols)


@pytest.mark.gpu
def test_gpu_parallel_decode_of_a_misaligned_view():
    from udm_fast import EntropyBottleneck

    torch.manual_seed(0)
    eb = EntropyBottleneck(4).eval()
    eb.update(force=True)
    x = 3 * torch.randn(2, 4, 8, 8)
    data = torch.frombuffer(bytearray(eb.compress_parallel(x)), dtype=torch.uint8)
    shifted = torch.cat([torch.zeros(1, dtype=torch.uint8), data]).cuda()[1:]  # payload off 4-byte alignment
    assert torch.equal(eb.cuda().decompress_parallel(shifted).cpu(), eb.cpu().decompress_parallel(data))


@pytest.mark.gpu
def test_cuda_parallel_values_and_errors():
    _cuda_coder_or_skip()
    from test_coder_fuzz import mutate, repair_checksums

    _, ours = _updated_pair(6, seed=4)
    x = 3 * torch.randn(4, 6, 40, 24)
    x.view(-1)[::97] *= 100
    expected = ours.compress_parallel(x)
    y_hat, _ = ours(x, training=False)
    tables = ours.coder_tables()
    medians = ours.quantiles[:, 0, 1].detach()
    ours.cuda()
    assert ours.compress_parallel(x.cuda()) == expected
    assert torch.equal(ours.decompress_parallel(expected).cpu(), y_hat)
    corrupted = bytearray(expected)
    corrupted[-5] ^= 0x40
    with pytest.raises(ValueError, match="checksum"):
        ours.decompress_parallel(bytes(corrupted))
    # Adversarial streams (valid checksums): the GPU decoder agrees with the CPU decoder.
    rng = np.random.default_rng(0)
    for _ in range(30):
        bad = repair_checksums(mutate(rng, expected))
        outcomes = []
        for device in ("cpu", "cuda"):
            try:
                outcomes.append(coder.decode_parallel_values(bad, medians, tables, device=device).cpu())
            except ValueError:
                outcomes.append(None)
        assert (outcomes[0] is None) == (outcomes[1] is None)
        if outcomes[0] is not None:
            assert torch.equal(outcomes[0], outcomes[1])
    bad_input = x.cuda()
    bad_input[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="position"):
        ours.compress_parallel(bad_input)
