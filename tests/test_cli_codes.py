"""`udm-fast encode` / `decode` / `transfer --code`: round trip through a .udm file, and errors."""

import pytest
import torch

from udm_fast import UDM
from udm_fast.cli import main
from udm_fast.utils.io import load_image, save_image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("codes")
    torch.manual_seed(0)
    model = UDM(filters=4, encoder_dim=16, global_dim=16).eval()
    model.save(root / "m.pt")
    g = torch.Generator().manual_seed(0)
    save_image(torch.rand(1, 3, 45, 61, generator=g), root / "y.png")
    save_image(torch.rand(1, 3, 37, 50, generator=g), root / "x.png")
    return root


def test_encode_decode_transfer_round_trip(files, capsys):
    w = str(files / "m.pt")
    assert main(["encode", "--degraded", str(files / "y.png"), "--out", str(files / "c.udm"), "--weights", w]) == 0
    assert main(["decode", str(files / "c.udm"), "--weights", w, "--out", str(files / "codes.pt")]) == 0
    out = capsys.readouterr().out
    assert "c.udm" in out and "e_l [1, 4, 23, 31]" in out
    decoded = torch.load(files / "codes.pt", weights_only=True)
    model = UDM.load(w)
    with torch.no_grad():
        e_g, e_l = model.encode(load_image(files / "y.png"))
    torch.testing.assert_close(decoded["e_g"], e_g, rtol=0, atol=0)
    torch.testing.assert_close(decoded["e_l"], e_l, rtol=0, atol=0)

    assert (
        main(
            [
                "transfer",
                "--clean",
                str(files / "x.png"),
                "--code",
                str(files / "c.udm"),
                "--weights",
                w,
                "--out",
                str(files / "z.png"),
                "--seed",
                "3",
            ]
        )
        == 0
    )
    with torch.no_grad():
        expected = model.synthesize(load_image(files / "x.png"), e_g, e_l, torch.Generator().manual_seed(3))
    result = load_image(files / "z.png")
    assert result.shape == (1, 3, 37, 50)
    assert (result - expected.clamp(0, 1)).abs().max() <= 1 / 255 + 1e-6


def test_code_errors(files, capsys):
    w = str(files / "m.pt")
    main(["encode", "--degraded", str(files / "y.png"), "--out", str(files / "c2.udm"), "--weights", w])
    capsys.readouterr()
    (files / "short.udm").write_bytes((files / "c2.udm").read_bytes()[:90])
    torch.manual_seed(1)
    UDM(filters=4, encoder_dim=16, global_dim=16).save(files / "other.pt")
    cases = [
        (["decode", str(files / "missing.udm"), "--weights", w], "not found"),
        (["decode", str(files / "short.udm"), "--weights", w], "announces"),
        (["decode", str(files / "c2.udm"), "--weights", str(files / "other.pt")], "another model"),
        (
            [
                "transfer",
                "--clean",
                str(files / "x.png"),
                "--code",
                str(files / "short.udm"),
                "--weights",
                w,
                "--out",
                str(files / "z.png"),
            ],
            "announces",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_transfer_needs_exactly_one_source(files):
    with pytest.raises(SystemExit) as info:
        main(["transfer", "--clean", str(files / "x.png"), "--out", str(files / "z.png")])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["transfer", "--clean", "a", "--degraded", "b", "--code", "c", "--out", "z.png"])
