"""Bounded fuzzing of the rANS decoders through the Python API: mutated streams (bit flips,
truncation, extension, overwritten bytes; lane containers also with repaired checksums) must
decode or raise ValueError -- never crash or hang. (A longer run of the same idea under
AddressSanitizer uses csrc/rans/fuzz_harness.cc, see bench/NOTES.md.)"""

import struct

import numpy as np
import pytest
import torch

pytest.importorskip("compressai")
from test_coder import _checksum, random_tables, sample_symbols  # noqa: E402

from udm_fast.entropy import coder  # noqa: E402

ROUNDS = 120
MUTATIONS = 25


def mutate(rng, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.integers(0, 5)
    if kind == 0 and b:
        b[rng.integers(0, len(b))] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:
        del b[rng.integers(0, len(b) + 1) :]
    elif kind == 2:
        b += rng.integers(0, 256, size=int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
    elif kind == 3 and b:
        for _ in range(int(rng.integers(1, 8))):
            b[rng.integers(0, len(b))] = rng.integers(0, 256)
    elif len(b) > 8:
        start = int(rng.integers(0, len(b) - 4))
        del b[start : start + int(rng.integers(1, 5)) * 4]
    return bytes(b)


def repair_checksums(data: bytes) -> bytes:
    """Recomputes both checksums of a (mutated) lane container, as an adversary would."""
    if len(data) < 64:
        return data
    (ndim,) = struct.unpack_from("<H", data, 44)
    (groups,) = struct.unpack_from("<I", data, 36)
    header = 64 + 8 * ndim + 4 * groups
    if header > len(data) or (len(data) - header) % 4:
        return data
    b = bytearray(data)
    struct.pack_into("<Q", b, 48, _checksum(bytes(b[header:])))
    struct.pack_into("<Q", b, 56, 0)
    struct.pack_into("<Q", b, 56, _checksum(bytes(b[:header])))
    return bytes(b)


def test_fuzz_decoders_never_crash():
    rng = np.random.default_rng(2024)
    outcomes = {"decoded": 0, "rejected": 0}
    for _ in range(ROUNDS):
        rows = int(rng.integers(1, 5))
        cdf, cdf_length, offset = random_tables(rng, rows, max_length=int(rng.integers(2, 50)), min_length=2)
        tables = coder.CoderTables(cdf, cdf_length, offset)
        indexes = torch.from_numpy(rng.integers(0, rows, size=(2, int(rng.integers(1, 200)))).astype(np.int32))
        symbols = sample_symbols(
            rng, indexes, cdf, cdf_length, offset, escape_rate=0.1, escape_scale=int(rng.choice([50, 2**30]))
        )
        strings = coder.encode_compat(symbols, tables, indexes)
        container = coder.encode_parallel(symbols, tables, indexes, lanes=int(rng.integers(0, 80)))
        for m in range(MUTATIONS):
            bad = list(strings)
            k = int(rng.integers(0, 2))
            bad[k] = mutate(rng, bad[k])
            try:
                decoded = coder.decode_compat(bad, tables, indexes=indexes)
                assert decoded.shape == symbols.shape
                outcomes["decoded"] += 1
            except ValueError:
                outcomes["rejected"] += 1
            bad_container = mutate(rng, container)
            if m % 2:
                bad_container = repair_checksums(bad_container)
            try:
                info = coder.parallel_info(bad_container)
                if info["n_symbols"] > 10**6:
                    continue  # a consistent header may claim a huge tensor; not worth allocating here
                explicit = torch.zeros(info["shape"], dtype=torch.int32) if info["explicit_indexes"] else None
                coder.decode_parallel(bad_container, tables, explicit)
                outcomes["decoded"] += 1
            except ValueError:
                outcomes["rejected"] += 1
    assert outcomes["rejected"] > outcomes["decoded"] > 0
