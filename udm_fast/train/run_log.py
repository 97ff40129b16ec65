"""What a training run writes as it goes: log.csv, optional TensorBoard scalars and PNG image grids."""

from __future__ import annotations

import csv
import os
from typing import Optional

import numpy as np
import torch

from .config import ConfigError


class RunLogger:
    """CSV log (truncated to ``start_step`` on resume), optional TensorBoard, PNG image grids."""

    def __init__(self, out_dir: str, log_config, start_step: int):
        self.out_dir = out_dir
        self.csv_path = os.path.join(out_dir, "log.csv")
        self.fields: Optional[list] = None
        if os.path.isfile(self.csv_path):
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                kept = [r for r in reader if int(r["step"]) <= start_step]
            with open(self.csv_path, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, self.fields)
                writer.writeheader()
                writer.writerows(kept)
        self.tensorboard = None
        if log_config.tensorboard != "off":
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except ImportError:
                if log_config.tensorboard == "on":
                    raise ConfigError(
                        "log.tensorboard is 'on' but the tensorboard package is not installed "
                        "(pip install tensorboard, or set it to auto)"
                    ) from None

    def row(self, step: int, epoch: float, losses: dict, lrs: dict, images_per_s: float, skipped: int) -> None:
        values = {
            "step": step,
            "epoch": f"{epoch:.4f}",
            **{k: f"{v:.6g}" for k, v in losses.items()},
            **{k: f"{v:.6g}" for k, v in lrs.items()},
            "images_per_s": f"{images_per_s:.2f}",
            "skipped": skipped,
        }
        new = self.fields is None
        if new:
            self.fields = list(values)
        with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(values)
        if self.tensorboard is not None:
            for k, v in {**losses, **lrs, "images_per_s": images_per_s}.items():
                self.tensorboard.add_scalar(k, v, step)

    def image_grid(self, step: int, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor, count: int) -> None:
        """images/step_<n>.png: one row per sample, x | y | y_hat."""
        from PIL import Image

        rows = torch.cat([t[:count].detach().float().cpu().clamp(0, 1) for t in (x, y, y_hat)], dim=3)
        grid = torch.cat(list(rows), dim=1)  # [3, count * H, 3 * W]
        pixels = (grid.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        folder = os.path.join(self.out_dir, "images")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(folder, f"step_{step:08d}.png"))
        if self.tensorboard is not None:
            self.tensorboard.add_image("x|y|y_hat", grid, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
