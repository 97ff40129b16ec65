"""Degradation encoders: the global LPE (with its MoCo wrapper) and the local LPEL.

Parameter names follow the reference (``model/blindsr.py``, ``model/blindsrlocal.py``,
``model/common.py``, ``moco/builder.py``).  Inputs are images in the model's
internal [-1, 1] domain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv2dBlock(nn.Module):
    """zero pad -> Conv2d (bias) -> BatchNorm2d -> LeakyReLU(0.2) (reference ``common.Conv2dBlock``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.pad = nn.ZeroPad2d(padding)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(self.pad(x))))


def _short_range_branch(dim: int) -> nn.Sequential:
    """The short-range branch shared by LPE and LPEL: [B,3,H,W] -> [B,dim,ceil(H/2),ceil(W/2)]."""
    return nn.Sequential(
        Conv2dBlock(3, dim // 4, 3, 1, 1),
        Conv2dBlock(dim // 4, dim // 4, 1, 1, 0),
        Conv2dBlock(dim // 4, dim // 2, 3, 2, 1),
        Conv2dBlock(dim // 2, dim // 2, 1, 1, 0),
        Conv2dBlock(dim // 2, dim, 3, 1, 1),
        Conv2dBlock(dim, dim, 1, 1, 0),
    )


def _check_image(name: str, y: torch.Tensor, min_size: int) -> None:
    if y.dim() != 4 or y.shape[1] != 3:
        raise ValueError(f"{name}: expected an image batch [B, 3, H, W], got {list(y.shape)}")
    if min(y.shape[-2:]) < min_size:
        raise ValueError(f"{name}: image must be at least {min_size}x{min_size}, got {y.shape[-2]}x{y.shape[-1]}")


class LPE(nn.Module):
    """Global degradation encoder: y [B, 3, H, W] (H, W >= 3) -> e_g [B, out_dim] (unnormalised).

    Two conv branches, each globally average-pooled, concatenated (512) and mapped by an MLP.
    ``features(y)`` returns the two branch maps before pooling (used for exact tiling).
    """

    def __init__(self, dim: int = 256, out_dim: int = 256, k: int = 3):
        super().__init__()
        if k % 2 != 1:
            raise ValueError(f"LPE: kernel k must be odd, got {k}")
        self.LPE_p = nn.Sequential(
            Conv2dBlock(3, dim // 4, k, (k - 1) // 2, 0),
            Conv2dBlock(dim // 4, dim // 4, 3, 1, 1),
            Conv2dBlock(dim // 4, dim // 2, 3, 1, 1),
            Conv2dBlock(dim // 2, dim, 3, 1, 1),
        )
        self.LPE_l = _short_range_branch(dim)
        self.last_mlp = nn.Sequential(nn.Linear(dim * 2, dim), nn.LeakyReLU(0.1), nn.Linear(dim, out_dim))

    def features(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.LPE_p(y), self.LPE_l(y)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """MLP on the concatenated pooled branch features [B, 2*dim] -> [B, out_dim]."""
        return self.last_mlp(pooled)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        _check_image("LPE", y, 3)
        fp, fl = self.features(y)
        return self.head(torch.cat((fp.mean(dim=(2, 3)), fl.mean(dim=(2, 3))), dim=1))


class LPEL(nn.Module):
    """Local degradation encoder: y [B, 3, H, W] (H, W even, >= 4) -> e_l in (0, 1)^[B, out_dim, H/2, W/2]."""

    def __init__(self, dim: int = 256, out_dim: int = 4, k: int = 3):
        super().__init__()
        if k != 3:
            raise ValueError(f"LPEL: only k=3 gives aligned branches (the reference's configured value), got {k}")
        s = (k - 1) // 2
        self.LPE_p = nn.Sequential(
            Conv2dBlock(3, dim // 4, k, s, s // 2),
            Conv2dBlock(dim // 4, dim // 4, 3, 1, 1),
            Conv2dBlock(dim // 4, dim // 2, 3, 1, 1),
            Conv2dBlock(dim // 2, dim // 2, 3, 1, 1),
            nn.ConvTranspose2d(dim // 2, dim, k, stride=s, padding=0),
            nn.AvgPool2d(kernel_size=2),
        )
        self.LPE_l = _short_range_branch(dim)
        self.last_mlp = nn.Sequential(
            nn.Conv2d(dim * 2, dim, 1), nn.LeakyReLU(0.1), nn.Conv2d(dim, out_dim, 1), nn.Sigmoid()
        )
        self.out_dim = out_dim

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        _check_image("LPEL", y, 4)
        if y.shape[-2] % 2 or y.shape[-1] % 2:
            raise ValueError(f"LPEL: image height and width must be even, got {y.shape[-2]}x{y.shape[-1]}")
        return self.last_mlp(torch.cat((self.LPE_p(y), self.LPE_l(y)), dim=1))


class MoCo(nn.Module):
    """Momentum-contrast wrapper of the global encoder (reference ``moco/builder.py``), fixed as
    docs/architecture.md §14 says.

    Only ``encoder_q`` is trained by gradient. ``encoder_k`` follows it by momentum and the queue holds the
    L2-normalised keys of past batches. Unlike the reference, the key encoder and the queue are persistent
    buffers/state (checkpointed), and ``momentum_update`` / ``enqueue`` are explicit so a DDP trainer can
    gather keys from every rank before enqueueing.
    """

    def __init__(
        self,
        encoder_q: nn.Module,
        encoder_k: nn.Module,
        dim: int = 256,
        K: int = 120,
        m: float = 0.999,
        T: float = 0.07,
    ):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q = encoder_q
        self.encoder_k = encoder_k
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q over the parameters (buffers stay the key encoder's own)."""
        for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            pk.mul_(self.m).add_(pq.detach(), alpha=1 - self.m)

    @torch.no_grad()
    def keys(self, y_key: torch.Tensor) -> torch.Tensor:
        """L2-normalised keys [B, dim] of the key crops."""
        return F.normalize(self.encoder_k(y_key).float(), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Writes keys [N, dim] into the ring buffer (wrapping), advancing the pointer by N mod K."""
        n = keys.shape[0]
        if n > self.K:
            raise ValueError(f"MoCo: cannot enqueue {n} keys into a queue of {self.K}")
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % self.K
        self.queue[:, idx] = keys.t().to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % self.K)

    def logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Contrastive logits [B, 1+K] (positive first) for raw queries q and normalised keys k."""
        qn = F.normalize(q.float(), dim=1)
        l_pos = (qn * k).sum(dim=1, keepdim=True)
        l_neg = qn @ self.queue.clone().detach()
        return torch.cat((l_pos, l_neg), dim=1) / self.T

    def forward(self, y: torch.Tensor, y_key: torch.Tensor | None = None, enqueue: bool = True):
        """Training: (e_g [B, dim], logits [B, 1+K], keys [B, dim]); eval or y_key=None: e_g only.

        With ``enqueue=False`` the caller enqueues (e.g. keys gathered from all DDP ranks).
        """
        q = self.encoder_q(y)
        if y_key is None or not self.training:
            return q
        self.momentum_update()
        k = self.keys(y_key)
        logits = self.logits(q, k)
        if enqueue:
            self.enqueue(k)
        return q, logits, k
