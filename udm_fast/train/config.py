"""The training configuration: a YAML file read into typed dataclasses.

Every section is a dataclass; ``TrainingConfig.from_dict`` checks each key and value. An unknown or
misspelt key is an error that names it, suggests the closest valid key and lists the valid ones;
a value of the wrong type is an error that names the key. ``configs/default.yaml`` documents every
key; the sections ``model``, ``loss.weights`` and ``data.degrade`` are ``UDMConfig``,
``LossWeights`` and ``DegradeConfig``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional

import yaml

from ..losses import LossWeights
from ..models.udm import UDMConfig
from ..synthesis.degrade import DegradeConfig


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message names the offending key."""


@dataclass
class ScheduleConfig:
    """Learning-rate schedule of one optimiser."""

    kind: Literal["constant", "step", "cosine"] = "step"
    interval: Literal["epoch", "step"] = "step"  # the unit in which the schedule advances
    step_size: int = 200000  # step: multiply the rate by gamma every step_size intervals
    gamma: float = 0.5
    length: int = 0  # cosine: intervals from the base rate to the floor (0 = the whole run)
    min_lr_ratio: float = 0.0  # cosine: floor as a fraction of the base rate

    def __post_init__(self):
        if self.step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {self.step_size}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.length < 0:
            raise ValueError(f"length must be >= 0, got {self.length}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class DataConfig:
    """Where the training images come from and how they are cut (docs/architecture.md §10.1)."""

    kind: Literal["folder", "csv", "lmdb"] = "folder"
    root: Optional[str] = None  # folder: clean images (None = the bundled samples); csv: base of relative paths
    csv: Optional[str] = None  # csv / lmdb: the index with one row per distorted image
    lmdb: Optional[str] = None  # lmdb: database whose keys are the CSV path strings
    distorted_column: str = "name"
    reference_column: str = "ref_name"
    crop_size: int = 128
    min_size: int = 0  # csv / lmdb: images with a shorter side are upscaled to it (0 = off)
    batch_size: int = 24  # global batch, split evenly over DDP ranks
    workers: int = 8  # DataLoader worker processes per rank (0 = load in the main process)
    degrade_on: Literal["auto", "loader", "device"] = "auto"  # folder: where the degradations are synthesised
    degrade_window: int = 0  # folder: side of the region degraded per item (0 = 2 * crop_size)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    extensions: tuple = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
    max_retries: int = 32  # unreadable files tried in a row before giving up
    flips: bool = False  # folder: random horizontal flip and 90-degree rotation of each clean region
    rescale: tuple = (1.0, 1.0)  # folder: the clean photo is first reduced by a factor drawn from this range

    def __post_init__(self):
        for name in ("crop_size", "batch_size", "max_retries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("min_size", "workers", "degrade_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.crop_size % 8:
            raise ValueError(f"crop_size must be a multiple of 8 (the generator's constraint), got {self.crop_size}")
        if self.degrade_window and self.degrade_window < self.crop_size:
            raise ValueError(f"degrade_window ({self.degrade_window}) must be 0 or >= crop_size ({self.crop_size})")
        if len(self.rescale) != 2 or not 0.0 < self.rescale[0] <= self.rescale[1] <= 1.0:
            raise ValueError(
                f"rescale must be [low, high] with 0 < low <= high <= 1 (photos are only reduced, "
                f"an enlargement would blur them), got {list(self.rescale)}"
            )
        if self.kind in ("csv", "lmdb") and not self.csv:
            raise ValueError(f"kind '{self.kind}' needs csv (the index file)")
        if self.kind == "lmdb" and not self.lmdb:
            raise ValueError("kind 'lmdb' needs lmdb (the database path)")

    @property
    def window(self) -> int:
        return self.degrade_window or 2 * self.crop_size


@dataclass
class LossConfig:
    """Weights of the objective and where the perceptual networks find their weights."""

    weights: LossWeights = field(default_factory=LossWeights)  # film-grain defaults
    pretrained: bool = True  # false: random VGG16 for DISTS/LPIPS (smoke tests only, meaningless values)
    vgg_weights: Optional[str] = None  # torchvision vgg16-397923af.pth (else the torch hub cache)
    dists_weights: Optional[str] = None  # DISTS alpha/beta weights.pt (else the dists-pytorch package)
    lpips_weights: Optional[str] = None  # LPIPS v0.1 vgg.pth (else the lpips package)
    download: bool = True  # fetch the VGG16 file when it is not cached (needs a network)
    global_code_from: Literal["y", "y_key"] = "y"  # y_key: the generator's e_g is encoded from the other crop
    cross_leakage: float = 0.0  # weight of leakage_loss on a second pass: x of another batch item, y's codes
    # what the generator sees of e_g's latent in training: "noise" (compressai's x + U(-1/2, 1/2)) or
    # "straight_through" (the inference rounding, identity gradient); the rate is the noisy one either way
    global_code_quantization: Literal["noise", "straight_through"] = "noise"
    # the identity gate learns from loss.weights.gate_clean only: the reconstruction losses see its value but
    # do not train it (so it detects op-free pairs instead of trading noise against L1) [ours]
    gate_from_plan: bool = False

    def __post_init__(self):
        if not self.cross_leakage >= 0:
            raise ValueError(f"cross_leakage must be >= 0, got {self.cross_leakage}")


@dataclass
class OptimConfig:
    """Adam optimisers: one over the five generator-side groups, one over the critic (docs/architecture.md §10.3)."""

    lr_global_encoder: float = 1e-4
    lr_local_encoder: float = 1e-4
    lr_generator: float = 1e-4
    lr_global_compressor: float = 1e-3
    lr_local_compressor: float = 1e-3
    lr_critic: float = 1e-4
    lr_quantiles: float = 0.0  # the entropy models' quantiles in their own group (0 = the compressors' rates)
    lr_identity_gate: float = 0.0  # model.identity_gate's MLP in its own group (0 = the generator's rate)
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-3
    grad_clip: float = 0.0  # max global gradient norm of the generator side (0 = off)
    critic_grad_clip: float = 0.0  # the same for the critic
    generator_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    critic_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name.startswith("lr_") and not getattr(self, f.name) >= 0:
                raise ValueError(f"{f.name} must be >= 0, got {getattr(self, f.name)}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.eps <= 0 or self.grad_clip < 0 or self.critic_grad_clip < 0:
            raise ValueError("eps must be > 0 and grad_clip / critic_grad_clip >= 0")


@dataclass
class RunConfig:
    """How the run executes."""

    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N; under torchrun: cuda:LOCAL_RANK
    epochs: int = 0  # passes over the data (0 = no limit)
    max_steps: int = 500000  # iterations (0 = no limit); the run stops at the first limit reached
    amp: Literal["none", "bf16", "fp16"] = "none"
    compile: bool = False  # torch.compile the generator
    channels_last: bool = False
    backend: Optional[str] = None  # IDA/SFT kernels: reference | cuda | triton | auto (None = library default)
    ema_decay: float = 0.0  # EMA of the generator weights (0 = off, else e.g. 0.999)
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    threads: int = 0  # torch CPU threads (0 = leave torch's choice)
    init_weights: Optional[str] = None  # a fresh run starts from these weights: "bundled", a model file or a checkpoint
    bn_recalibration: int = 0  # batches over which model.pt's encoder BatchNorm statistics are re-estimated (0 = off)
    freeze_encoder_batchnorm: bool = False  # encoders normalise by their running statistics in training too

    def __post_init__(self):
        if self.epochs < 0 or self.max_steps < 0 or self.threads < 0 or self.bn_recalibration < 0:
            raise ValueError("epochs, max_steps, threads and bn_recalibration must be >= 0")
        if self.epochs == 0 and self.max_steps == 0:
            raise ValueError("set epochs or max_steps (both are 0: the run would never end)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.freeze_encoder_batchnorm and self.bn_recalibration:
            raise ValueError(
                "freeze_encoder_batchnorm keeps the encoders' BatchNorm statistics fixed, so there is nothing to "
                "re-estimate: set bn_recalibration to 0"
            )


@dataclass
class LogConfig:
    """Outputs of the run: checkpoints, CSV / TensorBoard logs and image grids under out_dir."""

    out_dir: str = "runs/udm"
    log_every: int = 20  # a CSV (and TensorBoard) row every N steps
    save_every: int = 5000  # a checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2  # step checkpoints kept besides latest.pt (0 = keep all)
    image_every: int = 500  # a PNG grid x | y | y_hat every N steps (0 = off)
    image_count: int = 4  # rows of the grid
    tensorboard: Literal["auto", "on", "off"] = "auto"  # auto: when the tensorboard package is importable
    progress: bool = True  # tqdm progress bar on the main rank

    def __post_init__(self):
        for name in ("log_every", "image_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "keep_checkpoints", "image_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class TrainingConfig:
    """The whole training configuration (one YAML file)."""

    seed: int = 0
    model: UDMConfig = field(default_factory=lambda: UDMConfig(discriminator=True))
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        if self.loss.weights.gan_generator > 0 and not self.model.discriminator:
            raise ValueError(
                "loss.weights.gan_generator > 0 needs a critic: set model.discriminator: true (or the weight to 0)"
            )
        if self.model.discriminator:
            if self.model.disc_channels not in (3, 6):
                raise ValueError(
                    f"model.disc_channels must be 3 (plain critic on y) or 6 (conditioned on x), "
                    f"got {self.model.disc_channels}"
                )
            if self.model.disc_in_width != self.data.crop_size:
                raise ValueError(
                    f"model.disc_in_width ({self.model.disc_in_width}) must equal data.crop_size "
                    f"({self.data.crop_size}): it selects the critic's strides for that patch width"
                )
        if self.loss.weights.l1_noise_free > 0 and self.data.kind != "folder":
            raise ValueError(
                f"loss.weights.l1_noise_free needs synthesised pairs (data.kind: folder, which knows which pairs "
                f"are noise-free); data.kind is {self.data.kind!r}: set the weight to 0"
            )
        if self.loss.weights.gate_clean > 0 and (self.data.kind != "folder" or not self.model.identity_gate):
            raise ValueError(
                "loss.weights.gate_clean needs model.identity_gate: true and synthesised pairs (data.kind: folder, "
                f"which knows which pairs drew no op); got identity_gate {self.model.identity_gate}, data.kind "
                f"{self.data.kind!r}: set the weight to 0"
            )
        if self.loss.gate_from_plan and self.loss.weights.gate_clean <= 0:
            raise ValueError(
                "loss.gate_from_plan trains the identity gate by loss.weights.gate_clean alone: set that > 0"
            )
        if self.model.queue_size < self.data.batch_size:
            raise ValueError(
                f"model.queue_size ({self.model.queue_size}) must be >= data.batch_size "
                f"({self.data.batch_size}): every step enqueues one key per image"
            )

    @classmethod
    def from_dict(cls, values: Optional[Mapping]) -> "TrainingConfig":
        """Builds and checks a configuration; missing keys take the defaults of ``configs/default.yaml``."""
        return _build(cls, {} if values is None else values, "")

    def to_dict(self) -> dict:
        """Plain nested dict (lists for tuples) that ``from_dict`` reads back."""
        return _plain(dataclasses.asdict(self))


def load_config(path: str | os.PathLike, overrides: Optional[Mapping[str, Any]] = None) -> TrainingConfig:
    """Reads a YAML file; ``overrides`` maps dotted keys ("run.max_steps") to values applied on top."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(values).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(values, dotted, value)
    try:
        return TrainingConfig.from_dict(values)
    except ConfigError as exc:
        given = ", ".join(f"{key}={value!r}" for key, value in (overrides or {}).items())
        raise ConfigError(f"{path}{f' with overrides {given}' if given else ''}: {exc}") from exc


def _set_dotted(values: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = values
    for name in parents:
        child = node.get(name)
        if child is None:
            child = node[name] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: '{name}' is not a section")
        node = child
    node[last] = value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _build(cls: type, values: Any, path: str, base: Any = None) -> Any:
    """cls from a mapping; absent keys keep ``base``'s values (or the class defaults)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{path or 'config'}' must be a mapping of keys, got {type(values).__name__} {values!r}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown key '{_where(path, str(key))}'{hint}; valid keys in '{path or 'config'}': {names}"
            )
    hints = typing.get_type_hints(cls)
    defaults = {f.name: _field_default(f) for f in dataclasses.fields(cls) if f.init}
    kwargs = {key: _coerce(hints[key], value, _where(path, key), defaults[key]) for key, value in values.items()}
    try:
        return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"'{path or 'config'}': {exc}") from exc


def _coerce(hint: Any, value: Any, where: str, default: Any = None) -> Any:
    """Checks (and lightly converts) a YAML value against a field's type hint (default: the field's)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, {} if value is None else value, where, default)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, where)
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(args):  # YAML 1.1 reads bare on / off as booleans
            value = "on" if value else "off"
        if value not in args:
            raise ConfigError(f"'{where}' must be one of {list(args)}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{where}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{where}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{where}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{where}' must be a string, got {value!r}")
        return value
    if hint in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{where}' must be a list, got {value!r}")
        return tuple(value) if tuple in (hint, origin) else list(value)
    if hint is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"config field '{where}' has an unsupported type {hint!r}")
