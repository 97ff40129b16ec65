"""bench/code_probe.py: the probe separates what is separable, and its 'after rounding' view is on the grid."""

import importlib.util
import os

import pytest
import torch

from udm_fast.models.udm import UDM, UDMConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("code_probe", os.path.join(ROOT, "bench", "code_probe.py"))
code_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(code_probe)


def test_probe_accuracy_is_high_on_separable_and_chance_on_random_labels():
    g = torch.Generator().manual_seed(0)
    labels = (torch.arange(400) % 2).float()
    separable = torch.randn(400, 8, generator=g) + 3.0 * labels[:, None] * torch.eye(8)[0]
    assert code_probe.probe_accuracy(separable, labels, 300)[1] > 0.9
    shuffled = labels[torch.randperm(400, generator=g)]
    assert 0.3 < code_probe.probe_accuracy(torch.randn(400, 8, generator=g), shuffled, 300)[1] < 0.7


def test_features_give_the_three_views_and_the_rounded_latent_lies_on_the_grid():
    model = UDM(UDMConfig(filters=8, global_dim=16, encoder_dim=16, queue_size=8)).eval()
    y = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    views = code_probe.features(model, y)
    assert [v.shape for v in views.values()] == [(3, 32), (3, 16), (3, 16)]
    medians = model.global_compressor.model._get_medians().detach().reshape(1, -1)
    after = views["e_g latent after rounding"] - medians
    torch.testing.assert_close(after, torch.round(after), rtol=0, atol=1e-5)


def test_crops_reject_an_empty_folder(tmp_path):
    with pytest.raises(SystemExit, match="no .png/.jpg photos"):
        code_probe.crops(str(tmp_path), 8, 64, 0)
