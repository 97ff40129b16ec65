"""Training of the degradation model: config schema, datasets, trainer, DDP helpers, metrics, CLI commands.

Typical use: ``udm-fast train configs/default.yaml --data PHOTOS --out runs/x``, or in Python::

    from udm_fast.train import Trainer, load_config
    Trainer(load_config("configs/tiny.yaml", {"log.out_dir": "runs/tiny"})).run()
"""
from .config import ConfigError, TrainingConfig, load_config
from .data import DataError, FolderTriples, PairedTriples, ResumableSampler
from .metrics import ms_ssim, psnr
from .trainer import Trainer

__all__ = ["ConfigError", "TrainingConfig", "load_config", "DataError", "FolderTriples", "PairedTriples",
           "ResumableSampler", "ms_ssim", "psnr", "Trainer"]
