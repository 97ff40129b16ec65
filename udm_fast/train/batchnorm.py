"""The degradation encoders' BatchNorm statistics: re-estimated after training, or frozen during it.

During training the encoders normalise each batch by its own statistics; the running averages used in
eval mode follow them with momentum 0.1 while the weights move, so at the end they lag the final
weights and, with small batches (4 on a CPU), carry the noise of the last few batches.
``recalibrate_encoders`` replaces them by the exact average over many batches with the final weights.
``freeze_encoder_batchnorms`` instead makes training use the running statistics (fine-tuning a trained
model): a code then depends on its own image only, as at inference, never on the rest of the batch.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def _batchnorms(*modules: nn.Module) -> list:
    return [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def encoder_batchnorms(model: nn.Module) -> list:
    """The BatchNorm layers of the encoders that code images (``global_encoder.encoder_q``, ``local_encoder``)."""
    return _batchnorms(model.global_encoder.encoder_q, model.local_encoder)


def freeze_encoder_batchnorms(model: nn.Module) -> list:
    """Puts every BatchNorm layer of the degradation encoders (``model.global_encoder`` with its MoCo key
    encoder, ``model.local_encoder``) in eval mode: they normalise by their running statistics and stop
    updating them, while their affine weights still train. A later ``model.train()`` undoes it (the
    trainer never switches modes). Returns the layers."""
    layers = _batchnorms(model.global_encoder, model.local_encoder)
    for m in layers:
        m.eval()
    return layers


@torch.no_grad()
def recalibrate_encoders(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Sets the running mean and variance of ``encoder_batchnorms(model)`` to their average over
    ``batches`` of (y_global [B, 3, H, W], y_local [B, 3, H, W]) in [0, 1]: the images the global and
    the local encoder code (in training, y_key and y with ``loss.global_code_from: y_key``, else y twice).
    Weights are untouched; the model's train/eval mode is restored. Returns the number of batches used.
    Raises ValueError for an empty iterable or a batch of one image (BatchNorm needs two)."""
    layers = encoder_batchnorms(model)
    saved = [(m.momentum, m.training) for m in layers]
    backup = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    count = 0
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
            m.train()
        for y_global, y_local in batches:
            if y_global.shape[0] < 2 or y_local.shape[0] < 2:
                raise ValueError(
                    "recalibrate_encoders: batches need at least 2 images, "
                    f"got {y_global.shape[0]} and {y_local.shape[0]}"
                )
            model.global_encoder.encoder_q(y_global * 2 - 1)
            model.local_encoder(y_local * 2 - 1)
            count += 1
        if count == 0:
            raise ValueError("recalibrate_encoders: no batches")
    except BaseException:
        for m, (mean, var, tracked) in zip(layers, backup):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
        raise
    finally:
        for m, (momentum, training) in zip(layers, saved):
            m.momentum = momentum
            m.train(training)
    return count
