"""Loads the compiled extension ``udm_fast._C`` (it registers the ``torch.ops.udm_fast`` ops)."""

from __future__ import annotations

import importlib

_C = None
_ERROR: str | None = None


def load():
    """Returns the compiled module, or None when it could not be imported (see ``error()``)."""
    global _C, _ERROR
    if _C is None and _ERROR is None:
        try:
            _C = importlib.import_module("udm_fast._C")
        except ImportError as exc:  # not built, or built against another torch
            _ERROR = (
                f"udm_fast._C could not be imported ({exc}); reinstall with "
                "`pip install --no-build-isolation -e .` against the torch you run"
            )
    return _C


def error() -> str | None:
    load()
    return _ERROR


def require():
    """The compiled module; raises RuntimeError naming the cause when it is missing."""
    module = load()
    if module is None:
        raise RuntimeError(_ERROR)
    return module
