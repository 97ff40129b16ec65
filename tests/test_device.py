"""udm_fast.utils.device.parse_device: the one device-name rule of the CLI (--device) and training (run.device)."""

import pytest
import torch

from udm_fast.utils.device import parse_device


class SettingError(ValueError):
    pass


def test_names_that_exist_here():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert parse_device("auto", types=("cpu",)) == torch.device("cpu")  # auto never picks a type the caller lacks


def test_bad_names_say_what_and_how():
    with pytest.raises(ValueError, match=r"device 'gpu7' is not a device .*use auto, cpu, cuda, cuda:N, mps"):
        parse_device("gpu7")
    with pytest.raises(SettingError, match=r"run.device 'mps' is not supported here .*use auto, cpu, cuda, cuda:N$"):
        parse_device("mps", what="run.device", option="run.device", types=("cpu", "cuda"), error=SettingError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages for a machine without CUDA")
def test_cuda_without_a_device_names_the_fix_for_each_caller():
    with pytest.raises(
        ValueError, match=r"^device 'cuda' requested but no CUDA device is available \(use --device cpu\)$"
    ):
        parse_device("cuda")
    with pytest.raises(SettingError, match=r"\(set run.device to cpu or auto\)$"):
        parse_device("cuda:0", what="run.device", option="run.device", error=SettingError)
