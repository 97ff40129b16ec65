"""Loading a model for inference from whatever file the user has (the commands' ``--weights``)."""

from __future__ import annotations

from typing import Optional

import torch

from . import checkpoint as ckpt
from . import pretrained
from .udm import UDM, UDMConfig


def load_model(weights: Optional[str], official: bool, device: torch.device) -> UDM:
    """The model in eval mode from ``weights``: a UDM.save file, a training checkpoint (its raw weights)
    or with ``official`` the authors' checkpoint; without ``weights`` the bundled model."""
    if weights is None:
        if official:
            raise ValueError("--official needs --weights (the path of the authors' checkpoint)")
        return pretrained.default_model(device).eval()
    if official:
        return UDM.from_official(weights).to(device).eval()
    payload = ckpt.load_file(weights)
    if isinstance(payload, dict) and payload.get("format") == ckpt.TRAINING_FORMAT:
        model = UDM(UDMConfig.from_dict(payload["config"]["model"]))
        ckpt.check_and_load(model, payload["model"], weights)
        return model.to(device).eval()
    if not UDM.is_saved(payload):
        raise ckpt.CheckpointError(
            f"{weights} is neither a udm_fast model file (model.pt) nor a training "
            "checkpoint; for the authors' checkpoint add --official"
        )
    return UDM.from_saved(payload, weights).to(device)
