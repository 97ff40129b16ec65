"""UDM.compress_degradation / decompress_degradation and the .udm format's robustness."""

import random
import struct

import pytest
import torch

from udm_fast import UDM
from udm_fast.entropy import degradation_code as dc


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UDM(filters=8, encoder_dim=32, global_dim=16, head_layers=1, tail_layers=1).eval().update_entropy_tables()


@pytest.fixture(scope="module")
def code(model):
    return model.compress_degradation(torch.rand(2, 3, 37, 50, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("size", [(37, 50), (16, 16), (9, 130)])
def test_round_trip_equals_eval_encode(model, size):
    y = torch.rand(2, 3, *size)
    e_g, e_l = model.decompress_degradation(model.compress_degradation(y))
    with torch.no_grad():
        ref_g, ref_l = model.encode(y)
    torch.testing.assert_close(e_g, ref_g, rtol=0, atol=0)
    torch.testing.assert_close(e_l, ref_l, rtol=0, atol=0)


def test_a_model_in_training_mode_codes_like_eval_and_keeps_its_state(model):
    y = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(2))
    expected = model.compress_degradation(y)
    model.train()
    model.local_compressor.eval()  # a submodule's own mode is restored as it was
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        assert model.compress_degradation(y) == expected  # BatchNorm uses its running statistics
        model.decompress_degradation(expected)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # nothing updated
        assert model.training and model.global_compressor.training and not model.local_compressor.training
    finally:
        model.eval()


def test_info_reports_sizes(model, code):
    info = dc.info(code)
    assert info["height"] == 37 and info["width"] == 50 and info["bytes"] == len(code)
    assert info["weights_hash"] == model.weights_hash()
    assert info["global_bytes"] > 0 and info["local_bytes"] > 0


def test_other_model_is_refused(code):
    torch.manual_seed(5)
    other = UDM(filters=8, encoder_dim=32, global_dim=16, head_layers=1, tail_layers=1).eval().update_entropy_tables()
    with pytest.raises(dc.DegradationCodeError, match="another model"):
        other.decompress_degradation(code)


def test_tables_are_built_when_missing(model, code):
    """A freshly loaded model has no coder tables: both directions build them from the weights."""
    fresh = UDM(model.config)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    for c in (fresh.global_compressor, fresh.local_compressor):
        c.model._quantized_cdf = torch.empty(0, dtype=torch.int32)
        c.model._offset = torch.empty(0, dtype=torch.int32)
        c.model._cdf_length = torch.empty(0, dtype=torch.int32)
    assert fresh.weights_hash() == model.weights_hash()
    e_g, e_l = fresh.decompress_degradation(code)
    ref_g, ref_l = model.decompress_degradation(code)
    torch.testing.assert_close(e_g, ref_g, rtol=0, atol=0)
    torch.testing.assert_close(e_l, ref_l, rtol=0, atol=0)


def test_malformed_codes(model, code):
    with pytest.raises(dc.DegradationCodeError, match="truncated"):
        model.decompress_degradation(code[:10])
    with pytest.raises(dc.DegradationCodeError, match="announces"):
        model.decompress_degradation(code[:-1])
    with pytest.raises(dc.DegradationCodeError, match="magic"):
        model.decompress_degradation(b"XXXX" + code[4:])
    future = code[:4] + bytes([9]) + code[5:]
    with pytest.raises(dc.DegradationCodeError, match="version 9"):
        model.decompress_degradation(future)
    flipped = bytearray(code)
    flipped[60] ^= 0x40
    with pytest.raises(dc.DegradationCodeError, match="checksum"):
        model.decompress_degradation(bytes(flipped))
    with pytest.raises(dc.DegradationCodeError, match="bytes"):
        model.decompress_degradation("not bytes")


def _resealed(body: bytes) -> bytes:
    import zlib

    return body + struct.pack("<I", zlib.crc32(body))


def test_fuzzed_streams_never_crash(model, code):
    """Mutated streams with a valid outer checksum reach the stream decoders: they must raise, not crash."""
    rng = random.Random(0)
    body = bytearray(code[:-4])
    for _ in range(200):
        mutated = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(dc._HEADER.size, len(mutated))
            mutated[i] = rng.randrange(256)
        try:
            e_g, e_l = model.decompress_degradation(_resealed(bytes(mutated)))
        except dc.DegradationCodeError:
            continue
        assert torch.isfinite(e_g).all() and torch.isfinite(e_l).all()
