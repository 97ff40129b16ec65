"""Factorized-prior entropy bottleneck, a drop-in for compressai's ``EntropyBottleneck``.

Parameters, buffers and their names match compressai >= 1.2, so state dicts load in both
directions (the coder tables ``_quantized_cdf``/``_offset``/``_cdf_length`` are resized on
load). ``update()`` builds the quantized CDF tables with compressai's exact algorithm
(``pmf_to_quantized_cdf``), so the tables, and therefore the bitstreams, are identical.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import backend as _backend
from . import coder

CDF_PRECISION = 16  # bits of the quantized CDFs; the rANS coders are built for this value


class _LowerBoundFunction(torch.autograd.Function):
    """max(x, bound); the gradient passes where x >= bound or where it pushes x upwards."""

    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad_output):
        x, bound = ctx.saved_tensors
        passes = (x >= bound) | (grad_output < 0)
        return passes * grad_output, None


class LowerBound(nn.Module):
    """Lower bound with a straight-through gradient towards the bound (buffer ``bound`` [1])."""

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: Tensor) -> Tensor:
        return _LowerBoundFunction.apply(x, self.bound.to(x.dtype))


class _FusedLikelihood(torch.autograd.Function):
    """Likelihoods [C, N] from the Triton kernels (udm_fast.triton_kernels.entropy_likelihood)."""

    @staticmethod
    def forward(ctx, values, weights, biases, tanh_factors, bound):
        ctx.save_for_backward(values, weights, biases, tanh_factors, bound)
        return _likelihood_kernels().likelihood_forward(values, weights, biases, tanh_factors, bound)

    @staticmethod
    def backward(ctx, grad):
        values, weights, biases, tanh_factors, bound = ctx.saved_tensors
        grads = _likelihood_kernels().likelihood_backward(grad, values, weights, biases, tanh_factors, bound)
        return (*grads, None)


def _likelihood_kernels():
    from ..ops.triton_loader import kernels  # imports triton on first use only

    return kernels("entropy_likelihood")


def pmf_to_quantized_cdf(pmf: np.ndarray, precision: int = CDF_PRECISION) -> np.ndarray:
    """Quantizes one pmf (float32 [n], tail bin last) to an int32 CDF [n + 1] ending at 2**precision.

    Same result as compressai's C++ ``pmf_to_quantized_cdf``: round-half-away counts, rescale
    by the integer total, force the last entry to 2**precision, then give every zero-frequency
    bin one count stolen from the bin with the smallest frequency above one (lowest index wins).
    """
    pmf = np.asarray(pmf, dtype=np.float32)
    if pmf.ndim != 1 or pmf.size < 2:
        raise ValueError(f"pmf must be 1-D with at least 2 entries, got shape {pmf.shape}")
    if pmf.size > 1 << precision:
        raise ValueError(f"pmf has {pmf.size} bins; at most {1 << precision} fit {precision}-bit frequencies")
    if not np.all(np.isfinite(pmf)) or np.any(pmf < 0):
        raise ValueError("pmf has negative or non-finite entries")
    scale = 1 << precision
    scaled = pmf.astype(np.float64) * scale  # exact: float32 times a power of two
    counts = np.floor(scaled + 0.5).astype(np.uint64)  # half away from zero (values are >= 0)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("pmf sums to zero after quantization")
    freqs = (np.uint64(scale) * counts) // np.uint64(total)
    cdf = np.concatenate(([0], np.cumsum(freqs))).astype(np.int64)
    cdf[-1] = scale
    freqs = np.diff(cdf)
    for i in np.flatnonzero(freqs == 0):
        # A repair changes only bins i and the donor, so the zero set is known up front.
        candidates = np.where(freqs > 1, freqs, np.iinfo(np.int64).max)
        donor = int(np.argmin(candidates))  # exists: n <= 2**precision bins share 2**precision
        freqs[donor] -= 1
        freqs[i] = 1
    return np.concatenate(([0], np.cumsum(freqs))).astype(np.int32)


def _same_buffer(entry: tuple, buffer: Tensor) -> bool:
    """Whether ``buffer`` is unchanged since ``entry`` = (tensor, version, CPU contents or None) was taken."""
    tensor, version, contents = entry
    if tensor is not buffer or buffer._version != version:
        return False
    return contents is None or torch.equal(contents, buffer)


class EntropyBottleneck(nn.Module):
    """Entropy bottleneck (Balle et al. 2018) with compressai's parameters, defaults and tables.

    Args:
        channels: number of channels C.
        likelihood_bound: lower bound applied to the likelihoods (<= 0 disables it).
        entropy_coder: only ``None``/``"ans"`` (compressai's rANS bitstream) is supported.
        entropy_coder_precision: must be 16.
        tail_mass, init_scale, filters: as in compressai.
    """

    def __init__(
        self,
        channels: int,
        likelihood_bound: float = 1e-9,
        entropy_coder: str | None = None,
        entropy_coder_precision: int = CDF_PRECISION,
        *,
        tail_mass: float = 1e-9,
        init_scale: float = 10,
        filters: Tuple[int, ...] = (3, 3, 3, 3),
    ):
        super().__init__()
        if entropy_coder not in (None, "ans"):
            raise ValueError(f"entropy_coder {entropy_coder!r} is not supported (only 'ans')")
        if int(entropy_coder_precision) != CDF_PRECISION:
            raise ValueError(f"entropy_coder_precision must be {CDF_PRECISION}, got {entropy_coder_precision}")
        if int(channels) <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        self.entropy_coder = "ans"
        self.entropy_coder_precision = CDF_PRECISION
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.init_scale = float(init_scale)
        self.tail_mass = float(tail_mass)

        self.use_likelihood_bound = likelihood_bound > 0
        if self.use_likelihood_bound:
            self.likelihood_lower_bound = LowerBound(likelihood_bound)
        # Coder tables, filled by update() (or loaded from a state dict).
        self.register_buffer("_offset", torch.IntTensor())
        self.register_buffer("_quantized_cdf", torch.IntTensor())
        self.register_buffer("_cdf_length", torch.IntTensor())
        self._coder_cache = None  # ((buffer, version, CPU copy) per table buffer, CoderTables)

        widths = (1,) + self.filters + (1,)
        scale = self.init_scale ** (1 / (len(self.filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        # Same creation order as compressai, so the same RNG seed gives the same biases.
        for i in range(len(self.filters) + 1):
            matrix = torch.empty(self.channels, widths[i + 1], widths[i])
            matrix.fill_(float(np.log(np.expm1(1 / scale / widths[i + 1]))))
            self.matrices.append(nn.Parameter(matrix))
            bias = torch.empty(self.channels, widths[i + 1], 1)
            nn.init.uniform_(bias, -0.5, 0.5)
            self.biases.append(nn.Parameter(bias))
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(self.channels, widths[i + 1], 1)))

        self.quantiles = nn.Parameter(
            torch.tensor([-self.init_scale, 0.0, self.init_scale]).repeat(self.channels, 1, 1)
        )
        target = math.log(2 / self.tail_mass - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]))

    # -- coder tables ---------------------------------------------------------------------
    @property
    def offset(self) -> Tensor:
        return self._offset

    @property
    def quantized_cdf(self) -> Tensor:
        return self._quantized_cdf

    @property
    def cdf_length(self) -> Tensor:
        return self._cdf_length

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_coder_cache"] = None  # prepared native tables are rebuilt on demand
        return state

    def coder_tables(self) -> coder.CoderTables:
        """The coder tables of the current buffers, prepared once and cached until they change: same
        tensors at the same versions, and on the CPU the same contents too (edits through ``.data``
        or numpy leave no version trace; on a GPU comparing contents would synchronise every call,
        so there call ``update(force=True)`` or reassign the buffers after such edits)."""
        buffers = (self._quantized_cdf, self._cdf_length, self._offset)
        cache = self._coder_cache
        if cache is None or not all(_same_buffer(entry, b) for entry, b in zip(cache[0], buffers)):
            if self._offset.numel() == 0:
                raise ValueError("Uninitialized CDFs. Run update() first")
            entries = tuple((b, b._version, b.detach().clone() if not b.is_cuda else None) for b in buffers)
            cache = (entries, coder.CoderTables(*buffers))
            self._coder_cache = cache
        return cache[1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The table buffers have a data-dependent size: take the stored one.
        for name in ("_offset", "_quantized_cdf", "_cdf_length"):
            stored = state_dict.get(prefix + name)
            if isinstance(stored, Tensor):
                setattr(self, name, torch.empty_like(getattr(self, name)).resize_(stored.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- density model --------------------------------------------------------------------
    def _get_medians(self) -> Tensor:
        """Per-channel medians, [C, 1, 1]."""
        return self.quantiles[:, :, 1:2]

    def _logits_cumulative(self, inputs: Tensor, stop_gradient: bool) -> Tensor:
        """Logit of the cumulative density at ``inputs`` [C, 1, N] -> [C, 1, N]."""
        logits = inputs
        for i in range(len(self.filters) + 1):  # in the inputs' dtype (float32 for a half-precision module)
            matrix, bias = self.matrices[i].to(inputs.dtype), self.biases[i].to(inputs.dtype)
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.filters):
                factor = self.factors[i].to(inputs.dtype)
                factor = factor.detach() if stop_gradient else factor
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def _likelihood(self, inputs: Tensor, stop_gradient: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
        """(mass of [v - 1/2, v + 1/2], lower logits, upper logits) for ``inputs`` [C, 1, N]."""
        lower = self._logits_cumulative(inputs - 0.5, stop_gradient=stop_gradient)
        upper = self._logits_cumulative(inputs + 0.5, stop_gradient=stop_gradient)
        return torch.sigmoid(upper) - torch.sigmoid(lower), lower, upper

    def _packed_density(self) -> Tuple[Tensor, Tensor, Tensor]:
        """softplus(matrices) [C, L, F, F], biases [C, L, F], tanh(factors) [C, L, F] (0 for the
        last layer), zero-padded to F = the widest filter rounded up to a power of two."""
        layers = len(self.filters) + 1
        width = 1 << max(1, max(self.filters, default=1) - 1).bit_length()
        weights, biases, tanh_factors = [], [], []
        for i in range(layers):
            matrix = F.softplus(self.matrices[i])
            weights.append(F.pad(matrix, (0, width - matrix.shape[2], 0, width - matrix.shape[1])))
            biases.append(F.pad(self.biases[i][:, :, 0], (0, width - self.biases[i].shape[1])))
            factor = (
                torch.tanh(self.factors[i][:, :, 0])
                if i < len(self.filters)
                else torch.zeros_like(self.biases[i][:, :, 0])
            )
            tanh_factors.append(F.pad(factor, (0, width - factor.shape[1])))
        return (
            torch.stack(weights, 1).float().contiguous(),
            torch.stack(biases, 1).float().contiguous(),
            torch.stack(tanh_factors, 1).float().contiguous(),
        )

    def _bounded_likelihood(self, outputs: Tensor) -> Tensor:
        """Bounded likelihood of ``outputs`` [C, 1, N]: fused Triton kernels when the backend
        resolves to ``triton`` (CUDA by default) and deterministic algorithms are off, else the torch
        composition."""
        bound = self.likelihood_lower_bound.bound if self.use_likelihood_bound else None
        # the fused backward sums parameter gradients with atomics: not under deterministic algorithms
        if (
            outputs.dtype == torch.float32
            and _backend.resolve(None, outputs.device) == "triton"
            and not torch.are_deterministic_algorithms_enabled()
        ):
            likelihood = _FusedLikelihood.apply(
                outputs.reshape(self.channels, -1).contiguous(), *self._packed_density(), bound
            )
            return likelihood.reshape(outputs.shape)
        likelihood, _, _ = self._likelihood(outputs)
        return self.likelihood_lower_bound(likelihood) if bound is not None else likelihood

    def loss(self) -> Tensor:
        """Auxiliary quantile loss: sum |logits_cumulative(quantiles) - target| (network frozen)."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    # -- quantization ---------------------------------------------------------------------
    def quantize(self, inputs: Tensor, mode: str, means: Tensor | None = None) -> Tensor:
        """``"noise"``: inputs + U(-1/2, 1/2); ``"dequantize"``: round(inputs - means) + means;
        ``"symbols"``: round(inputs - means) as int32 (torch.round: half to even)."""
        if mode == "noise":
            return inputs + torch.empty_like(inputs).uniform_(-0.5, 0.5)
        if mode not in ("dequantize", "symbols"):
            raise ValueError(f"invalid quantization mode {mode!r}")
        outputs = inputs - means if means is not None else inputs
        outputs = torch.round(outputs)
        if mode == "symbols":
            return outputs.int()
        return outputs + means if means is not None else outputs

    @staticmethod
    def dequantize(inputs: Tensor, means: Tensor | None = None, dtype: torch.dtype = torch.float) -> Tensor:
        """Symbols back to values: inputs + means (in the means' dtype), or inputs cast to ``dtype``."""
        if means is not None:
            return inputs.type_as(means) + means
        return inputs.type(dtype)

    def forward(self, x: Tensor, training: bool | None = None, straight_through: bool = False) -> Tuple[Tensor, Tensor]:
        """x [B, C, *spatial] -> (y_hat in x's dtype, likelihoods), both x's shape.

        Training: y_hat = x + U(-1/2, 1/2); eval: y_hat = round(x - median) + median.
        ``straight_through``: y_hat is the eval rounding with the identity's gradient, so what follows sees
        the values it will see at inference (in eval mode only the gradient changes, for fitting codes); the
        likelihoods (the rate) stay those of the noisy values in training, of the rounded ones in eval. The
        likelihood math runs in float32 even under autocast (float64 for a float64 module).
        """
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected input [B, {self.channels}, ...], got {tuple(x.shape)}")
        if training is None:
            training = self.training
        perm = (1, 0) + tuple(range(2, x.dim()))  # B x C x ... <-> C x B x ... (its own inverse)
        work = torch.promote_types(torch.float32, self.quantiles.dtype)  # float64 for a .double() module
        with torch.autocast(device_type=x.device.type, enabled=False):
            channels_first = x.permute(*perm).contiguous().to(work)
            values = channels_first.reshape(self.channels, 1, -1)
            medians = self._get_medians().to(work)
            outputs = self.quantize(values, "noise" if training else "dequantize", medians)
            likelihood = self._bounded_likelihood(outputs)
            if straight_through:
                rounded = self.quantize(values, "dequantize", medians) if training else outputs
                outputs = values + (rounded - values).detach()
        outputs = outputs.reshape(channels_first.shape).permute(*perm).contiguous().to(x.dtype)
        likelihood = likelihood.reshape(channels_first.shape).permute(*perm).contiguous()
        return outputs, likelihood

    # -- tables -----------------------------------------------------------------------------
    @torch.no_grad()
    def _update_quantiles(self, search_radius: float = 1e5, rtol: float = 1e-4, atol: float = 1e-3) -> None:
        """Sets the quantiles by bisection on the cumulative logits (compressai's fast update)."""
        shape = (self.channels, 1, 1)
        for i in range(len(self.target)):
            target = self.target[i]
            low = torch.full(shape, -search_radius, device=self.quantiles.device)
            high = torch.full(shape, search_radius, device=self.quantiles.device)
            low = torch.where(target <= self._logits_cumulative(high, True), low, high)
            high = torch.where(self._logits_cumulative(low, True) <= target, high, low)
            while not torch.isclose(low, high, rtol=rtol, atol=atol).all():
                mid = (low + high) / 2
                f_mid = self._logits_cumulative(mid, True)
                low = torch.where(f_mid <= target, mid, low)
                high = torch.where(f_mid >= target, mid, high)
            self.quantiles[:, :, i] = ((low + high) / 2)[:, :, 0]

    def update(self, force: bool = False, update_quantiles: bool = False) -> bool:
        """Builds ``_quantized_cdf`` [C, max_len + 2], ``_offset`` [C], ``_cdf_length`` [C].

        Does nothing (returns False) when tables exist and ``force`` is False.
        """
        if self._offset.numel() > 0 and not force:
            return False
        if update_quantiles:
            self._update_quantiles()
        with torch.no_grad():
            medians = self.quantiles[:, 0, 1]
            minima = torch.clamp(torch.ceil(medians - self.quantiles[:, 0, 0]).int(), min=0)
            maxima = torch.clamp(torch.ceil(self.quantiles[:, 0, 2] - medians).int(), min=0)
            pmf_start = medians - minima
            pmf_length = maxima + minima + 1
            max_length = int(pmf_length.max().item())
            samples = torch.arange(max_length, device=pmf_start.device)[None, :] + pmf_start[:, None, None]
            pmf, lower, upper = self._likelihood(samples, stop_gradient=True)
            pmf = pmf[:, 0, :]
            # compressai takes the upper tail at the last sample of the longest row for all channels.
            tail_mass = torch.sigmoid(lower[:, 0, :1]) + torch.sigmoid(-upper[:, 0, -1:])
        pmf_np = pmf.float().cpu().numpy()
        tail_np = tail_mass.float().cpu().numpy()
        lengths = pmf_length.cpu().tolist()
        cdf = torch.zeros((self.channels, max_length + 2), dtype=torch.int32)
        for c, n in enumerate(lengths):
            row = pmf_to_quantized_cdf(np.concatenate((pmf_np[c, :n], tail_np[c])))
            cdf[c, : row.size] = torch.from_numpy(row)
        device = self.quantiles.device
        self._offset = (-minima).to(device)
        self._quantized_cdf = cdf.to(device)
        self._cdf_length = (pmf_length + 2).to(device)
        return True

    # -- entropy coding -------------------------------------------------------------------------
    def _coding_medians(self) -> Tensor:
        return self.quantiles[:, 0, 1].detach()

    def compress(self, x: Tensor) -> list[bytes]:
        """x [N, C, *spatial] -> N byte strings, identical to compressai's ``compress``."""
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected input [N, {self.channels}, ...], got {tuple(x.shape)}")
        tables = self.coder_tables()
        medians = self._coding_medians()
        if not x.is_floating_point():
            x = x.float()
        if x.dtype == medians.dtype == torch.float32:
            return coder.encode_compat_values(x, medians, tables)
        # compressai subtracts the medians in place: the difference is computed in the promoted dtype
        # and stored in x's (rounded to float16 / bfloat16 for such inputs) before torch.round
        difference = (x.detach() - medians.reshape(1, -1, *([1] * (x.dim() - 2)))).to(x.dtype)
        symbols = torch.round(difference)
        if not bool((torch.isfinite(symbols) & (symbols.abs() < 2**31)).all()):
            raise ValueError("compress: some values are not finite or outside int32 after quantization")
        return coder.encode_compat(symbols.int(), tables)

    def decompress(self, strings: list[bytes], size) -> Tensor:
        """N byte strings and the spatial size -> dequantized [N, C, *size] (compressai's layout)."""
        tables = self.coder_tables()
        shape = (self.channels, *(int(d) for d in size))
        device = self._quantized_cdf.device
        if self.quantiles.dtype != torch.float32:
            symbols = coder.decode_compat(strings, tables, shape)
            medians = self._coding_medians().reshape(1, -1, *([1] * len(size)))
            return self.dequantize(symbols.to(device), medians)
        return coder.decode_compat_values(strings, self._coding_medians(), tables, shape).to(device)

    def compress_parallel(
        self,
        x: Tensor,
        *,
        lane_overhead: float = coder.DEFAULT_LANE_OVERHEAD,
        lanes: int | None = None,
        as_tensor: bool = False,
    ):
        """x [N, C, *spatial] -> one parallel-format container (``bytes``, or a uint8 tensor on
        x's device with ``as_tensor``); coded on the GPU when x is on CUDA (same bytes)."""
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected input [N, {self.channels}, ...], got {tuple(x.shape)}")
        return coder.encode_parallel_values(
            x,
            self._coding_medians(),
            self.coder_tables(),
            lane_overhead=lane_overhead,
            lanes=lanes,
            as_tensor=as_tensor,
        )

    def decompress_parallel(self, data) -> Tensor:
        """Parallel container (bytes or uint8 tensor) -> dequantized float32 tensor in the
        stored shape, decoded on the module's device."""
        return coder.decode_parallel_values(
            data, self._coding_medians(), self.coder_tables(), device=self._quantized_cdf.device
        )
