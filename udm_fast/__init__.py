"""udm_fast: a fast universal image degradation model (content-degradation disentanglement).

Main entry points: ``UDM`` (the model), ``default_model()`` (the bundled trained one), the drop-in
layers ``IDA`` and ``SFT``, the compressai-compatible ``EntropyBottleneck``, and ``build_info()`` /
``set_backend()``. Subpackages: ``models``, ``layers``, ``ops``, ``entropy``, ``synthesis``,
``losses``, ``eval``, ``train``, ``cli``, ``utils`` (see the README's layout table).
"""

import importlib
import importlib.abc
import importlib.util
import sys

# Module paths of the flat layout before version 0.2 (README "Changelog"): each old name is the same
# module object as the new one (so pickles, ``from udm_fast.degrade import degrade`` and
# ``udm_fast.degrade.degrade(...)`` keep working), imported only when first used.
MOVED_MODULES = {
    "udm_fast._ext": "udm_fast.ops.extension",
    "udm_fast.backend": "udm_fast.ops.backend",
    "udm_fast.checkpoint": "udm_fast.models.checkpoint",
    "udm_fast.checks": "udm_fast.utils.checks",
    "udm_fast.coder": "udm_fast.entropy.coder",
    "udm_fast.compressors": "udm_fast.models.compressors",
    "udm_fast.dataclass_dict": "udm_fast.utils.dataclass_dict",
    "udm_fast.degradation_code": "udm_fast.entropy.degradation_code",
    "udm_fast.degrade": "udm_fast.synthesis.degrade",
    "udm_fast.discriminator": "udm_fast.models.discriminator",
    "udm_fast.encoders": "udm_fast.models.encoders",
    "udm_fast.entropy_bottleneck": "udm_fast.entropy.bottleneck",
    "udm_fast.evaluation": "udm_fast.eval.transfer",
    "udm_fast.files": "udm_fast.utils.files",
    "udm_fast.generator": "udm_fast.models.generator",
    "udm_fast.io": "udm_fast.utils.io",
    "udm_fast.jpeg": "udm_fast.synthesis.jpeg",
    "udm_fast.model": "udm_fast.models.udm",
    "udm_fast.pretrained": "udm_fast.models.pretrained",
    "udm_fast.train.metrics": "udm_fast.eval.metrics",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: an old module path of ``MOVED_MODULES`` imports the new module under both names."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(MOVED_MODULES[spec.name])
        spec.loader_state = module.__spec__  # the import system stamps the old name's spec on the module
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state  # its own spec back


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())


def __getattr__(name):
    """``udm_fast.degrade``, ``udm_fast.io`` ...: the moved modules as attributes, imported on first use."""
    old = f"{__name__}.{name}"
    if old in MOVED_MODULES:
        return importlib.import_module(old)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from .entropy.bottleneck import EntropyBottleneck  # noqa: E402
from .layers import IDA, SFT, SFTResBlock, set_layer_backend  # noqa: E402
from .models.checkpoint import CheckpointError  # noqa: E402
from .models.pretrained import default_model  # noqa: E402
from .models.udm import UDM, UDMConfig  # noqa: E402
from .ops.backend import build_info, get_backend, set_backend  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "IDA",
    "SFT",
    "SFTResBlock",
    "UDM",
    "UDMConfig",
    "EntropyBottleneck",
    "CheckpointError",
    "build_info",
    "default_model",
    "get_backend",
    "set_backend",
    "set_layer_backend",
    "__version__",
]
