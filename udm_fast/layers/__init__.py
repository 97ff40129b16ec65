"""Drop-in layers of the reference generator: pre-activation convs, IDA, SFT and the SFT residual block."""

from ..ops.operands import NoiseArg
from ..ops.reference import draw_noise, ida_reference
from .conv import PreActConv2d, PreActConvTranspose2d
from .ida import IDA
from .sft import SFT, SFTResBlock, resize_cond, set_layer_backend

__all__ = [
    "IDA",
    "SFT",
    "SFTResBlock",
    "NoiseArg",
    "PreActConv2d",
    "PreActConvTranspose2d",
    "draw_noise",
    "ida_reference",
    "resize_cond",
    "set_layer_backend",
]
