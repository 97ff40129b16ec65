"""bench/spectrum_profile.py: an identity transfer shows 0 dB in every ring, and a blurred y loses the high rings."""

import importlib.util
import os

import pytest
import torch

from udm_fast import UDM
from udm_fast.synthesis.degrade import gaussian_blur

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("spectrum_profile", os.path.join(ROOT, "bench", "spectrum_profile.py"))
spectrum_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(spectrum_profile)


def test_identity_transfer_is_flat_and_blur_falls_off():
    torch.manual_seed(0)
    model = UDM(filters=8, encoder_dim=16, global_dim=16, queue_size=8, residual_output=True).eval()
    with torch.no_grad():
        model.generator.net.conv_last.conv2d.weight.zero_()  # ŷ = x whatever the code
    model.update_entropy_tables(force=True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    profile = spectrum_profile.ring_profile(model, x, gaussian_blur(x, 1.5), rings=6)
    assert profile["ŷ/x dB"] == pytest.approx([0.0] * 6, abs=1e-4)
    assert profile["distance model"] == pytest.approx(profile["distance identity"], rel=1e-4)
    assert profile["y/x dB"][0] > -0.5 and profile["y/x dB"][-1] < -10  # the blur's high rings are gone
    assert profile["frequency"] == sorted(profile["frequency"])


def test_bad_seed_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--seed must be"):
        spectrum_profile.main(["--clean", str(tmp_path), "--seed", "q74"])
