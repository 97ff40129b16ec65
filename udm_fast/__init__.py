"""udm_fast: a fast universal image degradation model (content-degradation disentanglement).

Main entry points: ``UDM`` (the model), ``default_model()`` (the bundled trained one), the drop-in
layers ``IDA`` and ``SFT``, the compressai-compatible ``EntropyBottleneck``, and ``build_info()`` /
``set_backend()``.
"""
from .backend import build_info, get_backend, set_backend
from .checkpoint import CheckpointError
from .entropy_bottleneck import EntropyBottleneck
from .layers import IDA, SFT, SFTResBlock, set_layer_backend
from .model import UDM, UDMConfig
from .pretrained import default_model

__version__ = "0.1.0"
__all__ = ["IDA", "SFT", "SFTResBlock", "UDM", "UDMConfig", "EntropyBottleneck", "CheckpointError",
           "build_info", "default_model", "get_backend", "set_backend", "set_layer_backend"]
