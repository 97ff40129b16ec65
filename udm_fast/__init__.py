"""udm_fast: a fast universal image degradation model (content-degradation disentanglement)."""
from .backend import build_info, get_backend, set_backend
from .layers import IDA, SFT, SFTResBlock

__version__ = "0.1.0"
__all__ = ["IDA", "SFT", "SFTResBlock", "build_info", "get_backend", "set_backend"]
from .entropy_bottleneck import EntropyBottleneck
