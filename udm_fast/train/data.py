"""Training data: triples (x, y, y_key) of clean crop, aligned degraded crop and a second degraded crop.

Sources (docs/architecture.md §10.1):

* ``FolderTriples``: a folder of clean images; the degradation is synthesised on the fly with
  ``udm_fast.degrade``. Each item takes a random ``window`` x ``window`` region of a clean image,
  degrades the whole region, and cuts x and y at one random position and y_key at another, so y_key
  is a second crop of the same degraded image. With ``degrade_on="device"`` (what ``auto`` picks on a
  GPU) the items carry the clean region and the trainer degrades a whole batch on its device
  (``make_triples``).
* ``PairedTriples``: the reference's paired CSV (distorted / reference columns, paths relative to a
  root) read from files or from an LMDB database keyed by the CSV path strings.

Determinism and resumption: ``ResumableSampler`` yields (index, seed) pairs; every random choice of
an item (crop positions, degradation) comes from that seed, which depends only on (run seed, epoch,
position in the epoch). Items are therefore the same for any number of workers, and a run resumed
at step s sees exactly the batches an uninterrupted run sees from step s on.

Unreadable or missing files are not fatal: the item falls back to the next index, and the batch
carries ``skipped`` = ["path: reason", ...] so the trainer reports and counts them. ``max_retries``
failures in a row raise ``DataError``.
"""

from __future__ import annotations

import abc
import csv
import importlib.util
import io
import os
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler

from ..synthesis.degrade import DegradeConfig, degrade

SAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "samples")


class DataError(ValueError):
    """A data source that cannot deliver training items (empty, unreadable index, every file broken)."""


class ItemError(Exception):
    """One unreadable or unusable item; the dataset skips it and reports ``path: reason``."""


class Item(NamedTuple):
    index: int
    seed: int


def derive_seed(*numbers: int) -> int:
    """A 63-bit seed that depends only on the given non-negative integers (e.g. run seed, epoch, position)."""
    return int(np.random.SeedSequence(numbers).generate_state(2, np.uint64)[0] >> np.uint64(1))


# ----------------------------------------------------------------------------- sampling


class ResumableSampler(Sampler):
    """Endless, deterministic, resumable sampling of global batches, partitioned over DDP ranks.

    Epoch e is a permutation of range(size) drawn from (seed, e); it is cut into ``size // batch``
    global batches (the remainder is dropped) and rank r takes the r-th contiguous share of each.
    Yields ``Item(index, seed)``. ``state_dict()`` / ``load_state_dict()`` hold the position
    (epoch, batch) of the next batch; the trainer sets it from the number of batches consumed.
    """

    def __init__(
        self, size: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ):
        if size < 1:
            raise DataError("the dataset is empty")
        if batch_size < 1 or batch_size % world_size:
            raise DataError(
                f"the global batch size {batch_size} must be a positive multiple of the number of ranks ({world_size})"
            )
        if size < batch_size:
            raise DataError(f"the dataset has {size} items, fewer than one batch ({batch_size})")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.per_rank = batch_size // world_size
        self.batches_per_epoch = size // batch_size
        self.epoch = self.batch = 0

    def set_position(self, batches_consumed: int) -> None:
        self.epoch, self.batch = divmod(batches_consumed, self.batches_per_epoch)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "size": self.size,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("size", "batch_size", "seed"):
            if state[key] != getattr(self, key):
                raise DataError(
                    f"cannot resume the data position: the checkpoint's {key} is {state[key]}, "
                    f"now {getattr(self, key)} (the data or the config changed)"
                )
        self.epoch, self.batch = state["epoch"], state["batch"]

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng((self.seed, epoch)).permutation(self.size)

    def __iter__(self) -> Iterator[Item]:
        epoch, batch = self.epoch, self.batch
        while True:
            order = self.order(epoch)
            for b in range(batch, self.batches_per_epoch):
                start = b * self.batch_size + self.rank * self.per_rank
                for position in range(start, start + self.per_rank):
                    yield Item(int(order[position]), derive_seed(self.seed, epoch, position))
            epoch, batch = epoch + 1, 0

    def __len__(self) -> int:  # one epoch on this rank; iteration itself never ends
        return self.batches_per_epoch * self.per_rank


# ----------------------------------------------------------------------------- decoding


def decode_image(data: bytes | str, min_side: int = 0) -> np.ndarray:
    """Image file bytes or path -> uint8 [H, W, 3] (EXIF orientation applied, 16-bit samples rounded
    to 8 bits, alpha dropped, any mode converted to RGB); the shorter side is upscaled (bicubic) to
    ``min_side``. Raises ``ItemError`` for missing or undecodable files."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L"):
                image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257.0).round().astype(np.uint8))
            rgb = image.convert("RGB")
    except FileNotFoundError as exc:
        raise ItemError("file not found") from exc
    except Exception as exc:  # Pillow raises many types for truncated or foreign files
        raise ItemError(f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    if min_side and min(rgb.size) < min_side:
        scale = min_side / min(rgb.size)
        rgb = rgb.resize(
            (max(min_side, round(rgb.width * scale)), max(min_side, round(rgb.height * scale))), Image.BICUBIC
        )
    return np.asarray(rgb)


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def random_position(rng: np.random.Generator, height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left corner of a uniformly random size x size crop."""
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def crop(t: torch.Tensor, position: Sequence[int], size: int) -> torch.Tensor:
    i, j = int(position[0]), int(position[1])
    return t[..., i : i + size, j : j + size]


# ----------------------------------------------------------------------------- datasets


class _SkippingDataset(Dataset, abc.ABC):
    """Falls back to the following indices when an item fails, recording ``path: reason``.

    Subclasses define ``__len__``, ``load(index, rng) -> dict of tensors`` (raising ``ItemError``)
    and ``describe(index) -> str`` (the path shown in reports).
    """

    def __init__(self, max_retries: int):
        self.max_retries = max_retries

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def load(self, index: int, rng: np.random.Generator) -> dict: ...

    @abc.abstractmethod
    def describe(self, index: int) -> str: ...

    def __getitem__(self, item: Item) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, item)
        skipped = []
        for attempt in range(self.max_retries):
            candidate = (index + attempt) % len(self)
            try:
                out = self.load(candidate, np.random.default_rng(seed))
            except ItemError as exc:
                skipped.append(f"{self.describe(candidate)}: {exc}")
                continue
            out["skipped"] = skipped
            out["seed"] = seed
            return out
        raise DataError(f"{self.max_retries} unusable items in a row, the last ones: " + "; ".join(skipped[-3:]))


def list_images(root: str, extensions: Sequence[str]) -> list:
    """Image files under root (recursive, sorted, by extension, case-insensitive), relative to root."""
    if not os.path.isdir(root):
        raise DataError(f"image folder not found: {root}")
    wanted = tuple(e.lower() for e in extensions)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.relpath(os.path.join(folder, f), root) for f in sorted(files) if f.lower().endswith(wanted)]
    if not found:
        raise DataError(f"no images with extensions {list(extensions)} under {root}")
    return found


class FolderTriples(_SkippingDataset):
    """Clean images -> (x, y, y_key) uint8 crops [3, crop, crop] with y = degrade(x), ``noise_free``
    (bool scalar: the plan drew no noise, so y is a function of x) and ``op_free`` (bool scalar: the plan
    drew no op, so y is x or JPEG(x)).

    ``degrade_on="device"``: items hold the clean region ``window`` [3, W, W] and ``positions``
    [2, 2] instead, for ``make_triples`` on the training device. Images whose shorter side is
    below the window are upscaled to it (their content is clean, so this only changes its scale).
    """

    def __init__(
        self,
        root: Optional[str],
        *,
        crop_size: int,
        window: int,
        degrade_config: DegradeConfig,
        degrade_on: str = "loader",
        extensions: Sequence[str] = (".jpg", ".jpeg", ".png"),
        max_retries: int = 32,
        flips: bool = False,
        rescale: Sequence[float] = (1.0, 1.0),
    ):
        super().__init__(max_retries)
        self.flips, self.rescale = flips, (float(rescale[0]), float(rescale[1]))
        self.root = SAMPLES_DIR if root is None else os.fspath(root)
        self.files = list_images(self.root, extensions)
        if window < crop_size:
            raise ValueError(f"window ({window}) must be >= crop_size ({crop_size})")
        if degrade_on not in ("loader", "device"):
            raise ValueError(f"degrade_on must be 'loader' or 'device', got {degrade_on!r}")
        self.crop_size, self.window = crop_size, window
        self.degrade_config, self.degrade_on = degrade_config, degrade_on

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, index: int) -> str:
        return os.path.join(self.root, self.files[index])

    def load(self, index: int, rng: np.random.Generator) -> dict:
        image = decode_image(self.describe(index), min_side=self.window)
        if self.rescale != (1.0, 1.0):
            image = reduce_randomly(image, rng, self.rescale, self.window)
        top, left = random_position(rng, image.shape[0], image.shape[1], self.window)
        region = image[top : top + self.window, left : left + self.window]
        if self.flips:
            region = np.rot90(region, k=int(rng.integers(0, 4)))
            if rng.integers(0, 2):
                region = region[:, ::-1]
        region = _chw(region)
        positions = torch.tensor([random_position(rng, self.window, self.window, self.crop_size) for _ in range(2)])
        degrade_seed = int(rng.integers(0, 2**62))
        if self.degrade_on == "device":
            return {"window": region, "positions": positions, "degrade_seed": degrade_seed}
        x, y, y_key, noise_free, op_free = make_triples(
            region[None],
            positions[None],
            self.crop_size,
            self.degrade_config,
            torch.Generator().manual_seed(degrade_seed),
        )
        return {"x": x[0], "y": y[0], "y_key": y_key[0], "noise_free": noise_free[0], "op_free": op_free[0]}


def reduce_randomly(image: np.ndarray, rng: np.random.Generator, scale_range: tuple, min_side: int) -> np.ndarray:
    """uint8 [H, W, 3] reduced (antialiased bicubic) by a factor drawn uniformly from scale_range, never
    below ``min_side`` on the shorter side; a factor of 1 returns the image unchanged."""
    scale = max(float(rng.uniform(*scale_range)), min_side / min(image.shape[:2]))
    if scale >= 1.0:
        return image
    size = (max(min_side, round(image.shape[1] * scale)), max(min_side, round(image.shape[0] * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC, reducing_gap=2.0))


def make_triples(
    windows: torch.Tensor, positions: torch.Tensor, crop_size: int, config: DegradeConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Degrades clean regions and cuts the triples.

    windows uint8 [B, 3, W, W] (any device), positions int [B, 2, 2] (rows: the (x, y) crop, the
    y_key crop) -> uint8 (x, y, y_key), each [B, 3, crop, crop], ``noise_free`` bool [B] (no noise
    in the image's plan: y is a deterministic function of x) and ``op_free`` bool [B] (no op at all in
    the plan: y is x or JPEG(x)), all on the windows' device.
    """
    degraded, plan = degrade(windows.float() / 255.0, config=config, generator=generator)
    noise_free = torch.tensor(
        [all(op["op"] != "noise" for op in image["ops"]) for image in plan], device=windows.device
    )
    op_free = torch.tensor([not image["ops"] for image in plan], dtype=torch.bool, device=windows.device)
    degraded = (degraded * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    x = torch.stack([crop(w, p[0], crop_size) for w, p in zip(windows, positions)])
    y = torch.stack([crop(w, p[0], crop_size) for w, p in zip(degraded, positions)])
    y_key = torch.stack([crop(w, p[1], crop_size) for w, p in zip(degraded, positions)])
    return x, y, y_key, noise_free, op_free


def read_pairs(csv_path: str, distorted_column: str, reference_column: str) -> list:
    """[(distorted, reference), ...] path strings from the reference's CSV index."""
    if not os.path.isfile(csv_path):
        raise DataError(f"CSV index not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in (distorted_column, reference_column) if c not in columns]
        if missing:
            raise DataError(
                f"{csv_path}: no column(s) {missing}; the header has {columns} "
                f"(set data.distorted_column / data.reference_column)"
            )
        pairs = [(row[distorted_column], row[reference_column]) for row in reader]
    if not pairs:
        raise DataError(f"{csv_path}: the index has no rows")
    return pairs


class LmdbImages:
    """Read-only LMDB of encoded images keyed by path strings; opened lazily in each process."""

    def __init__(self, path: str):
        if importlib.util.find_spec("lmdb") is None:
            raise DataError(
                "data.kind 'lmdb' needs the lmdb package: pip install lmdb (or pip install 'udm_fast[lmdb]')"
            )
        if not os.path.exists(path):
            raise DataError(f"LMDB database not found: {path}")
        self.path = path
        self._env = None
        self._pid = None

    def get(self, key: str) -> bytes:
        import lmdb

        if self._env is not None and self._pid != os.getpid():
            self._env.close()  # inherited through fork: read-only and lock-free, so closing touches only this copy
            self._env = None
        if self._env is None:
            self._env = lmdb.open(
                self.path, readonly=True, lock=False, readahead=False, meminit=False, subdir=os.path.isdir(self.path)
            )
            self._pid = os.getpid()
        with self._env.begin(buffers=False) as txn:
            value = txn.get(key.encode("utf-8"))
        if value is None:
            raise ItemError(f"key not in the LMDB database {self.path}")
        return value

    def __getstate__(self) -> dict:  # workers reopen their own environment
        return {"path": self.path, "_env": None, "_pid": None}


class PairedTriples(_SkippingDataset):
    """The reference's paired data -> (x, y, y_key) uint8 crops [3, crop, crop] (docs/architecture.md §10.1).

    For each CSV row: the distorted image A (upscaled to ``min_size`` if its shorter side is
    smaller); the reference B, resized to A's size if they differ; y = A and x = B at one random
    position, y_key = A at a second one. A smaller than the crop is skipped (a resize would change
    its degradation).
    """

    def __init__(
        self,
        csv_path: str,
        *,
        root: Optional[str] = None,
        crop_size: int,
        distorted_column: str = "name",
        reference_column: str = "ref_name",
        min_size: int = 0,
        lmdb_path: Optional[str] = None,
        max_retries: int = 32,
    ):
        super().__init__(max_retries)
        self.pairs = read_pairs(csv_path, distorted_column, reference_column)
        self.root = os.path.dirname(os.path.abspath(csv_path)) if root is None else os.fspath(root)
        self.crop_size, self.min_size = crop_size, min_size
        self.store = LmdbImages(lmdb_path) if lmdb_path else None

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, index: int) -> str:
        name = self.pairs[index][0]
        return f"{self.store.path}[{name}]" if self.store else os.path.join(self.root, name)

    def _read(self, name: str) -> np.ndarray:
        if self.store is not None:
            return decode_image(self.store.get(name), self.min_size)
        return decode_image(os.path.join(self.root, name), self.min_size)

    def load(self, index: int, rng: np.random.Generator) -> dict:
        distorted_name, reference_name = self.pairs[index]
        a = self._read(distorted_name)
        try:
            b = self._read(reference_name)
        except ItemError as exc:
            raise ItemError(f"its reference {reference_name}: {exc}") from exc
        if min(a.shape[:2]) < self.crop_size:
            raise ItemError(
                f"{a.shape[1]}x{a.shape[0]} is smaller than the crop {self.crop_size} (set data.min_size to upscale)"
            )
        if b.shape != a.shape:
            b = np.asarray(Image.fromarray(b).resize((a.shape[1], a.shape[0]), Image.BICUBIC))
        first = random_position(rng, a.shape[0], a.shape[1], self.crop_size)
        second = random_position(rng, a.shape[0], a.shape[1], self.crop_size)
        a_t, b_t = _chw(a), _chw(b)
        return {
            "x": crop(b_t, first, self.crop_size),
            "y": crop(a_t, first, self.crop_size),
            "y_key": crop(a_t, second, self.crop_size),
        }


def collate(items: list) -> dict:
    """Stacks the tensors of the items; concatenates their ``skipped`` lists; seeds become a tensor."""
    batch = {
        key: torch.stack([it[key] for it in items])
        for key, value in items[0].items()
        if isinstance(value, torch.Tensor)
    }
    for key in ("seed", "degrade_seed"):
        if key in items[0]:
            batch[key] = torch.tensor([it[key] for it in items], dtype=torch.long)
    batch["skipped"] = [s for it in items for s in it["skipped"]]
    return batch


def batch_generator(seeds: torch.Tensor, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from a batch's per-item degradation seeds."""
    return torch.Generator(device=device).manual_seed(derive_seed(*seeds.tolist()))


def resolve_degrade_on(degrade_on: str, device: torch.device) -> str:
    """``auto`` -> ``device`` when training on a GPU (the whole synthesis, JPEG included, runs there),
    else ``loader``; ``loader`` and ``device`` stay."""
    if degrade_on == "auto":
        return "device" if device.type == "cuda" else "loader"
    return degrade_on


def build_dataset(data_config, *, kind: Optional[str] = None, device: Optional[torch.device] = None) -> Dataset:
    """The dataset a ``DataConfig`` describes, for training on ``device`` (default: the CPU)."""
    c = data_config
    kind = kind or c.kind
    if kind == "folder":
        degrade_on = resolve_degrade_on(c.degrade_on, device or torch.device("cpu"))
        return FolderTriples(
            c.root,
            crop_size=c.crop_size,
            window=c.window,
            degrade_config=c.degrade,
            degrade_on=degrade_on,
            extensions=c.extensions,
            max_retries=c.max_retries,
            flips=c.flips,
            rescale=c.rescale,
        )
    return PairedTriples(
        c.csv,
        root=c.root,
        crop_size=c.crop_size,
        distorted_column=c.distorted_column,
        reference_column=c.reference_column,
        min_size=c.min_size,
        lmdb_path=c.lmdb if kind == "lmdb" else None,
        max_retries=c.max_retries,
    )
