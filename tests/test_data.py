"""Training data: resumable sampling, the folder / paired CSV / LMDB datasets, skipping bad files."""

import csv
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from udm_fast.synthesis.degrade import DegradeConfig, degrade
from udm_fast.train.config import DataConfig
from udm_fast.train.data import (
    DataError,
    FolderTriples,
    Item,
    PairedTriples,
    ResumableSampler,
    build_dataset,
    collate,
    crop,
    decode_image,
    make_triples,
)

CROP, WINDOW = 32, 48
HOMOGENEOUS = DegradeConfig(p_inhomogeneous=0.0)


def _smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random smooth colour image (bilinear upsampling of a coarse grid), uint8 [H, W, 3]."""
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


@pytest.fixture
def clean_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "clean"
    (folder / "sub").mkdir(parents=True)
    for i, (h, w) in enumerate([(WINDOW, WINDOW), (60, 72), (40, 80)]):
        Image.fromarray(_smooth_image(rng, h, w)).save(folder / ("sub" if i == 2 else "") / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _folder_dataset(root, **kwargs):
    return FolderTriples(
        root, crop_size=CROP, window=WINDOW, degrade_config=HOMOGENEOUS, extensions=(".png", ".jpg"), **kwargs
    )


# ----------------------------------------------------------------------------- sampler


def _take(sampler, count):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_sampler_epochs_are_permutations_and_deterministic():
    sampler = ResumableSampler(10, 3, seed=5)
    assert sampler.batches_per_epoch == 3
    items = _take(sampler, 18)  # two epochs of 3 batches of 3 (one index per epoch is dropped)
    for epoch in range(2):
        indices = [it.index for it in items[9 * epoch : 9 * epoch + 9]]
        assert len(set(indices)) == 9 and set(indices) <= set(range(10))
    assert [it.index for it in items[:9]] != [it.index for it in items[9:]]
    assert items == _take(ResumableSampler(10, 3, seed=5), 18)
    assert items != _take(ResumableSampler(10, 3, seed=6), 18)
    assert len({it.seed for it in items}) == 18


def test_sampler_ranks_split_each_global_batch():
    single = _take(ResumableSampler(12, 4, seed=1), 12)
    ranks = [_take(ResumableSampler(12, 4, seed=1, rank=r, world_size=2), 6) for r in range(2)]
    for b in range(3):
        assert ranks[0][2 * b : 2 * b + 2] + ranks[1][2 * b : 2 * b + 2] == single[4 * b : 4 * b + 4]


def test_sampler_resumes_at_the_exact_position():
    uninterrupted = _take(ResumableSampler(7, 2, seed=3), 2 * 10)
    resumed = ResumableSampler(7, 2, seed=3)
    resumed.set_position(4)  # 4 batches consumed: epoch 1, batch 1
    assert resumed.state_dict()["epoch"] == 1 and resumed.state_dict()["batch"] == 1
    again = ResumableSampler(7, 2, seed=3)
    again.load_state_dict(resumed.state_dict())
    assert _take(again, 12) == uninterrupted[8:]


def test_sampler_errors():
    with pytest.raises(DataError, match="empty"):
        ResumableSampler(0, 1)
    with pytest.raises(DataError, match="fewer than one batch"):
        ResumableSampler(3, 4)
    with pytest.raises(DataError, match="multiple of the number of ranks"):
        ResumableSampler(10, 3, world_size=2)
    state = ResumableSampler(10, 2, seed=0).state_dict()
    with pytest.raises(DataError, match="size is 10, now 11"):
        ResumableSampler(11, 2, seed=0).load_state_dict(state)


# ----------------------------------------------------------------------------- folder of clean images


def test_degrade_on_auto_synthesises_on_a_gpu_and_in_the_loaders_on_a_cpu(clean_folder):
    config = DataConfig(kind="folder", root=str(clean_folder), crop_size=CROP, extensions=(".png", ".jpg"))
    assert config.degrade_on == "auto"
    assert build_dataset(config).degrade_on == "loader"
    assert build_dataset(config, device=torch.device("cpu")).degrade_on == "loader"
    assert build_dataset(config, device=torch.device("cuda")).degrade_on == "device"  # resolution only, no GPU used
    forced = DataConfig(kind="folder", root=str(clean_folder), crop_size=CROP, degrade_on="loader")
    assert build_dataset(forced, device=torch.device("cuda")).degrade_on == "loader"


def test_folder_triples_are_crops_of_one_degraded_region(clean_folder):
    dataset = _folder_dataset(clean_folder)
    assert len(dataset) == 3 and dataset.files[0] == "img0.png"  # the text file is not listed
    device_mode = _folder_dataset(clean_folder, degrade_on="device")
    image = decode_image(str(clean_folder / "img0.png"))  # exactly one window: the region is the whole image
    for seed in (1, 2, 3):
        item = dataset[Item(0, seed)]
        raw = device_mode[Item(0, seed)]
        assert torch.equal(raw["window"], torch.from_numpy(image.copy()).permute(2, 0, 1))
        positions = raw["positions"]
        # independent recomputation: degrade the clean region with the item's seed, cut at its positions
        y_region, _ = degrade(
            raw["window"][None].float() / 255,
            config=HOMOGENEOUS,
            generator=torch.Generator().manual_seed(raw["degrade_seed"]),
        )
        y_region = (y_region[0] * 255).round().to(torch.uint8)
        assert torch.equal(item["x"], crop(raw["window"], positions[0], CROP))
        assert torch.equal(item["y"], crop(y_region, positions[0], CROP))
        assert torch.equal(item["y_key"], crop(y_region, positions[1], CROP))
        assert item["x"].shape == (3, CROP, CROP) and item["x"].dtype == torch.uint8
        assert item["skipped"] == []
    assert not torch.equal(dataset[Item(0, 1)]["y"], dataset[Item(0, 2)]["y"])


def test_make_triples_batches_like_the_loader(clean_folder):
    raw = collate([_folder_dataset(clean_folder, degrade_on="device")[Item(i, 10 + i)] for i in range(3)])
    x, y, y_key, noise_free, op_free = make_triples(
        raw["window"], raw["positions"], CROP, HOMOGENEOUS, torch.Generator().manual_seed(0)
    )
    assert x.shape == y.shape == y_key.shape == (3, 3, CROP, CROP)
    assert noise_free.dtype == torch.bool and noise_free.shape == (3,)
    assert op_free.dtype == torch.bool and op_free.shape == (3,)
    loader_items = [_folder_dataset(clean_folder)[Item(i, 10 + i)] for i in range(3)]
    assert all(torch.equal(x[i], it["x"]) for i, it in enumerate(loader_items))
    assert not torch.equal(y, x)


@pytest.mark.parametrize("p_noise", [0.0, 0.5, 1.0])
def test_noise_free_flags_the_plans_without_noise(clean_folder, p_noise):
    config = DegradeConfig(p_noise=p_noise, p_gaussian_blur=0.5, p_inhomogeneous=0.5)
    raw = collate([_folder_dataset(clean_folder, degrade_on="device")[Item(i % 2, i)] for i in range(8)])
    generator = torch.Generator().manual_seed(3)
    _, _, _, noise_free, op_free = make_triples(raw["window"], raw["positions"], CROP, config, generator)
    _, plan = degrade(raw["window"].float() / 255.0, config=config, generator=torch.Generator().manual_seed(3))
    assert noise_free.tolist() == [not any(op["op"] == "noise" for op in image["ops"]) for image in plan]
    assert op_free.tolist() == [not image["ops"] for image in plan]
    if p_noise in (0.0, 1.0):
        assert noise_free.tolist() == [p_noise == 0.0] * 8
    # without noise y is a function of x: the same window degraded twice with fresh seeds gives one y
    clean = DegradeConfig(
        p_noise=0.0, p_gaussian_blur=0.0, p_motion_blur=0.0, p_contrast=0.0, p_jpeg=1.0, jpeg_quality=(50, 50)
    )
    ys = [make_triples(raw["window"], raw["positions"], CROP, clean, torch.Generator().manual_seed(k)) for k in (1, 2)]
    assert ys[0][3].all()
    ys = [triple[1] for triple in ys]
    assert torch.equal(ys[0], ys[1])


def test_loader_items_carry_noise_free(clean_folder):
    dataset = _folder_dataset(clean_folder)
    assert dataset[Item(0, 1)]["noise_free"].dtype == torch.bool
    assert collate([dataset[Item(i, i)] for i in range(2)])["noise_free"].shape == (2,)


def test_small_images_are_upscaled_to_the_window(tmp_path):
    Image.fromarray(_smooth_image(np.random.default_rng(1), 20, 30)).save(tmp_path / "small.png")
    region = _folder_dataset(tmp_path, degrade_on="device")[Item(0, 0)]["window"]
    assert region.shape == (3, WINDOW, WINDOW)


def test_workers_give_the_same_batches(clean_folder):
    dataset = _folder_dataset(clean_folder)

    def batches(workers):
        sampler = ResumableSampler(len(dataset), 2, seed=4)
        loader = DataLoader(
            dataset,
            batch_size=2,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(0),
        )
        iterator = iter(loader)
        return [next(iterator) for _ in range(3)]

    for a, b in zip(batches(0), batches(2)):
        for key in ("x", "y", "y_key", "seed"):
            assert torch.equal(a[key], b[key])


def test_bad_files_are_skipped_reported_and_counted(clean_folder):
    (clean_folder / "a_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    good = clean_folder / "img0.png"
    (clean_folder / "b_truncated.png").write_bytes(good.read_bytes()[:60])
    dataset = _folder_dataset(clean_folder)
    assert dataset.files[:2] == ["a_corrupt.png", "b_truncated.png"]
    item = dataset[Item(0, 7)]
    assert len(item["skipped"]) == 2
    assert item["skipped"][0].startswith(str(clean_folder / "a_corrupt.png") + ": cannot decode image")
    assert item["skipped"][1].startswith(str(clean_folder / "b_truncated.png"))
    assert item["x"].shape == (3, CROP, CROP)  # fell back to the next readable image
    batch = collate([item, dataset[Item(3, 8)]])
    assert len(batch["skipped"]) == 2 and batch["x"].shape[0] == 2
    os.remove(clean_folder / "img0.png")  # listed files that disappear are skipped the same way
    assert "file not found" in " ".join(dataset[Item(2, 1)]["skipped"])


def test_only_bad_files_raise_after_max_retries(tmp_path):
    for i in range(3):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"garbage")
    dataset = _folder_dataset(tmp_path, max_retries=3)
    with pytest.raises(DataError, match=r"3 unusable items in a row.*bad\d\.jpg: cannot decode image"):
        dataset[Item(0, 0)]


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no images"):
        _folder_dataset(tmp_path)
    with pytest.raises(DataError, match="image folder not found"):
        _folder_dataset(tmp_path / "nope")


def test_bundled_samples_are_the_default_folder():
    dataset = FolderTriples(None, crop_size=32, window=64, degrade_config=HOMOGENEOUS)
    assert len(dataset) >= 4 and dataset[Item(0, 0)]["y"].shape == (3, 32, 32)


# ----------------------------------------------------------------------------- paired CSV and LMDB


@pytest.fixture
def paired_set(tmp_path):
    """Distorted images A = 255 - B (so the alignment of x and y is checkable); one B at half size."""
    rng = np.random.default_rng(2)
    rows = []
    for i, (h, w) in enumerate([(40, 48), (56, 40), (32, 64)]):
        b = _smooth_image(rng, h, w)
        a = 255 - b
        os.makedirs(tmp_path / "ref", exist_ok=True)
        os.makedirs(tmp_path / "dist", exist_ok=True)
        Image.fromarray(a).save(tmp_path / "dist" / f"{i}.png")
        ref = Image.fromarray(b)
        (ref.resize((w // 2, h // 2), Image.BICUBIC) if i == 2 else ref).save(tmp_path / "ref" / f"{i}.png")
        rows.append({"name": f"dist/{i}.png", "ref_name": f"ref/{i}.png", "extra": i})
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["name", "ref_name", "extra"])
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


def test_paired_csv_crops_are_aligned(paired_set):
    dataset = PairedTriples(str(paired_set / "pairs.csv"), crop_size=CROP)
    assert len(dataset) == 3
    for index in (0, 1):
        for seed in range(3):
            item = dataset[Item(index, seed)]
            assert torch.equal(item["y"], 255 - item["x"])  # same position in A and B
            a = torch.from_numpy(np.array(Image.open(paired_set / "dist" / f"{index}.png"))).permute(2, 0, 1)
            found = [
                (i, j)
                for i in range(a.shape[1] - CROP + 1)
                for j in range(a.shape[2] - CROP + 1)
                if torch.equal(crop(a, (i, j), CROP), item["y_key"])
            ]
            assert found  # y_key is a crop of the same distorted image
    resized = dataset[Item(2, 0)]  # B at half size was resized to A's size
    assert (resized["y"].int() - (255 - resized["x"].int())).abs().float().mean() < 6


def test_paired_csv_errors_and_skips(paired_set, tmp_path):
    with pytest.raises(DataError, match=r"no column\(s\) \['ori_name'\].*\['name', 'ref_name', 'extra'\]"):
        PairedTriples(str(paired_set / "pairs.csv"), crop_size=CROP, reference_column="ori_name")
    with pytest.raises(DataError, match="CSV index not found"):
        PairedTriples(str(tmp_path / "none.csv"), crop_size=CROP)
    os.remove(paired_set / "ref" / "0.png")
    dataset = PairedTriples(str(paired_set / "pairs.csv"), crop_size=40)
    item = dataset[Item(2, 0)]  # 64x32: too small for the crop; then pair 0: its reference is missing
    assert (
        item["skipped"][0] == f"{paired_set / 'dist' / '2.png'}: 64x32 is smaller than the crop 40 "
        f"(set data.min_size to upscale)"
    )
    assert item["skipped"][1] == f"{paired_set / 'dist' / '0.png'}: its reference ref/0.png: file not found"
    assert len(item["skipped"]) == 2 and item["x"].shape == (3, 40, 40)
    upscaled = PairedTriples(str(paired_set / "pairs.csv"), crop_size=40, min_size=40)[Item(2, 0)]
    assert upscaled["skipped"] == [] and upscaled["x"].shape == (3, 40, 40)


def _write_lmdb(path, entries):
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in entries.items():
            txn.put(key.encode(), value)
    env.close()


def test_lmdb_matches_the_files(paired_set, tmp_path):
    with open(paired_set / "pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    entries = {}
    for row in rows:
        for key in (row["name"], row["ref_name"]):
            entries[key] = (paired_set / key).read_bytes()
    del entries["dist/1.png"]
    _write_lmdb(tmp_path / "db", entries)
    files = PairedTriples(str(paired_set / "pairs.csv"), crop_size=CROP)
    stored = PairedTriples(str(paired_set / "pairs.csv"), crop_size=CROP, lmdb_path=str(tmp_path / "db"))
    for seed in range(3):
        a, b = files[Item(0, seed)], stored[Item(0, seed)]
        assert all(torch.equal(a[k], b[k]) for k in ("x", "y", "y_key"))
    assert "dist/1.png]: key not in the LMDB database" in stored[Item(1, 0)]["skipped"][0]
    loader = DataLoader(stored, batch_size=2, sampler=ResumableSampler(3, 2, seed=0), num_workers=2, collate_fn=collate)
    assert next(iter(loader))["x"].shape == (2, 3, CROP, CROP)  # each worker opens its own environment


def test_lmdb_missing_package_or_database(paired_set, monkeypatch):
    pytest.importorskip("lmdb")
    with pytest.raises(DataError, match="LMDB database not found"):
        PairedTriples(str(paired_set / "pairs.csv"), crop_size=CROP, lmdb_path=str(paired_set / "nope"))
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(DataError, match="pip install lmdb"):
        PairedTriples(str(paired_set / "pairs.csv"), crop_size=CROP, lmdb_path=str(paired_set))
