"""Learning-rate schedules of the two optimisers: the LambdaLR factor and its restore on resume."""

from __future__ import annotations

import math

import torch

from .config import ScheduleConfig


class ScheduleFactor:
    """LR multiplier after n intervals. Built from the config and the run's length each time, never
    restored from a checkpoint (see ``load_scheduler``)."""

    def __init__(self, schedule: ScheduleConfig, length: int):
        self.kind, self.step_size, self.gamma = schedule.kind, schedule.step_size, schedule.gamma
        self.length, self.min_lr_ratio = max(1, length), schedule.min_lr_ratio

    def __call__(self, n: int) -> float:
        if self.kind == "step":
            return self.gamma ** (n // self.step_size)
        if self.kind == "cosine":
            progress = min(n, self.length) / self.length
            return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The scheduler of ``optimizer``; its length is ``schedule.length`` or the run's, in steps or epochs
    as ``schedule.interval`` counts them."""
    length = schedule.length or (
        total_steps if schedule.interval == "step" else math.ceil(total_steps / steps_per_epoch)
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, ScheduleFactor(schedule, length))


def load_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict) -> None:
    """Restores the scheduler's position but keeps its ``ScheduleFactor`` as the current config and run
    length define it (LambdaLR would restore the saved one: a cosine over the old max_steps)."""
    scheduler.load_state_dict(dict(state, lr_lambdas=[None] * len(scheduler.lr_lambdas)))
    lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
