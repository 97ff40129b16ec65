"""``udm-fast synth``, ``train`` and ``eval`` as a user runs them, including a real kill and resume."""

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from udm_fast import cli
from udm_fast.cli import evaluate, train
from udm_fast.models.udm import UDM
from udm_fast.synthesis.degrade import degrade
from udm_fast.train.config import load_config
from udm_fast.train.data import derive_seed

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.yaml")
FAST = [
    "--set",
    "log.progress=false",
    "--set",
    "run.threads=1",
    "--set",
    "log.image_every=0",
    "--set",
    "data.degrade_window=48",
]
LEAN = [
    "--set",
    "model.discriminator=false",
    "--set",
    "loss.weights.gan_generator=0",
    "--set",
    "loss.weights.diversity=0",
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(64, 80), (72, 64), (64, 64)]):
        coarse = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(folder / f"p{i}.jpg", quality=95)
    (folder / "zz_broken.png").write_bytes(b"not a png")
    return folder


@pytest.fixture(scope="module")
def paired(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert cli.main(["synth", "--clean", str(photos), "--out", str(out), "--per-image", "2", "--seed", "3"]) == 0
    return out


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_synth_writes_the_reference_csv_format(paired, photos, capsys, tmp_path):
    rows = _rows(paired / "pairs.csv")
    assert [r["name"] for r in rows] == [f"degraded/p{i}-{v}.png" for i in range(3) for v in range(2)]
    assert [r["ref_name"] for r in rows] == [f"ref/p{i}.png" for i in range(3) for v in range(2)]
    for index, row in enumerate(rows[::2]):
        clean = np.asarray(Image.open(photos / f"p{index}.jpg").convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(paired / row["ref_name"])), clean)  # lossless reference
        # the degraded file is degrade() of the clean image with the documented per-image seed
        x = torch.from_numpy(clean.copy()).permute(2, 0, 1)[None].float() / 255
        y, params = degrade(x, generator=derive_seed(3, index, 0))
        expected = (y[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(Image.open(paired / row["name"])), expected)
        assert json.loads(row["params"]) == json.loads(json.dumps(params[0]))
    again = tmp_path / "again"
    assert cli.main(["synth", "--clean", str(photos), "--out", str(again), "--per-image", "2", "--seed", "3"]) == 0
    assert (again / "degraded" / "p1-1.png").read_bytes() == (paired / "degraded" / "p1-1.png").read_bytes()
    err = capsys.readouterr().err
    assert f"skipped {photos / 'zz_broken.png'}: not an image file Pillow can read" in err


def test_synth_errors(tmp_path, capsys):
    assert cli.main(["synth", "--clean", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    assert "image folder not found" in capsys.readouterr().err
    assert cli.main(["synth", "--clean", str(tmp_path), "--out", str(tmp_path / "o"), "--per-image", "0"]) == 1
    assert "--per-image must be >= 1" in capsys.readouterr().err


def _smooth_image(seed, h=64, w=64):
    coarse = np.random.default_rng(seed).integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((w, h), Image.BICUBIC)


def test_synth_gives_images_sharing_a_stem_distinct_names(tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    for seed, name in enumerate(["x.jpg", "x.png", "x_jpg.png", "y.png"]):
        _smooth_image(seed).save(clean / name)
    out = tmp_path / "out"
    assert cli.main(["synth", "--clean", str(clean), "--out", str(out)]) == 0
    rows = _rows(out / "pairs.csv")
    # sorted sources x.jpg, x.png, x_jpg.png, y.png; only the clashing stems keep their extension
    assert [r["ref_name"] for r in rows] == ["ref/x_jpg_2.png", "ref/x_png.png", "ref/x_jpg.png", "ref/y.png"]
    assert [r["name"] for r in rows] == [
        "degraded/x_jpg_2-0.png",
        "degraded/x_png-0.png",
        "degraded/x_jpg-0.png",
        "degraded/y-0.png",
    ]
    assert sorted(os.listdir(out / "ref")) == sorted(os.path.basename(r["ref_name"]) for r in rows)
    for source, row in zip(["x.png", "x_jpg.png", "y.png"], rows[1:]):
        assert np.array_equal(np.asarray(Image.open(out / row["ref_name"])), np.asarray(Image.open(clean / source)))


def test_synth_does_not_read_its_own_output_back(tmp_path, capsys):
    clean = tmp_path / "clean"
    clean.mkdir()
    for seed in range(2):
        _smooth_image(seed).save(clean / f"c{seed}.png")
    out = clean / "synth"
    for _ in range(2):  # the rerun finds the first run's PNGs under clean/synth and leaves them out
        assert cli.main(["synth", "--clean", str(clean), "--out", str(out)]) == 0
        assert [r["ref_name"] for r in _rows(out / "pairs.csv")] == ["ref/c0.png", "ref/c1.png"]
    assert "wrote 2 pairs from 2 images" in capsys.readouterr().out
    assert cli.main(["synth", "--clean", str(clean), "--out", str(clean)]) == 1
    assert "is the --clean folder itself" in capsys.readouterr().err


def test_synth_notes_each_converted_image(tmp_path, capsys):
    clean = tmp_path / "clean"
    clean.mkdir()
    rgb = _smooth_image(0)
    rgb.save(clean / "a_rgb.png")
    rgb.convert("L").save(clean / "b_gray.png")
    rgb.convert("RGBA").save(clean / "c_rgba.png")
    rgb.convert("P", palette=Image.ADAPTIVE).save(clean / "d_palette.png")
    assert cli.main(["synth", "--clean", str(clean), "--out", str(tmp_path / "out"), "--per-image", "2"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("udm-fast: note: ")]
    assert notes == [
        f"udm-fast: note: {clean / 'b_gray.png'}: grayscale image, replicated to RGB",
        f"udm-fast: note: {clean / 'c_rgba.png'}: has an alpha channel, composited onto white",
        f"udm-fast: note: {clean / 'd_palette.png'}: palette image, converted to RGB",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["synth", "--max-side", "-3"], "--max-side must be a positive number of pixels, or 0 to keep sizes, got -3"),
        (["synth", "--seed", "-1"], "--seed must be an integer from 0 to 2**64 - 1, got -1"),
        (["eval", "--crop", "8"], "--crop must be 0 (whole images) or at least 11 (the MS-SSIM window), got 8"),
        (["eval", "--crop", "-1"], "--crop must be 0 (whole images) or at least 11"),
        (["eval", "--limit", "-2"], "--limit must be >= 0 (0: no limit), got -2"),
        (["eval", "--seed", "-1"], "--seed must be an integer from 0 to 2**64 - 1, got -1"),
        (["eval", "--clean", "--crop", "16"], "--clean needs --crop 0 (the default 128) or at least 32, got 16"),
        (["eval", "--clean", "--first-seed", "-1"], "must lie in 0 .. 2**64 - 1; got -1 .. 4"),
        (["eval", "--clean", "--first-seed", str(2**64 - 2)], f"got {2**64 - 2} .. {2**64 + 3}"),
    ],
)
def test_synth_and_eval_reject_out_of_range_numbers(tmp_path, capsys, photos, args, message):
    command, *flags = args
    if command == "synth":
        source = ["--clean", str(photos), "--out", str(tmp_path / "out")]
    elif flags[0] == "--clean":
        source, flags = ["--clean", str(photos)], flags[1:]
    else:
        source = ["--data", str(tmp_path)]
    assert cli.main([command, *source, *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("udm-fast: error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_eval_names_the_missing_or_corrupt_reference(paired, tmp_path, capsys):
    data = tmp_path / "pairs"
    shutil.copytree(paired, data)
    (data / "ref" / "p0.png").unlink()
    (data / "ref" / "p1.png").write_bytes(b"not a png")
    out = tmp_path / "eval.json"
    assert (
        cli.main(["eval", "--data", str(data), "--crop", "48", "--no-download", "--device", "cpu", "--out", str(out)])
        == 0
    )
    err = capsys.readouterr().err
    for variant in range(2):
        assert (
            f"skipped {data / 'degraded' / f'p0-{variant}.png'}: its reference {data / 'ref' / 'p0.png'}: "
            f"file not found"
        ) in err
        assert (
            f"skipped {data / 'degraded' / f'p1-{variant}.png'}: its reference {data / 'ref' / 'p1.png'}: "
            f"cannot decode image"
        ) in err
    assert json.loads(out.read_text())["count"] == 2


def test_eval_tries_the_vgg16_download_once(weight_packages, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    downloads = []

    def offline(url, **kwargs):
        downloads.append(url)
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    modules, unavailable = evaluate._perceptual_metrics(
        argparse.Namespace(vgg_weights=None, no_download=False), torch.device("cpu")
    )
    assert len(downloads) == 1 and modules == {}
    assert set(unavailable) == {"dists", "lpips"}
    assert all("download" in reason and "no network" in reason for reason in unavailable.values())


def test_data_flag_picks_pairs_or_photos_with_absolute_paths(photos, paired, monkeypatch, capsys):
    def overrides(data):
        return train.train_overrides(argparse.Namespace(set=[], out=None, max_steps=None, device=None, data=data))

    # a synth output folder means its pairs (as for eval), not its PNGs as clean photos
    assert overrides(str(paired)) == {"data.kind": "csv", "data.csv": str(paired / "pairs.csv"), "data.root": None}
    assert "holds pairs.csv: training on its pairs" in capsys.readouterr().err
    monkeypatch.chdir(photos.parent)  # relative paths are stored absolute in the run's config.yaml
    assert overrides(photos.name) == {"data.kind": "folder", "data.root": str(photos)}


def test_train_then_eval_on_the_synthesised_pairs(photos, paired, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli.main(
        [
            "train",
            TINY,
            "--data",
            str(paired / "pairs.csv"),
            "--out",
            str(run),
            "--max-steps",
            "2",
            *FAST,
            *LEAN,
            "--set",
            "data.batch_size=2",
        ]
    )
    assert code == 0
    assert "finished at step 2" in capsys.readouterr().out
    config = load_config(run / "config.yaml")
    assert (config.data.kind, config.data.csv, config.data.batch_size) == ("csv", str(paired / "pairs.csv"), 2)

    for weights in (run / "model.pt", run / "checkpoints" / "latest.pt"):
        out = tmp_path / f"{weights.stem}.json"
        code = cli.main(
            [
                "eval",
                "--weights",
                str(weights),
                "--data",
                str(paired),
                "--out",
                str(out),
                "--crop",
                "48",
                "--limit",
                "3",
                "--no-download",
                "--device",
                "cpu",
            ]
        )
        assert code == 0
        captured = capsys.readouterr()
        assert "mean over 3 pairs" in captured.out and "PSNR dB" in captured.out
        assert "dists not computed" in captured.err  # no VGG16 weights on this machine
        results = json.loads(out.read_text())
        assert results["count"] == 3 and set(results["unavailable"]) == {"dists", "lpips"}
        assert set(results["mean"]) == {"psnr", "ms_ssim", "bits_global_per_image", "bits_local_per_pixel"}
    assert (
        json.loads((tmp_path / "model.json").read_text())["mean"]
        == json.loads((tmp_path / "latest.json").read_text())["mean"]
    )  # same weights either way
    # the coding commands take a training checkpoint too: its code decodes with the exported model.pt
    code_file = tmp_path / "code.udm"
    degraded = sorted((paired / "degraded").rglob("*.png"))[0]
    assert (
        cli.main(
            [
                "encode",
                "--weights",
                str(run / "checkpoints" / "latest.pt"),
                "--degraded",
                str(degraded),
                "--out",
                str(code_file),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert cli.main(["decode", str(code_file), "--weights", str(run / "model.pt"), "--device", "cpu"]) == 0
    capsys.readouterr()

    # transfer mode: clean photos, seeded degradations, the model next to the two baselines
    out = tmp_path / "transfer.json"
    code = cli.main(
        [
            "eval",
            "--weights",
            str(run / "model.pt"),
            "--clean",
            str(photos),
            "--crop",
            "48",
            "--degradations",
            "2",
            "--first-seed",
            "7",
            "--no-download",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skipped" in captured.err and "zz_broken.png" in captured.err
    lines = captured.out.splitlines()
    assert lines[0].split()[-4:] == ["model", "identity", "mismatched", "cross_content"]
    assert "(6 pairs)" in lines[0]
    assert "3 photos x 2 degradations, 48x48 central crops, degradation seeds 7..8" in captured.out
    table = json.loads(out.read_text())
    assert table["pairs"] == 6 and table["degradation_seeds"] == [7, 8] and table["crop"] == 48
    assert len(table["skipped"]) == 1 and "zz_broken.png" in table["skipped"][0]
    assert [os.path.basename(p) for p in table["photos"]] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert table["methods"]["identity"]["spectrum_db"] > 0
    spectrum_row = next(line for line in lines if line.startswith("spectrum distance"))
    assert float(spectrum_row.split()[-3]) == pytest.approx(table["methods"]["identity"]["spectrum_db"], abs=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "run.max_step=3"], "unknown key 'run.max_step' (did you mean 'max_steps'?)"),
        (["--set", "oops"], "--set expects KEY=VALUE"),
        (["--data", "/no/such/folder"], "not a folder of images nor a .csv index"),
        (
            ["--set", "loss.weights.dists=10", "--set", "loss.download=false"],
            "download=False; set loss.vgg_weights (torchvision's vgg16-397923af.pth)",
        ),
        (["--set", "loss.weights.dists=10", "--set", "loss.download=false"], "set loss.pretrained: false"),
    ],
)
def test_train_errors_are_one_line(tmp_path, capsys, monkeypatch, request, args, message):
    if "vgg16" in message:  # the VGG16 file is looked for once the DISTS weights are found
        request.getfixturevalue("weight_packages")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert cli.main(["train", TINY, "--out", str(tmp_path / "run"), *FAST, *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("udm-fast: error: ") and message in err[-1]


def test_train_without_a_config_says_why(capsys):
    assert cli.main(["train", "--resume", TINY]) == 1  # --resume swallowed the config
    assert f"--resume took {TINY} as its checkpoint; put the config first" in capsys.readouterr().err
    assert cli.main(["train"]) == 1
    assert "train needs a CONFIG" in capsys.readouterr().err


def test_eval_errors(tmp_path, capsys, photos):
    assert cli.main(["eval", "--weights", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 1
    assert f"{tmp_path} holds no pairs.csv" in capsys.readouterr().err
    assert cli.main(["eval", "--clean", str(tmp_path / "missing")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["eval", "--clean", str(photos), "--degradations", "1"]) == 1
    assert "--degradations >= 2" in capsys.readouterr().err
    assert cli.main(["eval", "--clean", str(photos), "--crop", "100", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "smaller than --crop 100" in err and "needs at least 2 usable photos of at least 100x100" in err
    with pytest.raises(SystemExit):  # argparse: --data and --clean exclude each other
        cli.main(["eval", "--clean", str(photos), "--data", str(tmp_path)])


def test_killed_training_resumes_on_the_same_trajectory(paired, tmp_path):
    """SIGKILL a `udm-fast train` process after a checkpoint; --resume reaches the uninterrupted result."""
    args = [
        "train",
        TINY,
        "--data",
        str(paired / "pairs.csv"),
        "--max-steps",
        "8",
        *FAST,
        *LEAN,
        "--set",
        "data.batch_size=2",
        "--set",
        "log.save_every=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "udm_fast.cli", *args, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step_00000002.pt").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not (killed / "model.pt").exists()  # it died mid-run

    assert cli.main([*args, "--out", str(killed), "--resume"]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "whole")]) == 0
    a = UDM.load(killed / "model.pt").state_dict()
    b = UDM.load(tmp_path / "whole" / "model.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
