"""A small 2-D conditional denoiser for global latitude-longitude fields.

    model(x_t, t, cond) -> prediction of x_t's shape (B, C, H, W)

The input is the noisy state concatenated with the conditioning channels. Every 3x3
convolution pads longitude circularly (the grid closes at the date line) and latitude by
repeating the edge row, so a field and its copy rolled in longitude give the same output
rolled by the same amount. Two 2x poolings: H and W must be divisible by 4.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture: `channels` predicted, `cond_channels` given, widths per level, groups of GroupNorm."""

    channels: int
    cond_channels: int
    widths: tuple[int, ...] = (32, 64, 64)
    groups: int = 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        return cls(d["channels"], d["cond_channels"], tuple(d["widths"]), d["groups"])


def pad_sphere(x: torch.Tensor, p: int = 1) -> torch.Tensor:
    """Pad (B, C, H, W) by `p`: circular in longitude (W), edge-replicated in latitude (H)."""
    x = torch.cat([x[..., -p:], x, x[..., :p]], dim=-1)
    return torch.cat([x[..., :1, :].expand(*x.shape[:-2], p, x.shape[-1]), x,
                      x[..., -1:, :].expand(*x.shape[:-2], p, x.shape[-1])], dim=-2)


class SphereConv(nn.Conv2d):
    """3x3 convolution with longitude-periodic padding."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_sphere(x, 1))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, time embedding added in between, 1x1 skip when widths differ."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(groups, cin), cin), SphereConv(cin, cout)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(min(groups, cout), cout), SphereConv(cout, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of 1000 t: [cos(1000 t f_k), sin(1000 t f_k)], f_k = 10^{-4 k / (dim/2)}."""
    half = dim // 2
    freqs = torch.exp(-math.log(1e4) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)


class ClimateUNet(nn.Module):
    """UNet with one ResBlock per level on the way down and up, and two at the bottom."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, emb = cfg.widths, 4 * cfg.widths[0]
        self.emb = nn.Sequential(nn.Linear(w[0], emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = SphereConv(cfg.channels + cfg.cond_channels, w[0])
        self.down = nn.ModuleList(ResBlock(w[max(i - 1, 0)], w[i], emb, cfg.groups) for i in range(len(w)))
        self.mid = ResBlock(w[-1], w[-1], emb, cfg.groups)
        self.up = nn.ModuleList(
            ResBlock(w[i] + w[min(i + 1, len(w) - 1)] if i < len(w) - 1 else 2 * w[i], w[i], emb, cfg.groups)
            for i in reversed(range(len(w)))
        )
        self.out_norm = nn.GroupNorm(min(cfg.groups, w[0]), w[0])
        self.out = SphereConv(w[0], cfg.channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        n_down = len(self.cfg.widths) - 1
        if x.shape[-2] % 2**n_down or x.shape[-1] % 2**n_down:
            raise ValueError(f"grid {tuple(x.shape[-2:])} must be divisible by {2**n_down} in both axes")
        if self.cfg.cond_channels:
            if cond is None or cond.shape[1] != self.cfg.cond_channels:
                got = None if cond is None else cond.shape[1]
                raise ValueError(f"model expects {self.cfg.cond_channels} conditioning channels, got {got}")
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        e = self.emb(time_embedding(t.reshape(-1).expand(x.shape[0]), self.cfg.widths[0]))
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < n_down:
                h = F.avg_pool2d(h, 2)
        h = self.mid(h, e)
        for j, block in enumerate(self.up):
            i = n_down - j
            h = block(torch.cat([h, skips[i]], dim=1), e)
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.out(F.silu(self.out_norm(h)))
