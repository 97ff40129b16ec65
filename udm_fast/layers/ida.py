"""The IDA layer (inhomogeneous degradation-aware): a drop-in for the reference ``IDADepthwiseConv``.

The computation runs on the backend chosen per call (``udm_fast.ops.backend``) through the IDA
dispatch table (``udm_fast.ops.dispatch``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops import backend as backend_choice
from ..ops.dispatch import IDA_BACKENDS, select
from ..ops.operands import check_ida_shapes


class IDA(nn.Module):
    """Inhomogeneous degradation-aware layer (reference ``IDADepthwiseConv``; additive, not depthwise).

    forward(x [B, C, H, W], m [B, Cc, H/2, W/2]) -> [B, C_out, H, W]; also accepts ``forward([x, m])``.
    H and W must be even.
    """

    def __init__(
        self,
        channels_in_x: int,
        channels_in_map: int,
        channels_mid: Optional[int] = None,
        channels_out: Optional[int] = None,
        ds_factor: int = 2,
        backend: Optional[str] = None,
    ):
        super().__init__()
        if ds_factor != 2:
            raise ValueError(f"IDA: only ds_factor=2 is supported (the reference's MAP_RATIO), got {ds_factor}")
        channels_mid = (channels_in_x + channels_in_map) // 2 if channels_mid is None else channels_mid
        channels_out = channels_in_x if channels_out is None else channels_out
        self.channels_in_x, self.channels_in_map = channels_in_x, channels_in_map
        self.channels_mid, self.channels_out = channels_mid, channels_out
        self.transform_map = nn.Sequential(
            nn.ConvTranspose2d(channels_in_map, channels_mid, 2, stride=2, bias=False),
            nn.LeakyReLU(0.1),
            nn.Conv2d(channels_mid, channels_mid, 3, stride=2, padding=1, bias=False),
        )
        self.transform_x = nn.Conv2d(channels_in_x, channels_mid, 3, stride=2, padding=1, bias=False)
        self.deconv = nn.ConvTranspose2d(channels_mid, channels_out, 2, stride=2)
        self.backend = None if backend is None else backend_choice.check_name(backend, "IDA")

    def weights(self) -> tuple:
        """(w_up, w_map, w_x, w_out, b_out): the order every IDA backend takes them in."""
        return (
            self.transform_map[0].weight,
            self.transform_map[2].weight,
            self.transform_x.weight,
            self.deconv.weight,
            self.deconv.bias,
        )

    def forward(self, x, m: Optional[torch.Tensor] = None) -> torch.Tensor:
        if m is None:
            if not isinstance(x, (list, tuple)) or len(x) != 2:
                raise TypeError("IDA.forward takes (x, m) or the reference's list form ([x, m])")
            x, m = x
        weights = self.weights()
        check_ida_shapes("IDA", x, m, *weights)
        name = backend_choice.resolve(self.backend, x.device)
        return select(IDA_BACKENDS, "IDA", name)(x, m, *weights)
