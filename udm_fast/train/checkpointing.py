"""A training run's output folder and checkpoints: the folder lock, atomic step/latest saves, finding
the checkpoint to resume from, checking its format and config against the run's, and restoring
optimisers whose parameter groups carry names.

Layout of a run folder: ``config.yaml``, ``log.csv``, ``checkpoints/step_<n>.pt`` and
``checkpoints/latest.pt`` (the same state), ``model.pt`` (``model_ema.pt``) once finished, and
``.run.lock`` while a run writes into it.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import socket
from typing import Iterator, Optional

import torch

from ..models import checkpoint as ckpt
from .config import TrainingConfig

log = logging.getLogger("udm_fast.train")

CHECKPOINT_FORMAT = ckpt.TRAINING_FORMAT
CHECKPOINT_VERSION = 1
STEP_FILE = re.compile(r"step_\d{8}\.pt")
LOCK_FILE = ".run.lock"


@contextlib.contextmanager
def exclusive_output(out_dir: str) -> Iterator[None]:
    """Holds an advisory lock on ``out_dir/.run.lock`` (released when the process ends, however it ends),
    so a second run into the same folder fails at once instead of interleaving its checkpoints."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(os.path.join(out_dir, LOCK_FILE), "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            raise RuntimeError(
                f"{out_dir} is being written by another run ({owner}): let it finish, stop it, "
                "or choose another output folder"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class RunFolder:
    """The checkpoints of the run in ``out_dir`` (``out_dir/checkpoints``)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.checkpoint_dir = os.path.join(out_dir, "checkpoints")
        self.latest = os.path.join(self.checkpoint_dir, "latest.pt")

    def step_checkpoints(self) -> list:
        """The names of the step_<n>.pt files, oldest first."""
        if not os.path.isdir(self.checkpoint_dir):
            return []
        return sorted(f for f in os.listdir(self.checkpoint_dir) if STEP_FILE.fullmatch(f))

    def check_fresh(self) -> None:
        """Raises FileExistsError when the folder already holds a run's checkpoints."""
        if self.step_checkpoints() or os.path.isfile(self.latest):
            raise FileExistsError(
                f"{self.out_dir} already holds a run (checkpoints/): resume it with --resume "
                f"or choose another output folder"
            )

    def load_newest(self) -> tuple[str, dict]:
        """(path, contents) of the newest readable checkpoint: the last step_<n>.pt (written before
        latest.pt, so a run killed between the two writes resumes from the newer state), then latest.pt,
        then the older step files (a damaged file is reported and skipped)."""
        steps = [os.path.join(self.checkpoint_dir, name) for name in reversed(self.step_checkpoints())]
        candidates = steps[:1] + ([self.latest] if os.path.isfile(self.latest) else []) + steps[1:]
        if not candidates:
            raise FileNotFoundError(f"nothing to resume: no checkpoint in {self.checkpoint_dir}")
        for path, fallback in zip(candidates, candidates[1:]):
            try:
                return path, ckpt.load_file(path)
            except ckpt.CheckpointError as exc:
                log.warning("%s; resuming from %s instead", exc, fallback)
        return candidates[-1], ckpt.load_file(candidates[-1])

    def remove_interrupted_writes(self) -> None:
        """Deletes temporary files that a run killed while saving left behind (files.write_atomic's
        ``.tmp-*``; the files they were to replace are intact)."""
        for folder in (self.out_dir, self.checkpoint_dir):
            for path in glob.glob(os.path.join(glob.escape(folder), ".tmp-*")):
                log.info("removing %s, left by an interrupted save", path)
                os.remove(path)

    def save(self, state: dict, step: int, keep: int) -> str:
        """Writes ``state`` atomically to step_<step>.pt then latest.pt; keeps the newest ``keep`` step
        files (0: all). Returns the step file's path."""
        path = os.path.join(self.checkpoint_dir, f"step_{step:08d}.pt")
        ckpt.save_atomic(state, path)
        ckpt.save_atomic(state, self.latest)
        if keep:
            for old in self.step_checkpoints()[:-keep]:
                os.remove(os.path.join(self.checkpoint_dir, old))
        return path


def check_training_checkpoint(state, path: str) -> None:
    """Raises CheckpointError unless ``state`` is a training checkpoint of the version this code reads."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ckpt.CheckpointError(f"{path} is not a udm_fast training checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ckpt.CheckpointError(
            f"{path} has training-checkpoint version {state.get('version')}, this udm_fast reads {CHECKPOINT_VERSION}"
        )


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list:
    """``"a.b: old -> new"`` for every dotted key whose value differs between two nested dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def check_resumed_config(saved: dict, config: TrainingConfig, path: str) -> None:
    """Compares the config a checkpoint was written with (``saved``, as a dict) with the run's: a changed
    model setting raises CheckpointError (the weights would not fit), other changes are logged."""
    changed = _changed_keys(TrainingConfig.from_dict(saved).to_dict(), config.to_dict())
    model_changes = [c for c in changed if c.startswith("model.")]
    if model_changes:
        raise ckpt.CheckpointError(
            f"{path} was trained with another model (checkpoint -> config now: "
            f"{', '.join(model_changes)}); the model settings cannot change on resume"
        )
    if changed:
        log.warning("resuming with changed settings: %s", ", ".join(changed))


def param_group(optimizer: torch.optim.Optimizer, name: str) -> dict:
    """The parameter group of ``optimizer`` called ``name`` (its ``"name"`` entry)."""
    for group in optimizer.param_groups:
        if group.get("name") == name:
            return group
    raise KeyError(
        f"no parameter group {name!r}; the optimiser has {[group.get('name') for group in optimizer.param_groups]}"
    )


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict, path: str) -> None:
    """Loads an optimiser state into ``optimizer``, whose parameter groups carry names. Saved groups with
    names must match them in order; a checkpoint written before the groups were named (no ``"name"``
    entries) is matched by position, the order the groups have always been built in. The names stay."""
    names = [group["name"] for group in optimizer.param_groups]
    saved_names: list[Optional[str]] = [group.get("name") for group in saved["param_groups"]]
    positional = all(name is None for name in saved_names)
    if len(saved_names) != len(names) or not (positional or saved_names == names):
        shown = [f"group {i}" if name is None else name for i, name in enumerate(saved_names)]
        raise ckpt.CheckpointError(
            f"{path}: the optimiser's parameter groups are {shown} in the checkpoint and {names} now"
        )
    optimizer.load_state_dict(saved)
    for group, name in zip(optimizer.param_groups, names):
        group["name"] = name
