"""Strict construction of config dataclasses from mappings (YAML, JSON, checkpoints)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def checked_fields(cls: type, values: Mapping[str, Any]) -> dict:
    """``values`` as a dict, after checking that every key names a field of the dataclass ``cls``.

    Raises ValueError listing the unknown keys and the valid ones.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    return dict(values)
