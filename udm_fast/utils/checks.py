"""Input checks shared by the public functions that take image batches."""

from __future__ import annotations

import torch


def check_image_batch(t, what: str) -> None:
    """Raises TypeError / ValueError unless ``t`` is a floating-point tensor [B, 3, H, W].

    ``what`` names the argument in the message (e.g. "degrade: x"). Value ranges are the caller's to check.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4 or t.shape[1] != 3:
        raise ValueError(f"{what} must be an image batch [B, 3, H, W], got shape {list(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(
            f"{what} must be a float tensor with values in [0, 1], got {t.dtype} (divide 8-bit images by 255)"
        )
