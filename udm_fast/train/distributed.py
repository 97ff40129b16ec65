"""Data-parallel helpers for training under ``torchrun`` (or any launcher that sets the env:// variables).

The trainer keeps plain modules and averages gradients itself after each backward
(``average_gradients``) instead of wrapping them in DistributedDataParallel: one iteration runs the
generator twice, the critic under a gradient penalty (double backward) and the critic frozen inside
the generator loss, none of which suits DDP's hooks. Every rank then applies the same averaged
gradients to the same parameters, so the replicas stay identical; ``average_batchnorm_stats`` keeps
the BatchNorm running statistics equal too, and the MoCo keys are gathered from every rank
(``gather_rows``) before each enqueue.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True when the process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str, timeout_s: float = 1800.0) -> DistInfo:
    """Joins the process group described by the env:// variables (NCCL on CUDA, else gloo).

    Returns the single-process ``DistInfo()`` when WORLD_SIZE is absent or 1.
    """
    if not launched_distributed():
        return DistInfo()
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE > 1 but {missing} are not set: launch with torchrun")
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return info


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _grads(params: Iterable[nn.Parameter]) -> list:
    return [p.grad for p in params if p.grad is not None]


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """All-reduces the gradients of ``params`` to their mean over ranks (one flat buffer per dtype)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    by_dtype: dict = {}
    for g in _grads(params):
        by_dtype.setdefault(g.dtype, []).append(g)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def average_batchnorm_stats(module: nn.Module) -> None:
    """Replaces every BatchNorm running mean / variance by its mean over ranks."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    stats = [
        b
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var)
        if b is not None
    ]
    if not stats:
        return
    flat = torch.cat([s.reshape(-1) for s in stats])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    offset = 0
    for s in stats:
        s.copy_(flat[offset : offset + s.numel()].view_as(s))
        offset += s.numel()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copies every parameter and buffer of rank ``src`` to the other ranks."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenates [n, ...] tensors of equal shape from all ranks in rank order -> [world * n, ...]."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_scalar(value: float, device: Optional[torch.device] = None) -> float:
    """Sum of a Python number over ranks."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
