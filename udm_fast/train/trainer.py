"""The training loop (docs/architecture.md §10.2) with its bugs fixed, mixed precision, DDP and exact resume.

One iteration = one generator step then one critic step:

1. generator side (encoders, compressors, generator): e_g = LPE_q(y); the key encoder follows the
   query encoder by momentum and encodes y_key; ê_g, ê_l come from the compressors; the generator
   runs twice on x (two internal-noise samples ŷ0, ŷ1, the second only for the diversity loss);
   the loss is ``LossWeights.weighted_sum`` of the terms of ``udm_fast.losses``; Adam step. The
   keys of every rank are then gathered and enqueued, so the MoCo queue is the same on all ranks.
2. critic: WGAN-GP on (y, ŷ0) (plain critic) or ((x, y), (x, ŷ0)) (conditioned), Adam step.

Fixed relative to the reference: DISTS/LPIPS see [0, 1] images; each LR scheduler drives its own
optimiser; the key encoder and queue are trained correctly under data parallelism and are
checkpointed; resume restores everything (see ``Trainer.state_dict``).

Images are uint8 from the loader, [0, 1] for the losses and metrics, [-1, 1] inside the model.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import threading
import time
from typing import Optional

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..eval.leakage import leakage_loss
from ..losses import (
    DISTS,
    LPIPS,
    color_loss,
    diversity_loss,
    entropy_aux_loss,
    info_nce_loss,
    l1_loss,
    lowpass_l1_loss,
    relative_spectrum_loss,
    spectrum_loss,
    transfer_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)
from ..models import checkpoint as ckpt
from ..models import pretrained
from ..models.loading import load_model
from ..models.udm import UDM
from ..utils.device import parse_device
from . import distributed as dist_utils
from .batchnorm import freeze_encoder_batchnorms, recalibrate_encoders
from .checkpointing import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    RunFolder,
    check_resumed_config,
    check_training_checkpoint,
    exclusive_output,
    load_optimizer,
    param_group,
)
from .config import ConfigError, TrainingConfig
from .data import ResumableSampler, batch_generator, build_dataset, collate, make_triples
from .rng import rng_state, seed_everything, set_rng_state
from .run_log import RunLogger
from .schedules import build_scheduler, load_scheduler

log = logging.getLogger("udm_fast.train")


def resolve_device(name: str, local_rank: int) -> torch.device:
    """run.device as a device (cpu or cuda; a bare ``cuda`` is this process's ``local_rank``), made current."""
    device = parse_device(name, what="run.device", option="run.device", types=("cpu", "cuda"), error=ConfigError)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def load_initial_weights(model: UDM, source: str) -> None:
    """Fine-tuning: ``model``'s weights from ``source`` (``"bundled"``, a model file or a training checkpoint);
    the shapes must match ``model``'s config (CheckpointError listing the keys otherwise)."""
    if source == "bundled":
        if not pretrained.DEFAULT_WEIGHTS.is_file():
            raise ConfigError("run.init_weights is 'bundled' but this install has no bundled weights")
        weights = None
    elif not os.path.isfile(source):
        raise ConfigError(f"run.init_weights: no file at {source}")
    else:
        weights = source
    initial = load_model(weights, official=False, device=torch.device("cpu"))
    state = initial.state_dict()
    if model.config.identity_gate and not initial.config.identity_gate:
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("generator.gate.")})
        log.info("run.init_weights has no identity gate: model.identity_gate starts fresh (open, g ~ 0.98)")
    ckpt.check_and_load(model, state, f"run.init_weights ({source})")


def _plan_flag(flag: Optional[torch.Tensor], term: str, meaning: str) -> torch.Tensor:
    """A per-pair flag of the synthesis plan that loss term ``term`` needs; real pairs have none."""
    if flag is None:
        raise ValueError(
            f"loss.weights.{term} needs to know which pairs {meaning}: only pairs synthesised from clean images "
            "(data.kind: folder) say so; set the weight to 0 for real pairs"
        )
    return flag


class Trainer:
    """Trains a ``UDM`` as ``config`` says; ``run()`` trains until the step or epoch limit.

    ``resume``: False (a fresh run; out_dir must not hold checkpoints), True (continue from the
    newest checkpoint in out_dir/checkpoints) or a checkpoint path. Under torchrun every process builds a
    Trainer; rank 0 writes the outputs.
    """

    def __init__(self, config: TrainingConfig, *, resume: bool | str = False):
        self.config = config
        c = config
        wants_cuda = c.run.device.startswith("cuda") or (c.run.device == "auto" and torch.cuda.is_available())
        self.dist = dist_utils.init("cuda" if wants_cuda else "cpu")
        self.device = resolve_device(c.run.device, self.dist.local_rank)
        if c.run.threads:
            torch.set_num_threads(c.run.threads)
        if c.run.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if c.run.amp == "fp16" and self.device.type == "cpu":
            log.warning(
                "run.amp is fp16 on the CPU: slow, and the loss scaler skips the steps whose scaled "
                "gradients overflow (the schedules still advance); bf16 needs no scaler"
            )
        if c.data.batch_size % self.dist.world_size:
            raise ConfigError(
                f"data.batch_size ({c.data.batch_size}) must be divisible by the number of "
                f"processes ({self.dist.world_size})"
            )
        self.out_dir = c.log.out_dir
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise ConfigError(f"the output folder {self.out_dir} (log.out_dir / --out) is a file")
        self.run_folder = RunFolder(self.out_dir)

        seed_everything(c.seed)  # identical initial weights on every rank
        self.model = UDM(c.model)
        if c.run.init_weights and not resume:
            load_initial_weights(self.model, c.run.init_weights)
        self.model.to(self.device)
        if c.run.backend is not None:
            self.model.set_backend(c.run.backend)
        if c.run.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if c.run.freeze_encoder_batchnorm:
            freeze_encoder_batchnorms(self.model)
        dist_utils.broadcast_module(self.model)
        self.critic = self.model.discriminator
        self.ema = None
        if c.run.ema_decay:
            self.ema = copy.deepcopy(self.model.generator).requires_grad_(False)
        self.model.generator.detach_gate = c.loss.gate_from_plan
        self.generator_fn = torch.compile(self.model.generator) if c.run.compile else self.model.generator
        self.weights = c.loss.weights
        self.perceptual = self._build_perceptual()

        self.optimizer_g, self.optimizer_d = self._build_optimizers()
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[c.run.amp]
        self.scaler = torch.amp.GradScaler(self.device.type) if c.run.amp == "fp16" else None

        self.dataset = build_dataset(c.data, device=self.device)
        self.sampler = ResumableSampler(
            len(self.dataset), c.data.batch_size, seed=c.seed, rank=self.dist.rank, world_size=self.dist.world_size
        )
        if c.run.bn_recalibration and self.sampler.per_rank < 2:
            raise ConfigError(
                f"run.bn_recalibration needs at least 2 images per batch and rank (BatchNorm statistics), "
                f"got {self.sampler.per_rank} (data.batch_size {c.data.batch_size} over {self.dist.world_size} ranks)"
            )
        self.total_steps = self._total_steps()
        per_epoch = self.sampler.batches_per_epoch
        self.scheduler_g = build_scheduler(self.optimizer_g, c.optim.generator_schedule, self.total_steps, per_epoch)
        self.scheduler_d = (
            build_scheduler(self.optimizer_d, c.optim.critic_schedule, self.total_steps, per_epoch)
            if self.optimizer_d is not None
            else None
        )

        self.step = 0
        self.skipped = 0
        self._reported_skips = set()
        self._stop_requested = False
        seed_everything(c.seed * 1000003 + self.dist.rank)  # per-rank noise streams from here on
        if resume is True:
            self.load_checkpoint(*self.run_folder.load_newest())
        elif resume:
            path = os.fspath(resume)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"nothing to resume: no checkpoint at {path}")
            self.load_checkpoint(path)
        else:
            self.run_folder.check_fresh()

    # ------------------------------------------------------------------ construction helpers

    def _build_perceptual(self) -> dict:
        c = self.config.loss
        modules = {}
        if self.weights.dists > 0:
            modules["dists"] = DISTS(
                vgg_weights=c.vgg_weights, dists_weights=c.dists_weights, pretrained=c.pretrained, download=c.download
            )
        if self.weights.lpips > 0:
            modules["lpips"] = LPIPS(
                vgg_weights=c.vgg_weights, lpips_weights=c.lpips_weights, pretrained=c.pretrained, download=c.download
            )
        if modules and not c.pretrained:
            log.warning("loss.pretrained is false: DISTS/LPIPS use random VGG16 weights (smoke test only)")
        return {name: m.to(self.device).eval() for name, m in modules.items()}

    def generator_side_parameters(self) -> list:
        """The parameters the generator-side optimiser trains (encoders, generator, compressors)."""
        return [p for group in self.optimizer_g.param_groups for p in group["params"]]

    def _build_optimizers(self):
        o, m = self.config.optim, self.model
        groups = [
            ("global_encoder", m.global_encoder.encoder_q, o.lr_global_encoder),
            ("local_encoder", m.local_encoder, o.lr_local_encoder),
            ("generator", m.generator, o.lr_generator),
            ("global_compressor", m.global_compressor, o.lr_global_compressor),
            ("local_compressor", m.local_compressor, o.lr_local_compressor),
        ]
        param_groups = [{"params": list(module.parameters()), "lr": lr, "name": name} for name, module, lr in groups]
        if o.lr_quantiles > 0:  # the quantiles only follow the auxiliary loss: their own rate lets it converge
            quantiles = [
                p
                for module in (m.global_compressor, m.local_compressor)
                for name, p in module.named_parameters()
                if name.endswith("quantiles")
            ]
            ids = {id(p) for p in quantiles}
            for group in param_groups:
                if group["name"] in ("global_compressor", "local_compressor"):
                    group["params"] = [p for p in group["params"] if id(p) not in ids]
            param_groups.append({"params": quantiles, "lr": o.lr_quantiles, "name": "quantiles"})
        if o.lr_identity_gate > 0 and m.generator.gate is not None:  # a gate starting open moves at its own rate
            gate = [p for p in param_groups if p["name"] == "generator"][0]
            ids = {id(p) for p in m.generator.gate.parameters()}
            gate["params"] = [p for p in gate["params"] if id(p) not in ids]
            param_groups.append(
                {"params": list(m.generator.gate.parameters()), "lr": o.lr_identity_gate, "name": "identity_gate"}
            )
        optimizer_g = torch.optim.Adam(param_groups, betas=tuple(o.betas), eps=o.eps)
        optimizer_d = None
        if self.critic is not None:
            optimizer_d = torch.optim.Adam(
                [{"params": list(self.critic.parameters()), "name": "critic"}],
                lr=o.lr_critic,
                betas=tuple(o.betas),
                eps=o.eps,
            )
        return optimizer_g, optimizer_d

    def _total_steps(self) -> int:
        r = self.config.run
        limits = [r.max_steps] if r.max_steps else []
        if r.epochs:
            limits.append(r.epochs * self.sampler.batches_per_epoch)
        return min(limits)

    # ------------------------------------------------------------------ one iteration

    def _autocast(self, enabled: bool = True):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled and self.amp_dtype is not None)

    def _to_device(self, batch: dict) -> tuple:
        """uint8 batch -> float (x, y, y_key) in [0, 1] on the device (degraded here for degrade_on=device),
        ``noise_free`` and ``op_free`` bool [B] (synthesised pairs without noise / without any op; None for
        real pairs)."""
        if "window" in batch:
            windows = batch["window"].to(self.device, non_blocking=True)
            x, y, y_key, noise_free, op_free = make_triples(
                windows,
                batch["positions"],
                self.config.data.crop_size,
                self.config.data.degrade,
                batch_generator(batch["degrade_seed"], self.device),
            )
        else:
            x, y, y_key = (batch[k].to(self.device, non_blocking=True) for k in ("x", "y", "y_key"))
            noise_free, op_free = (batch[k].to(self.device) if k in batch else None for k in ("noise_free", "op_free"))
        fmt = torch.channels_last if self.config.run.channels_last else torch.contiguous_format
        images = tuple(t.float().div_(255.0).contiguous(memory_format=fmt) for t in (x, y, y_key))
        return (*images, noise_free, op_free)

    def _critic_input(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Critic input in the model's [-1, 1] domain: the image, or (x, image) for a 6-channel critic."""
        return torch.cat((x, image), dim=1) if self.critic.in_channels == 6 else image

    def generator_terms(
        self,
        x01: torch.Tensor,
        y01: torch.Tensor,
        yk01: torch.Tensor,
        noise_free: Optional[torch.Tensor] = None,
        op_free: Optional[torch.Tensor] = None,
    ) -> tuple[dict, dict]:
        """Loss terms (unweighted scalars) of the generator side and the tensors the rest of the step needs.

        ``noise_free`` bool [B] marks the pairs whose y is a function of x (``l1_noise_free`` needs it),
        ``op_free`` bool [B] those whose plan drew no op (``gate_clean`` needs it)."""
        m, w = self.model, self.weights
        x, y, y_key = x01 * 2 - 1, y01 * 2 - 1, yk01 * 2 - 1
        moco = m.global_encoder
        query_from, key_from = self._global_code_inputs(y, y_key)
        with self._autocast():
            q = moco.encoder_q(query_from)
            e_l = m.local_encoder(y)
        moco.momentum_update()
        with self._autocast():
            keys = moco.keys(key_from)
        logits = moco.logits(q, keys)
        straight = self.config.loss.global_code_quantization == "straight_through"
        e_g_hat, _, bits_g = m.global_compressor(q.float(), straight_through=straight)
        e_l_hat, _, bits_l = m.local_compressor(e_l.float())
        with self._autocast():
            y_hat = self.generator_fn(x, e_g_hat, e_l_hat)
            y_hat_2 = self.generator_fn(x, e_g_hat, e_l_hat) if w.diversity > 0 else None
        extra = {}
        if self.config.loss.cross_leakage > 0:  # y's codes on the clean crop of another item: y's content must not show
            other = x01.roll(1, dims=0)
            with self._autocast():
                y_cross = self.generator_fn(other * 2 - 1, e_g_hat, e_l_hat)
            extra["cross_leakage"] = leakage_loss((y_cross.float() + 1) / 2, other, x01)
        y_hat01 = (y_hat.float() + 1) / 2
        terms = {
            "aux": entropy_aux_loss(m.global_compressor, m.local_compressor),
            "contrastive": info_nce_loss(logits),
            "bits_global": bits_g.mean(),
            "bits_local": bits_l.mean(),
        }
        if w.l1 > 0:
            terms["l1"] = l1_loss(y_hat01, y01)
        if w.l1_noise_free > 0:
            noise_free = _plan_flag(noise_free, "l1_noise_free", "are noise-free")
            per_image = l1_loss(y_hat01, y01, reduction="none")
            terms["l1_noise_free"] = (per_image * noise_free.to(per_image.dtype)).mean()
        if w.gate_clean > 0:
            op_free = _plan_flag(op_free, "gate_clean", "drew no op")
            logits = m.generator.gate.logits(e_g_hat).float()
            terms["gate_clean"] = F.binary_cross_entropy_with_logits(logits, (~op_free).to(logits.dtype))
        if w.lowpass_l1 > 0:
            terms["lowpass_l1"] = lowpass_l1_loss(y_hat01, y01, sigma=w.lowpass_sigma)
        if w.spectrum > 0:
            terms["spectrum"] = spectrum_loss(y_hat01, y01, pool=w.spectrum_pool, weighting=w.spectrum_weighting)
        if w.spectrum_relative > 0:
            terms["spectrum_relative"] = relative_spectrum_loss(
                y_hat01, y01, x01, margin=w.spectrum_margin, pool=w.spectrum_pool, weighting=w.spectrum_weighting
            )
        if w.transfer > 0:
            terms["transfer"] = transfer_loss(
                y_hat01, y01, x01, pool=w.spectrum_pool or 4, weighting=w.spectrum_weighting
            )
        if w.color > 0:
            terms["color"] = color_loss(y01, y_hat01)
        if y_hat_2 is not None:
            terms["diversity"] = diversity_loss(y_hat01, (y_hat_2.float() + 1) / 2)
        with self._autocast():
            for name, module in self.perceptual.items():
                terms[name] = module(y_hat01, y01)
            if w.gan_generator > 0:
                terms["gan_generator"] = wgan_generator_loss(
                    self.critic, self._critic_input(x, y_hat), alpha=w.critic_alpha
                )
        return terms, {"keys": keys, "x": x, "y": y, "y_hat": y_hat.detach().float(), **extra}

    def _optimizer_step(
        self, optimizer, params: list, loss: torch.Tensor, clip: float, scaler: Optional[torch.amp.GradScaler]
    ) -> Optional[torch.Tensor]:
        """Backward, gradient averaging over ranks, clipping at ``clip`` (0: off), step. Returns the
        gradient norm before clipping when clipping is on (logged), else None."""
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        dist_utils.average_gradients(params)
        norm = None
        if clip:
            if scaler is not None:
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, clip).detach()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return norm

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.config.run.ema_decay
        ema_params, params = list(self.ema.parameters()), list(self.model.generator.parameters())
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for b_ema, b in zip(self.ema.buffers(), self.model.generator.buffers()):
            b_ema.copy_(b)

    def train_step(
        self,
        x01: torch.Tensor,
        y01: torch.Tensor,
        yk01: torch.Tensor,
        noise_free: Optional[torch.Tensor] = None,
        op_free: Optional[torch.Tensor] = None,
    ) -> tuple[dict, dict]:
        """One generator step and one critic step; returns (logged scalars as tensors, tensors for images)."""
        o = self.config.optim
        if self.critic is not None:
            self.critic.requires_grad_(False)
        terms, extra = self.generator_terms(x01, y01, yk01, noise_free, op_free)
        loss = self.weights.weighted_sum(terms)
        if "cross_leakage" in extra:
            loss = loss + self.config.loss.cross_leakage * extra["cross_leakage"]
        grad_norm = self._optimizer_step(
            self.optimizer_g, self.generator_side_parameters(), loss, o.grad_clip, self.scaler
        )
        if self.ema is not None:
            self._update_ema()
        self.model.global_encoder.enqueue(dist_utils.gather_rows(extra["keys"]))
        dist_utils.average_batchnorm_stats(self.model)
        logged = {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
        if "cross_leakage" in extra:
            logged["cross_leakage"] = extra["cross_leakage"].detach()
        if grad_norm is not None:
            logged["grad_norm"] = grad_norm  # before clipping
        if self.critic is not None:
            self.critic.requires_grad_(True)
            real = self._critic_input(extra["x"], extra["y"])
            fake = self._critic_input(extra["x"], extra["y_hat"])
            # fp16 gradient penalties underflow: with amp fp16 the critic step runs in fp32
            with self._autocast(enabled=self.amp_dtype == torch.bfloat16):
                critic = wgan_critic_loss(
                    self.critic, real, fake, alpha=self.weights.critic_alpha, gp_weight=self.weights.gradient_penalty
                )
            critic_norm = self._optimizer_step(
                self.optimizer_d, list(self.critic.parameters()), critic.total, o.critic_grad_clip, None
            )
            logged.update(critic_loss=critic.total.detach(), wasserstein=critic.wasserstein, gp=critic.gp)
            if critic_norm is not None:
                logged["critic_grad_norm"] = critic_norm
        return logged, extra

    # ------------------------------------------------------------------ the loop

    def _loader(self) -> DataLoader:
        c = self.config.data
        return DataLoader(
            self.dataset,
            batch_size=self.sampler.per_rank,
            sampler=self.sampler,
            num_workers=c.workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def _request_stop(self, signum, frame) -> None:
        log.warning("signal %d: stopping after this step (a checkpoint will be written)", signum)
        self._stop_requested = True

    def _stop_agreed(self) -> bool:
        """Whether to stop now. Under DDP the ranks agree at logged steps only (a collective forces a
        host-device sync), so a signal stops every rank at the same step."""
        if not self.dist.enabled:
            return self._stop_requested
        if self.step % self.config.log.log_every:
            return False
        return dist_utils.sum_scalar(float(self._stop_requested), self.device) > 0

    def run(self) -> dict:
        """Trains from the current step to the limit; returns a summary {step, epoch, losses, out_dir}.
        The main rank holds the output folder's lock meanwhile: a second run into it is refused."""
        if not self.dist.is_main:
            return self._run()
        os.makedirs(self.out_dir, exist_ok=True)
        with exclusive_output(self.out_dir):
            return self._run()

    def _run(self) -> dict:
        c = self.config
        main = self.dist.is_main
        if main:
            self.run_folder.remove_interrupted_writes()
            with open(os.path.join(self.out_dir, "config.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump(c.to_dict(), f, sort_keys=False)
        logger = RunLogger(self.out_dir, c.log, self.step) if main else None
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.sampler.set_position(self.step)
        per_epoch = self.sampler.batches_per_epoch
        sums: dict = {}
        window_start, window_steps, last = time.perf_counter(), 0, {}
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not (main and c.log.progress),
            dynamic_ncols=True,
            desc="train",
        )
        try:
            batches = iter(self._loader())
            while self.step < self.total_steps and not self._stop_agreed():
                batch = next(batches)
                self._report_skipped(batch["skipped"])
                x, y, y_key, noise_free, op_free = self._to_device(batch)
                logged, extra = self.train_step(x, y, y_key, noise_free, op_free)
                self.step += 1
                self._advance_schedulers(per_epoch)
                for k, v in logged.items():
                    sums[k] = sums.get(k, 0.0) + v
                window_steps += 1
                bar.update(1)
                if self.step % c.log.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - window_start
                    last = {k: float(v) / window_steps for k, v in sums.items()}
                    rate = window_steps * c.data.batch_size / elapsed
                    if logger is not None:
                        logger.row(self.step, self.step / per_epoch, last, self.lr(), rate, self.skipped)
                        bar.set_postfix(loss=f"{last['loss']:.4g}", img_s=f"{rate:.1f}")
                    sums, window_start, window_steps = {}, time.perf_counter(), 0
                if logger is not None and c.log.image_every and self.step % c.log.image_every == 0:
                    logger.image_grid(self.step, x, y, (extra["y_hat"] + 1) / 2, c.log.image_count)
                if c.log.save_every and self.step % c.log.save_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
            self.save_checkpoint()
            if main and self.step >= self.total_steps:
                self.export_weights(self._recalibrated_model(batches))
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
            if logger is not None:
                logger.close()
        return {
            "step": self.step,
            "epoch": self.step / per_epoch,
            "losses": last,
            "out_dir": self.out_dir,
            "skipped": self.skipped,
            "finished": self.step >= self.total_steps,
        }

    def _advance_schedulers(self, per_epoch: int) -> None:
        """Advances each scheduler at its interval (every step, or when an epoch completes)."""
        o = self.config.optim
        for scheduler, schedule in ((self.scheduler_g, o.generator_schedule), (self.scheduler_d, o.critic_schedule)):
            if scheduler is not None and (schedule.interval == "step" or self.step % per_epoch == 0):
                scheduler.step()

    def lr(self) -> dict:
        """The current learning rates of the generator and the critic (logged)."""
        out = {"lr_generator": param_group(self.optimizer_g, "generator")["lr"]}
        if self.optimizer_d is not None:
            out["lr_critic"] = param_group(self.optimizer_d, "critic")["lr"]
        return out

    def _report_skipped(self, skipped: list) -> None:
        """Counts every skip (``skipped`` in log.csv and the summary); warns once per entry."""
        for entry in skipped:
            if entry not in self._reported_skips:
                self._reported_skips.add(entry)
                log.warning("skipped unusable training file %s (not reported again)", entry)
        self.skipped += len(skipped)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue on the same trajectory (this rank's RNG included)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "step": self.step,
            "skipped": self.skipped,
            "sampler": self.sampler.state_dict(),
            "model": self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": None if self.optimizer_d is None else self.optimizer_d.state_dict(),
            "scheduler_g": self.scheduler_g.state_dict(),
            "scheduler_d": None if self.scheduler_d is None else self.scheduler_d.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def save_checkpoint(self) -> Optional[str]:
        """Writes checkpoints/step_<n>.pt and latest.pt atomically (rank 0; every rank's RNG state inside)."""
        self.sampler.set_position(self.step)
        rng = dist_utils.all_gather_objects(rng_state())
        if not self.dist.is_main:
            return None
        state = self.state_dict()
        state["rng"] = rng
        return self.run_folder.save(state, self.step, self.config.log.keep_checkpoints)

    def load_checkpoint(self, path: str, state: Optional[dict] = None) -> None:
        """Restores everything from the training checkpoint at ``path`` (``state``: its already loaded contents)."""
        state = ckpt.load_file(path) if state is None else state
        check_training_checkpoint(state, path)
        check_resumed_config(state["config"], self.config, path)
        ckpt.check_and_load(self.model, state["model"], path)
        if (self.ema is None) != (state["ema"] is None):
            raise ckpt.CheckpointError(
                f"{path}: run.ema_decay was {'off' if state['ema'] is None else 'on'} "
                f"in the checkpoint and is {'off' if self.ema is None else 'on'} now"
            )
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        load_optimizer(self.optimizer_g, state["optimizer_g"], path)
        if self.optimizer_d is not None:
            load_optimizer(self.optimizer_d, state["optimizer_d"], path)
        load_scheduler(self.scheduler_g, state["scheduler_g"])
        if self.scheduler_d is not None:
            load_scheduler(self.scheduler_d, state["scheduler_d"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.skipped = state["step"], state["skipped"]
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            set_rng_state(rng[self.dist.rank])
        else:
            log.warning(
                "the checkpoint has %d ranks, this run %d: the random streams restart (the data order is kept)",
                len(rng),
                self.dist.world_size,
            )
            seed_everything(self.config.seed * 1000003 + self.dist.rank + 7919 * self.step)
        log.info("resumed from %s at step %d", path, self.step)

    def _global_code_inputs(self, y: torch.Tensor, y_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the crop the global encoder codes for the generator, the MoCo key's crop). With
        ``loss.global_code_from: y_key`` the code comes from the other crop and the key from y, so e_g
        cannot carry content of the crop it reconstructs."""
        return (y_key, y) if self.config.loss.global_code_from == "y_key" else (y, y_key)

    def _recalibrated_model(self, batches) -> Optional[UDM]:
        """With ``run.bn_recalibration`` N > 0: a copy of the model whose encoder BatchNorm statistics are
        re-estimated on the next N training batches (``train.batchnorm``); else None."""
        count = self.config.run.bn_recalibration
        if not count:
            return None
        model = copy.deepcopy(self.model)

        def inputs():
            for _ in range(count):
                _, y, y_key, *_ = self._to_device(next(batches))
                yield self._global_code_inputs(y, y_key)[0], y

        used = recalibrate_encoders(model, inputs())
        log.info("encoder BatchNorm statistics re-estimated on %d batches", used)
        return model

    def export_weights(self, model: Optional[UDM] = None) -> None:
        """model.pt (and model_ema.pt with EMA): the trained UDM (or ``model``, e.g. recalibrated) in
        udm_fast's model format."""
        extra = {"step": self.step}
        model = self.model if model is None else model
        model.save(os.path.join(self.out_dir, "model.pt"), extra=extra)
        if self.ema is not None:
            ema_model = copy.deepcopy(model)
            ema_model.generator.load_state_dict(self.ema.state_dict())
            ema_model.save(os.path.join(self.out_dir, "model_ema.pt"), extra=extra)
