"""configs/tiny.yaml as the training tests run it: on the bundled photos, one thread, one CSV row per step."""

import os

from udm_fast.train.config import load_config

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.yaml")


def tiny(out_dir, **overrides):
    """configs/tiny.yaml on the bundled photos, single-threaded, one CSV row per step, no grids."""
    base = {
        "log.out_dir": str(out_dir),
        "log.progress": False,
        "log.log_every": 1,
        "log.image_every": 0,
        "log.save_every": 0,
        "run.threads": 1,
        "data.degrade_window": 48,
    }
    return load_config(TINY, {**base, **overrides})
