"""Training of the degradation model: config schema, datasets, the trainer (trainer.py: the loop;
checkpointing.py: run folder, lock, resume; run_log.py: CSV/TensorBoard/PNG; schedules.py; rng.py;
batchnorm.py: encoder statistics after training), DDP helpers.

Typical use: ``udm-fast train configs/default.yaml --data PHOTOS --out runs/x``, or in Python::

    from udm_fast.train import Trainer, load_config
    Trainer(load_config("configs/tiny.yaml", {"log.out_dir": "runs/tiny"})).run()
"""

from ..eval.metrics import ms_ssim, psnr
from .config import ConfigError, TrainingConfig, load_config
from .data import DataError, FolderTriples, PairedTriples, ResumableSampler
from .trainer import Trainer

__all__ = [
    "ConfigError",
    "TrainingConfig",
    "load_config",
    "DataError",
    "FolderTriples",
    "PairedTriples",
    "ResumableSampler",
    "ms_ssim",
    "psnr",
    "Trainer",
]
