"""``UDM``: the universal degradation model (encoders, compressors, generator, optional critic).

Public image domain: float tensors in [0, 1], NCHW.  Internally the sub-modules work in the
reference's [-1, 1] domain (and the generator keeps its 2x - 1 quirk) for checkpoint parity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..entropy import degradation_code
from ..layers import set_layer_backend
from ..ops.operands import autocast_dtype
from ..utils.checks import check_image_batch
from ..utils.dataclass_dict import checked_fields
from . import checkpoint as ckpt
from .compressors import Compressor
from .discriminator import Discriminator
from .encoders import LPE, LPEL, MoCo
from .generator import Generator, Noise, NoiseStream
from .inference import synthesis_precision

FORMAT_NAME = "udm_fast"
FORMAT_VERSION = 1


@dataclasses.dataclass
class UDMConfig:
    """Sizes of a UDM. Defaults are the reference model (docs/architecture.md §3-§9)."""

    filters: int = 64  # generator width K1 (K2 = 2 K1, K3 = 4 K1)
    local_channels: int = 4  # c_l, channels of e_l
    cond_dim: int = 8  # condition map channels (proj_dim_noise)
    global_dim: int = 256  # channels of e_g
    encoder_dim: int = 256  # LPE / LPEL internal width
    encoder_kernel: int = 3  # LPE first-kernel size (moco_enc_kernel)
    head_layers: int = 2  # residual MLP blocks before the global entropy bottleneck
    tail_layers: int = 2  # ... and after it
    queue_size: int = 120  # MoCo negatives K
    moco_momentum: float = 0.999
    moco_temperature: float = 0.07
    discriminator: bool = False  # build the WGAN-GP critic
    disc_channels: int = 3  # 3 = plain strategy, 6 = conditioned
    disc_ndf: int = 64
    disc_in_width: int = 128  # training patch width (selects the first convs' strides)
    residual_output: bool = False  # ŷ = x + generator output (in [-1, 1]); the reference has no such skip [ours]
    identity_gate: bool = False  # ŷ = x + g(e_g) (generator output - x), g in (0, 1) per image (IdentityGate) [ours]

    @classmethod
    def from_dict(cls, values: dict) -> "UDMConfig":
        """Builds a config from a mapping; an unknown key is an error."""
        return cls(**checked_fields(cls, values))


def _check_images(name: str, t: torch.Tensor, model_dtype: torch.dtype) -> None:
    """Image batch checks: [B, 3, H, W], the model's dtype (autocast aside), finite values in [0, 1]
    (up to 0.5 beyond is let through, e.g. for overshooting synthesised images)."""
    check_image_batch(t, name)
    if t.dtype != model_dtype and autocast_dtype(t.device.type) is None:
        raise TypeError(
            f"{name} has dtype {t.dtype} but the model's weights are {model_dtype}: convert one "
            f"(e.g. {name}.to({model_dtype})) or run under torch.autocast"
        )
    if not torch.compiler.is_compiling() and t.numel():
        lo, hi = torch.aminmax(t.detach())
        if not (lo >= -0.5 and hi <= 1.5):  # also catches NaN
            raise ValueError(f"{name} must hold finite values in [0, 1], found [{lo.item():.3g}, {hi.item():.3g}]")


def _pad_to_multiple(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pads bottom/right so H and W are multiples of ``multiple`` (replicate when too small to reflect)."""
    h, w = t.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return t
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(t, (0, pw, 0, ph), mode=mode)


def _resize_window(
    m: torch.Tensor, out_h: int, out_w: int, rows: slice, cols: slice, extent: Optional[tuple[float, float]] = None
) -> torch.Tensor:
    """Window [rows, cols] of bilinear(align_corners=True) resize of m to out_h x out_w, computed directly.

    ``extent`` (h, w): the part of the output that m spans, when it is smaller than out_h x out_w
    (an image padded to a multiple of 8: the condition must follow the image, not the padding);
    beyond it m's border repeats. Default: the whole output."""
    extent = (out_h, out_w) if extent is None else extent

    def axis(n_in: int, span: float, sl: slice):
        idx = torch.arange(sl.start, sl.stop, device=m.device, dtype=torch.float64)
        src = idx.clamp(max=span - 1) * ((n_in - 1) / (span - 1)) if span > 1 else torch.zeros_like(idx)
        i0 = src.floor().long().clamp_(0, n_in - 1)
        i1 = (i0 + 1).clamp_(max=n_in - 1)
        return i0, i1, (src - i0).to(m.dtype)

    r0, r1, wr = axis(m.shape[-2], extent[0], rows)
    c0, c1, wc = axis(m.shape[-1], extent[1], cols)
    top = m[..., r0, :] * (1 - wr)[:, None] + m[..., r1, :] * wr[:, None]
    return top[..., c0] * (1 - wc) + top[..., c1] * wc


GLOBAL_CODES = ("rounded", "continuous")  # UDM.global_code


class UDM(nn.Module):
    """Universal degradation model.

    Sub-modules: ``global_encoder`` (MoCo around the LPE), ``local_encoder`` (LPEL),
    ``global_compressor``, ``local_compressor``, ``generator`` and optionally ``discriminator``.

    Large images run tiled (eval mode) with ``tile_size`` x ``tile_size`` tiles plus a halo of
    ``encoder_halo`` (exact for the encoders) and ``generator_halo`` pixels (overlap-discard for the
    generator); set ``tile_size=None`` to disable tiling.
    """

    def __init__(self, config: Optional[UDMConfig] = None, **overrides: Any):
        super().__init__()
        config = dataclasses.replace(config or UDMConfig(), **overrides)
        self.config = config
        c = config
        self.global_encoder = MoCo(
            LPE(c.encoder_dim, c.global_dim, c.encoder_kernel),
            LPE(c.encoder_dim, c.global_dim, c.encoder_kernel),
            dim=c.global_dim,
            K=c.queue_size,
            m=c.moco_momentum,
            T=c.moco_temperature,
        )
        self.local_encoder = LPEL(c.encoder_dim, c.local_channels, 3)
        self.global_compressor = Compressor(c.global_dim, c.head_layers, c.tail_layers)
        self.local_compressor = Compressor(c.local_channels)
        self.generator = Generator(
            c.filters, c.cond_dim, c.local_channels, c.global_dim, c.residual_output, c.identity_gate
        )
        self.discriminator = Discriminator(c.disc_channels, c.disc_ndf, c.disc_in_width) if c.discriminator else None
        self.tile_size: Optional[int] = 512
        # CPU inference precision of synthesize: auto / fp32 / bf16 (udm_fast/models/inference.py)
        self.precision = os.environ.get("UDM_FAST_PRECISION", "auto")
        # e_g at eval-mode encode: "rounded" (compressai's inference, what a .udm file holds) or "continuous"
        # (the latent left unrounded, as the generator saw it in training under noise; bench/RESULTS.md session 8)
        self.global_code = "rounded"
        self.encoder_halo = 16
        self.generator_halo = 64

    # ------------------------------------------------------------------ public API (images in [0, 1])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (inputs must have it, outside autocast)."""
        return next(self.generator.parameters()).dtype

    def encode(self, y: torch.Tensor, quantize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Degradation codes of y [B, 3, H, W] in [0, 1]: (e_g [B, global_dim], e_l [B, c_l, ceil(H/2), ceil(W/2)]).

        quantize=True passes the codes through the compressors (rounding in eval mode, uniform noise in
        training mode, as compressai does; with ``global_code = "continuous"`` e_g's latent is not rounded in
        eval mode, so it differs from the code a ``.udm`` file holds); quantize=False returns the raw encoder
        outputs. In training mode the encoders' BatchNorm layers also use and update batch statistics: call
        ``eval()`` first to code images (``UDM(...)`` starts in training mode; ``load`` and ``from_official``
        return eval).
        """
        _check_images("y", y, self.dtype)
        if self.global_code not in GLOBAL_CODES:
            raise ValueError(f"global_code must be one of {GLOBAL_CODES}, got {self.global_code!r}")
        if min(y.shape[-2:]) < 4:
            raise ValueError(f"y must be at least 4x4 pixels, got {y.shape[-2]}x{y.shape[-1]}")
        y_int = _pad_to_multiple(y * 2 - 1, 2)
        if self._tiled(y_int):
            e_g, e_l = self._encode_tiled(y_int)
        else:
            e_g, e_l = self.global_encoder.encoder_q(y_int), self.local_encoder(y_int)
        if quantize:
            bottleneck = self.training or self.global_code == "rounded"  # noise in training, rounding in eval
            e_g = self.global_compressor(e_g)[0] if bottleneck else self.global_compressor.continuous(e_g)
            e_l = self.local_compressor(e_l)[0]
        return e_g, e_l

    def synthesize(self, x: torch.Tensor, e_g: torch.Tensor, e_l: torch.Tensor, noise: Noise = None) -> torch.Tensor:
        """Re-applies the degradation (e_g, e_l) to clean x [B, 3, H, W] in [0, 1]; returns ŷ [B, 3, H, W].

        ŷ is not clamped (clamp when writing images). ``noise``: None, a torch.Generator, or the list of
        32 per-SFT-layer maps with the shapes ``noise_shapes(B, H, W)`` gives. On the CPU the computation
        follows ``self.precision`` (udm_fast/models/inference.py); ŷ keeps the model's dtype under it.
        """
        _check_images("x", x, self.dtype)
        inference = not (self.training or torch.is_grad_enabled())  # gradients (restoration, training) as called
        with synthesis_precision(self.precision, x, self.generator, self.dtype, not inference) as (x, autocast):
            out = self._synthesize_as_called(x, e_g, e_l, noise)
        return out if autocast is None else out.to(self.dtype)

    def _synthesize_as_called(
        self, x: torch.Tensor, e_g: torch.Tensor, e_l: torch.Tensor, noise: Noise
    ) -> torch.Tensor:
        h, w = x.shape[-2:]
        x_int = _pad_to_multiple(x * 2 - 1, 8)
        if self._tiled(x_int):
            out = self._synthesize_tiled(x_int, e_g, e_l, noise, (h, w))
        elif x_int.shape[-2:] != x.shape[-2:]:  # padded: the condition spans the image, not the padding
            mapped = self._mapped_condition(e_g, e_l, x.shape[0])
            hp, wp = x_int.shape[-2:]

            def cond_at(hh: int, ww: int) -> torch.Tensor:
                return _resize_window(mapped, hh, ww, slice(0, hh), slice(0, ww), (h * hh / hp, w * ww / wp))

            out = self.generator.gated(self.generator.net(x_int, None, noise, cond_at=cond_at), x_int, e_g)
        else:
            out = self.generator(x_int, e_g, e_l, noise)
        return (out[..., :h, :w] + 1) / 2

    def transfer(self, x: torch.Tensor, y: torch.Tensor, noise: Noise = None) -> torch.Tensor:
        """Applies the degradation of y to the clean image x (sizes may differ): ŷ [B, 3, H_x, W_x] in [0, 1]."""
        e_g, e_l = self.encode(y)
        if e_g.shape[0] != x.shape[0]:
            raise ValueError(f"x has batch {x.shape[0]} but y has batch {e_g.shape[0]}")
        return self.synthesize(x, e_g, e_l, noise)

    forward = transfer

    def update_entropy_tables(self, force: bool = False) -> "UDM":
        """Builds the compressors' quantized CDF tables (when missing, or always with ``force``)."""
        for compressor in (self.global_compressor, self.local_compressor):
            compressor.model.update(force=force)
        return self

    def compress_degradation(self, y: torch.Tensor) -> bytes:
        """The degradation codes of y [B, 3, H, W] in [0, 1] as bytes (the ``.udm`` format)."""
        return degradation_code.compress(self, y)

    def decompress_degradation(self, data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        """(e_g, e_l) from ``compress_degradation`` bytes; equal to ``encode(y)`` in eval mode with the rounded
        global code."""
        return degradation_code.decompress(self, data)

    def noise_shapes(self, batch: int, height: int, width: int) -> list:
        """Shapes of the 32 explicit noise maps for a clean image of height x width (after padding to 8)."""
        return self.generator.net.noise_shapes(batch, height + (-height) % 8, width + (-width) % 8)

    def set_backend(self, name: Optional[str]) -> "UDM":
        """Sets the backend (reference / cuda / triton / auto or None) of every IDA and SFT layer."""
        set_layer_backend(self, name)
        return self

    def weights_hash(self) -> str:
        """SHA-256 over the inference weights (encoders, compressors, generator): the model identity.

        The coder tables are left out: ``update_entropy_tables`` derives them from the weights.
        """
        prefixes = (
            "global_encoder.encoder_q.",
            "local_encoder.",
            "global_compressor.",
            "local_compressor.",
            "generator.",
        )
        digest = hashlib.sha256()
        for key, value in sorted(self.state_dict().items()):
            if key.startswith(prefixes) and key.rsplit(".", 1)[-1] not in ckpt.DYNAMIC_BUFFERS:
                digest.update(key.encode())
                digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # ------------------------------------------------------------------ tiling

    def _tiled(self, t: torch.Tensor) -> bool:
        if self.tile_size is not None and (not isinstance(self.tile_size, int) or self.tile_size <= 0):
            raise ValueError(f"tile_size must be None (no tiling) or a positive multiple of 8, got {self.tile_size!r}")
        return (
            self.tile_size is not None
            and not self.training
            and max(t.shape[-2:]) > self.tile_size + 2 * self.generator_halo
        )

    def _windows(self, h: int, w: int, halo: int):
        """(rows, cols, crop_rows, crop_cols) for every tile: the tile and its crop with halo."""
        for a in range(0, h, self.tile_size):
            for c in range(0, w, self.tile_size):
                rows, cols = slice(a, min(a + self.tile_size, h)), slice(c, min(c + self.tile_size, w))
                crop_r = slice(max(0, rows.start - halo), min(h, rows.stop + halo))
                crop_c = slice(max(0, cols.start - halo), min(w, cols.stop + halo))
                yield rows, cols, crop_r, crop_c

    def _encode_tiled(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact tiled encoding (eval mode; H, W even): per-tile branch maps keep only outputs centred in the tile."""
        if self.tile_size % 2 or self.encoder_halo % 2 or self.config.encoder_kernel != 3:
            raise ValueError("tiled encoding needs an even tile_size and encoder_halo and encoder_kernel=3")
        lpe = self.global_encoder.encoder_q
        b, _, h, w = y.shape
        sum_p = sum_l = 0
        e_l = y.new_empty(b, self.config.local_channels, h // 2, w // 2)
        for rows, cols, cr, cc in self._windows(h, w, self.encoder_halo):
            crop = y[..., cr, cc]
            fp, fl = lpe.features(crop)
            # p-branch: valid 3x3 first conv -> local output t is centred on input cr.start + t + 1
            pr = slice(max(rows.start, cr.start + 1) - cr.start - 1, min(rows.stop, cr.stop - 1) - cr.start - 1)
            pc = slice(max(cols.start, cc.start + 1) - cc.start - 1, min(cols.stop, cc.stop - 1) - cc.start - 1)
            sum_p = sum_p + fp[..., pr, pc].sum(dim=(2, 3))
            # half-resolution maps: local t is global cr.start / 2 + t
            hr = slice((rows.start - cr.start) // 2, (rows.stop - cr.start) // 2)
            hc = slice((cols.start - cc.start) // 2, (cols.stop - cc.start) // 2)
            sum_l = sum_l + fl[..., hr, hc].sum(dim=(2, 3))
            e_l[..., rows.start // 2 : rows.stop // 2, cols.start // 2 : cols.stop // 2] = self.local_encoder(crop)[
                ..., hr, hc
            ]
        pooled = torch.cat((sum_p / ((h - 2) * (w - 2)), sum_l / ((h // 2) * (w // 2))), dim=1)
        return lpe.head(pooled), e_l

    def _mapped_condition(self, e_g: torch.Tensor, e_l: torch.Tensor, batch: int) -> torch.Tensor:
        """The generator's condition map at e_l's resolution, before its resampling to each level."""
        gen = self.generator
        mapped = gen.net.map_head(gen.condition(e_g, e_l))
        if mapped.shape[0] != batch:
            raise ValueError(f"x has batch {batch} but the codes have batch {mapped.shape[0]}")
        return mapped

    def _synthesize_tiled(
        self, x: torch.Tensor, e_g: torch.Tensor, e_l: torch.Tensor, noise: Noise, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Generator over tiles with halo (overlap-discard) on x padded from ``image_size``; the condition
        is resampled for the whole image."""
        if self.tile_size % 8 or self.generator_halo % 8:
            raise ValueError("tiled synthesis needs tile_size and generator_halo to be multiples of 8")
        gen = self.generator
        mapped = self._mapped_condition(e_g, e_l, x.shape[0])
        h, w = x.shape[-2:]
        out = x.new_empty(x.shape)
        for rows, cols, cr, cc in self._windows(h, w, self.generator_halo):
            crop = x[..., cr, cc]

            def cond_at(hh: int, ww: int, cr=cr, cc=cc, crop=crop) -> torch.Tensor:
                s = crop.shape[-2] // hh
                return _resize_window(
                    mapped,
                    h // s,
                    w // s,
                    slice(cr.start // s, cr.start // s + hh),
                    slice(cc.start // s, cc.start // s + ww),
                    (image_size[0] / s, image_size[1] / s),
                )

            stream = NoiseStream(noise, window=(cr.start, cc.start))
            tile_out = gen.net(crop, None, stream, cond_at=cond_at)
            out[..., rows, cols] = tile_out[
                ..., rows.start - cr.start : rows.stop - cr.start, cols.start - cc.start : cols.stop - cc.start
            ]
        return gen.gated(out, x, e_g)

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def from_official(cls, checkpoint: Any, **overrides: Any) -> "UDM":
        """Builds an eval-mode UDM from the authors' checkpoint (path or dict), sizes inferred from shapes."""
        parts = ckpt.official_parts(checkpoint)
        config = dataclasses.replace(infer_official_config(parts), **overrides)
        model = cls(config)
        model.load_official_parts(parts)
        return model.eval()

    def load_official_parts(self, parts: dict) -> None:
        """Loads normalised official sub-dicts; the MoCo key encoder starts as a copy of the query encoder."""
        ckpt.check_and_load(self.global_encoder.encoder_q, parts["netE"], "netE")
        self.global_encoder.encoder_k.load_state_dict(self.global_encoder.encoder_q.state_dict())
        ckpt.check_and_load(self.local_encoder, parts["netE_loc"], "netE_loc")
        ckpt.check_and_load(self.generator, parts["netG"], "netG")
        ckpt.check_and_load(self.global_compressor, parts["netCprs"], "netCprs")
        ckpt.check_and_load(self.local_compressor, parts["netCprs_loc"], "netCprs_loc")
        if "netP" in parts and self.discriminator is not None:
            ckpt.check_and_load(self.discriminator, parts["netP"], "netP")

    def official_state_dict(self) -> dict:
        """Our weights in the official layout {"model": {netE, netE_loc, netG, netCprs, netCprs_loc[, netP]}}."""
        parts = {
            "netE": self.global_encoder.encoder_q.state_dict(),
            "netE_loc": self.local_encoder.state_dict(),
            "netG": self.generator.state_dict(),
            "netCprs": self.global_compressor.state_dict(),
            "netCprs_loc": self.local_compressor.state_dict(),
        }
        if self.discriminator is not None:
            parts["netP"] = self.discriminator.state_dict()
        return {"model": parts}

    def save(self, path: str | os.PathLike, extra: Optional[dict] = None) -> None:
        """Writes {format, version, config, state_dict[, global_code][, extra]} atomically (``global_code``
        when not the default "rounded")."""
        payload = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": dataclasses.asdict(self.config),
            "state_dict": self.state_dict(),
        }
        if self.global_code != "rounded":
            payload["global_code"] = self.global_code
        if extra:
            payload["extra"] = extra
        ckpt.save_atomic(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: Any = "cpu") -> "UDM":
        """Loads a file written by ``save`` (eval mode). Official checkpoints: use ``from_official``."""
        return cls.from_saved(ckpt.load_file(path), os.fspath(path)).to(map_location)

    @staticmethod
    def is_saved(payload: Any) -> bool:
        """Whether ``payload`` (a loaded file) was written by ``save``."""
        return isinstance(payload, dict) and payload.get("format") == FORMAT_NAME

    @classmethod
    def from_saved(cls, payload: Any, where: str) -> "UDM":
        """The model (eval mode, CPU) from the loaded contents of a ``save`` file; ``where`` names it in errors."""
        if not cls.is_saved(payload):
            raise ckpt.CheckpointError(
                f"{where} is not a udm_fast model file (for the authors' checkpoints use UDM.from_official)"
            )
        if payload.get("version") != FORMAT_VERSION:
            raise ckpt.CheckpointError(
                f"{where} has format version {payload.get('version')}, this udm_fast reads version {FORMAT_VERSION}"
            )
        state = payload["state_dict"]
        dtypes = {t.dtype for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()}
        model = cls(UDMConfig.from_dict(payload["config"]))
        if len(dtypes) == 1:  # a model saved in float64 / half comes back so (and keeps its weights hash)
            model = model.to(dtypes.pop())
        ckpt.check_and_load(model, state, where)
        model.global_code = payload.get("global_code", "rounded")
        if model.global_code not in GLOBAL_CODES:
            raise ckpt.CheckpointError(f"{where}: global_code must be one of {GLOBAL_CODES}, got {model.global_code!r}")
        return model.eval()


def infer_official_config(parts: dict) -> UDMConfig:
    """UDMConfig whose shapes fit the official sub-dicts (generator width, c_l, dims, MLPs, critic)."""
    try:
        g, e, el, cp = parts["netG"], parts["netE"], parts["netE_loc"], parts["netCprs"]
        local_channels = el["last_mlp.2.weight"].shape[0]
        values = dict(
            filters=g["net.conv_first.conv2d.weight"].shape[0],
            cond_dim=g["conv.weight"].shape[0],
            local_channels=local_channels,
            global_dim=g["conv.weight"].shape[1] - local_channels,
            encoder_dim=e["last_mlp.0.weight"].shape[0],
            encoder_kernel=e["LPE_p.0.conv.weight"].shape[-1],
            head_layers=_count_layers(cp, "head.layers."),
            tail_layers=_count_layers(cp, "tail.layers."),
        )
        if "netP" in parts:
            p = parts["netP"]
            first = [p[f"main.{2 * i}.weight"].shape[-1] for i in range(3)]
            values.update(
                discriminator=True,
                disc_channels=p["main.0.weight"].shape[1],
                disc_ndf=p["main.0.weight"].shape[0],
                disc_in_width=next((w for k, w in zip(first, (128, 64, 32)) if k == 4), 16),
            )
    except KeyError as exc:
        raise ckpt.CheckpointError(f"official checkpoint lacks the key {exc} needed to infer the model sizes") from exc
    return UDMConfig(**values)


def _count_layers(state: dict, prefix: str) -> int:
    indices = {int(k[len(prefix) :].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0
