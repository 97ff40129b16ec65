"""General helpers: image files (io.py), atomic writes (files.py), device names (device.py), input
checks (checks.py), dataclasses from dicts (dataclass_dict.py)."""
