"""The ``udm-fast`` command (in-process and through the installed entry point) and the default model."""

import importlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import udm_fast
from udm_fast import UDM, cli
from udm_fast.cli import demo
from udm_fast.eval import figures
from udm_fast.models import pretrained
from udm_fast.utils.io import load_image

# A tiny model keeps the CLI runs fast; the command does not care about the sizes.
TINY = dict(filters=4, encoder_dim=16)


def photo(height, width, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(2 * np.pi * (f1 * xx + f2 * yy) + phase) for f1, f2, phase in rng.uniform(0.5, 4, (3, 3))]
    return Image.fromarray(np.round(127.5 + 120 * np.stack(channels, axis=2)).astype(np.uint8))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    paths = {
        "jpeg": folder / "big.jpg",
        "png": folder / "odd.png",
        "small": folder / "small.png",
        "weights": folder / "tiny.pt",
    }
    photo(750, 1000, 0).save(paths["jpeg"], quality=90)
    photo(389, 517, 1).save(paths["png"])
    photo(37, 45, 2).save(paths["small"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        UDM(**TINY).save(paths["weights"])
    return paths


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def image_size(path):
    with Image.open(path) as img:
        return img.size


# ----------------------------------------------------------------------------- transfer


def test_transfer_big_jpeg_onto_odd_png_sizes(files, tmp_path, capsys):
    out = tmp_path / "result.png"
    code, stdout, err = run(
        [
            "transfer",
            "--clean",
            files["jpeg"],
            "--degraded",
            files["png"],
            "--out",
            out,
            "--weights",
            files["weights"],
            "--seed",
            3,
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    assert image_size(out) == (1000, 750)
    assert stdout.count("\n") == 1 and "1000x750" in stdout and "517x389" in stdout and "cpu" in stdout


def test_transfer_matches_the_model_and_seed_is_reproducible(files, tmp_path, capsys):
    outs = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    for out, seed in zip(outs, (5, 5, 6)):
        code, _, err = run(
            [
                "transfer",
                "--clean",
                files["small"],
                "--degraded",
                files["png"],
                "--out",
                out,
                "--weights",
                files["weights"],
                "--seed",
                seed,
            ],
            capsys,
        )
        assert code == 0, err
    assert outs[0].read_bytes() == outs[1].read_bytes() != outs[2].read_bytes()
    model = UDM.load(files["weights"])
    with torch.no_grad():
        expected = model.transfer(
            load_image(files["small"]), load_image(files["png"]), noise=torch.Generator().manual_seed(5)
        )
    written = load_image(outs[0])
    assert written.shape == (1, 3, 37, 45)
    torch.testing.assert_close(written, (expected.clamp(0, 1) * 255).round() / 255, rtol=0, atol=1e-6)


def test_tile_size_reaches_the_model(files, tmp_path, capsys, monkeypatch):
    seen = []
    original = UDM.transfer

    def recording_transfer(self, x, y, noise=None):
        seen.append(self.tile_size)
        return original(self, x, y, noise)

    monkeypatch.setattr(UDM, "transfer", recording_transfer)
    for tile in (256, 0):
        code, _, err = run(
            [
                "transfer",
                "--clean",
                files["small"],
                "--degraded",
                files["small"],
                "--out",
                tmp_path / "t.png",
                "--weights",
                files["weights"],
                "--tile-size",
                tile,
            ],
            capsys,
        )
        assert code == 0, err
    assert seen == [256, None]


def test_official_checkpoint_loads_through_from_official(files, tmp_path, capsys):
    official = tmp_path / "official.pth"
    torch.save(UDM.load(files["weights"]).official_state_dict(), official)
    code, _, err = run(
        [
            "transfer",
            "--clean",
            files["small"],
            "--degraded",
            files["small"],
            "--out",
            tmp_path / "o.jpg",
            "--weights",
            official,
            "--official",
            "--seed",
            0,
        ],
        capsys,
    )
    assert code == 0, err
    assert image_size(tmp_path / "o.jpg") == (45, 37)


# ----------------------------------------------------------------------------- errors


def _error_cases(files, tmp):
    corrupt = tmp / "corrupt.png"
    damaged = bytearray(files["small"].read_bytes())
    start = damaged.index(b"IDAT") + 8
    damaged[start : start + 64] = bytes(64)
    corrupt.write_bytes(bytes(damaged))
    data = files["jpeg"].read_bytes()
    truncated = tmp / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    bad_weights = tmp / "bad.pt"
    bad_weights.write_bytes(b"not a checkpoint")
    payload = torch.load(files["weights"], weights_only=True)
    payload["config"]["filters"] = 8  # the config no longer fits the tensors
    mismatched = tmp / "mismatched.pt"
    torch.save(payload, mismatched)
    foreign = tmp / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    tiny = tmp / "tiny.png"
    Image.new("RGB", (3, 3), (9, 9, 9)).save(tiny)
    ok = {
        "--clean": files["small"],
        "--degraded": files["small"],
        "--out": tmp / "out.png",
        "--weights": files["weights"],
    }
    return {
        "missing clean": ({"--clean": tmp / "missing.png"}, "missing.png: no such file"),
        "directory": ({"--degraded": tmp}, "is a directory"),
        "corrupt image": ({"--clean": corrupt}, "corrupt.png: corrupt or truncated"),
        "non-image": ({"--degraded": bad_weights}, "not an image file"),
        "truncated jpeg": ({"--degraded": truncated}, "truncated.jpg: corrupt or truncated"),
        "missing weights": ({"--weights": tmp / "none.pt"}, "checkpoint not found"),
        "corrupt weights": ({"--weights": bad_weights}, "cannot read checkpoint"),
        "mismatched weights": ({"--weights": mismatched}, "does not match the model"),
        "foreign weights": (
            {"--weights": foreign},
            "nor a training checkpoint; for the authors' checkpoint add --official",
        ),
        "not an official checkpoint": (
            {"--official": None},
            "is a udm_fast file (udm_fast), not the authors' checkpoint",
        ),
        "official without weights": ({"--weights": None, "--official": None}, "--official needs --weights"),
        "unknown device": ({"--device": "gpu7"}, "unknown device 'gpu7'"),
        "bad tile size": ({"--tile-size": 100}, "--tile-size must be"),
        "image too small": ({"--degraded": tiny}, "at least 4x4"),
        "bad output extension": ({"--out": tmp / "out.bmp"}, "unsupported output extension"),
    }, ok


def _argv(ok, changes):
    options = {**ok, **changes}
    argv = ["transfer"]
    for key, value in options.items():
        if key == "--weights" and value is None:
            continue
        argv += [key] if value is None else [key, str(value)]
    return argv


ERROR_NAMES = [
    "missing clean",
    "directory",
    "corrupt image",
    "non-image",
    "truncated jpeg",
    "missing weights",
    "corrupt weights",
    "mismatched weights",
    "foreign weights",
    "not an official checkpoint",
    "official without weights",
    "unknown device",
    "bad tile size",
    "image too small",
    "bad output extension",
]


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_errors_are_one_line_without_traceback(files, tmp_path, capsys, name):
    cases, ok = _error_cases(files, tmp_path)
    changes, message = cases[name]
    code, stdout, err = run(_argv(ok, changes), capsys)
    lines = [line for line in err.splitlines() if line.startswith("udm-fast: error:")]
    assert code == 1
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err and stdout == ""
    assert not (tmp_path / "out.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_a_device_is_a_clear_error(files, tmp_path, capsys):
    _, ok = _error_cases(files, tmp_path)
    code, _, err = run(_argv(ok, {"--device": "cuda"}), capsys)
    assert code == 1 and err.strip() == (
        "udm-fast: error: device 'cuda' requested but no CUDA device is available (use --device cpu)"
    )


@pytest.mark.parametrize("before_command", [True, False])
def test_debug_reraises(files, tmp_path, before_command):
    argv = [
        "transfer",
        "--clean",
        str(tmp_path / "x.png"),
        "--degraded",
        str(files["small"]),
        "--out",
        str(tmp_path / "o.png"),
    ]
    argv.insert(0 if before_command else 1, "--debug")
    with pytest.raises(udm_fast.utils.io.ImageError, match="no such file"):
        cli.main(argv)


def test_every_command_module_is_registered(capsys):
    """A module of udm_fast/cli other than the parser's own is a command, listed in main.COMMANDS."""
    cli_main = importlib.import_module("udm_fast.cli.main")  # the module: ``udm_fast.cli.main`` is the function
    package = os.path.dirname(cli.__file__)
    modules = {name[:-3] for name in os.listdir(package) if name.endswith(".py")} - {
        "__init__",
        "__main__",
        "main",
        "common",
    }
    assert sorted(cli_main.COMMANDS) == sorted(modules)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = capsys.readouterr().out
    for command in ("transfer", "encode", "decode", "info", "demo", "train", "synth", "eval"):
        assert f"    {command} " in listed, command


def test_usage_errors_exit_with_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["transfer", "--clean", "x.png"])
    assert info.value.code == 2 and "--degraded" in capsys.readouterr().err


# ----------------------------------------------------------------------------- info and demo


def test_info_lists_versions_backends_and_parameters(files, capsys):
    code, out, _ = run(["info", "--weights", files["weights"]], capsys)
    assert code == 0
    assert f"udm_fast  {udm_fast.__version__}" in out and f"torch     {torch.__version__}" in out
    for name, entry in udm_fast.build_info().items():
        assert f"{name}" in out and entry["detail"] in out
    model = UDM.load(files["weights"])
    for name, child in model.named_children():
        count = sum(p.numel() for p in child.parameters())
        assert any(line.split()[:1] == [name] and line.split()[-1] == f"{count:,}" for line in out.splitlines())
    assert f"{sum(p.numel() for p in model.parameters()):,}" in out and "filters=4" in out


def test_info_default_model_warns_placeholder(capsys, monkeypatch):
    monkeypatch.setattr(pretrained, "DEFAULT_WEIGHTS", pretrained.ASSETS / "absent.pt")
    code, out, err = run(["info"], capsys)
    assert code == 0 and "untrained placeholder" in out and "filters=16" in out
    assert err.count("udm-fast: warning:") == 1 and "placeholder" in err


def test_demo_writes_the_grid(tmp_path, capsys, monkeypatch, files):
    monkeypatch.setattr(pretrained, "DEFAULT_WEIGHTS", files["weights"])  # a shipped weights file is used as is
    code, out, err = run(["demo", "--out", tmp_path / "demo", "--device", "cpu"], capsys)
    assert code == 0, err
    grid_path = tmp_path / "demo" / demo.DEMO_GRID_NAME
    assert str(grid_path) in out and "placeholder" not in out + err
    samples = [load_image(p) for p in pretrained.sample_paths()]
    cell_h = max(s.shape[-2] for s in samples)
    cell_w = max(s.shape[-1] for s in samples)
    n_rows, n_cols = len(samples) + 1, len(demo.DEMO_DEGRADATIONS) + 1
    grid = load_image(grid_path)
    gap, label = figures.GRID_GAP, figures.LABEL_HEIGHT
    assert grid.shape[-2:] == (n_rows * (cell_h + gap) + gap + label, n_cols * (cell_w + gap) + gap)
    assert bool((grid[..., gap : gap + cell_h, gap : gap + cell_w] == 1).all())  # top-left cell is empty
    for r, sample in enumerate(samples, start=1):  # first column: the clean inputs, centred in their cells
        h, w = sample.shape[-2:]
        top = gap + r * (cell_h + gap) + label + (cell_h - h) // 2
        left = gap + (cell_w - w) // 2
        torch.testing.assert_close(grid[..., top : top + h, left : left + w], sample, rtol=0, atol=1e-6)
    # traversals: one row per e_g dimension, one column per offset, cells of the table crop's size
    traversals = load_image(tmp_path / "demo" / demo.DEMO_TRAVERSAL_NAME)
    side = min(demo.DEMO_TABLE_CROP, *(s.shape[-1] for s in samples), *(s.shape[-2] for s in samples))
    assert traversals.shape[-2:] == (
        figures.TRAVERSAL_DIMENSIONS * (side + gap) + gap + label,
        len(figures.TRAVERSAL_OFFSETS) * (side + gap) + gap,
    )
    dims = [int(d) for d in out.split("with e_g dimensions [", 1)[1].split("]", 1)[0].split(",")]
    assert len(set(dims)) == figures.TRAVERSAL_DIMENSIONS and all(
        0 <= d < UDM.load(files["weights"]).config.global_dim for d in dims
    )
    rows = [line.split() for line in out.splitlines()]
    header = next(r for r in rows if r[:1] == ["measure"])
    assert header[-4:] == ["model", "identity", "mismatched", "cross_content"]
    n_cross = sum(k % len(samples) != r for r in range(len(samples)) for k in range(len(demo.DEMO_DEGRADATIONS)))
    assert f"the {n_cross} cross-content cells" in out and any(r[:2] == ["leakage", "of"] for r in rows)
    assert f"({len(samples) * demo.DEMO_TABLE_DEGRADATIONS} pairs)" in " ".join(header)
    assert any(r[:2] == ["spectrum", "distance"] for r in rows) and "active e_g dimensions" in out


def test_demo_traversal_rows_move_only_their_dimension(files):
    model = UDM.load(files["weights"]).eval()
    torch.manual_seed(0)
    codes = [(torch.randn(1, model.config.global_dim).round(), torch.zeros(1, 4, 2, 2)) for _ in range(5)]
    codes[1][0][0, 2] += 10.0  # dimension 2 varies most, then the others by their random spread
    calls = []
    original = model.synthesize
    model.synthesize = lambda x, e_g, e_l, noise=None: calls.append(e_g.clone()) or original(x, e_g, e_l, noise=noise)
    grid, dims = figures.traversal_grid(model, torch.rand(1, 3, 16, 16), codes, seed=0)
    assert dims[0] == 2 and len(dims) == figures.TRAVERSAL_DIMENSIONS
    variance = torch.cat([g for g, _ in codes]).var(dim=0, unbiased=False)
    assert [float(variance[d]) for d in dims] == sorted((float(v) for v in variance), reverse=True)[: len(dims)]
    assert len(calls) == len(dims) * len(figures.TRAVERSAL_OFFSETS)
    for k, e_g in enumerate(calls):
        d, offset = (
            dims[k // len(figures.TRAVERSAL_OFFSETS)],
            figures.TRAVERSAL_OFFSETS[k % len(figures.TRAVERSAL_OFFSETS)],
        )
        expected = codes[0][0].clone()
        expected[0, d] += offset
        assert torch.equal(e_g, expected)


# ----------------------------------------------------------------------------- the installed entry point


def _console_script():
    path = os.path.join(os.path.dirname(sys.executable), "udm-fast")
    if not os.path.isfile(path):
        pytest.skip("the udm-fast console script is not installed next to this Python")
    return path


def test_console_script_transfer_and_error(files, tmp_path):
    script = _console_script()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "new_user.jpg"
    done = subprocess.run(
        [
            script,
            "transfer",
            "--clean",
            str(files["png"]),
            "--degraded",
            str(files["jpeg"]),
            "--out",
            str(out),
            "--weights",
            str(files["weights"]),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert image_size(out) == (517, 389)
    failed = subprocess.run(
        [
            script,
            "transfer",
            "--clean",
            str(tmp_path / "missing.png"),
            "--degraded",
            str(files["jpeg"]),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines() == [f"udm-fast: error: {tmp_path / 'missing.png'}: no such file"]


# ----------------------------------------------------------------------------- the default model


def test_placeholder_is_deterministic_and_leaves_the_global_rng_alone(monkeypatch):
    monkeypatch.setattr(pretrained, "DEFAULT_WEIGHTS", pretrained.ASSETS / "absent.pt")
    torch.manual_seed(77)
    state = torch.get_rng_state()
    with pytest.warns(pretrained.PlaceholderModelWarning, match="untrained placeholder"):
        first = pretrained.default_model()
    assert torch.equal(torch.get_rng_state(), state)
    second = pretrained.placeholder_model()
    assert first.weights_hash() == second.weights_hash()
    assert not first.training and first.config.filters == pretrained.PLACEHOLDER_FILTERS
    for compressor in (first.global_compressor, first.local_compressor):
        assert compressor.model._offset.numel() == compressor.channels
        assert compressor.model._quantized_cdf.shape[0] == compressor.channels
    torch.manual_seed(pretrained.PLACEHOLDER_SEED)
    reference = UDM(filters=pretrained.PLACEHOLDER_FILTERS)
    for (name, value), expected in zip(first.named_parameters(), reference.parameters()):
        assert torch.equal(value, expected), name


def test_default_model_loads_a_bundled_weights_file(files, monkeypatch):
    monkeypatch.setattr(pretrained, "DEFAULT_WEIGHTS", files["weights"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", pretrained.PlaceholderModelWarning)
        model = pretrained.default_model("cpu")
    assert model.weights_hash() == UDM.load(files["weights"]).weights_hash() and not model.training
    monkeypatch.setattr(pretrained, "DEFAULT_METADATA", files["weights"].parent / "absent.json")
    assert pretrained.default_model_source() == str(files["weights"]) and pretrained.default_model_metadata() is None
    record = files["weights"].parent / "record.json"
    record.write_text(
        json.dumps({"training_log": {"steps": 123}, "config": {"run": {"device": "cpu"}}, "commit": "0123456789abcdef"})
    )
    monkeypatch.setattr(pretrained, "DEFAULT_METADATA", record)
    assert pretrained.default_model_metadata()["commit"] == "0123456789abcdef"
    assert pretrained.default_model_source() == (
        f"{files['weights']} (trained 123 steps on cpu, commit 0123456789ab; record in record.json)"
    )


def test_bundled_samples():
    paths = pretrained.sample_paths()
    assert 3 <= len(paths) <= 4
    assert sum(p.stat().st_size for p in paths) < 300_000
    readme = (pretrained.SAMPLES / "README.md").read_text()
    sizes = []
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "JPEG" and max(img.size) <= 256
            sizes.append(img.size)
        assert path.name in readme
    assert any(w != h for w, h in sizes)
    assert all(w % 8 and h % 8 for w, h in sizes)
