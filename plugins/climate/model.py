"""A small 2-D conditional denoiser for latitude-longitude fields, global or regional.

    model(x_t, t, cond) -> prediction of x_t's shape (B, C, H, W)

The input is the noisy state concatenated with the conditioning channels. On a global grid
(`periodic`) every 3x3 convolution pads longitude circularly (the grid closes at the date line),
so a field and its copy rolled in longitude give the same output rolled by the same amount; on a
regional grid longitude is padded like latitude, by repeating the edge cells, so the east edge
never sees the west one. The L - 1 2x poolings need H and W divisible by 2^(L-1): any other size is
padded at the north and east ends (repeated edge cells; wrapped longitude on a global grid) and
the output cropped back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sciffusion.core.config import JsonConfig


@dataclass(frozen=True)
class UNetConfig(JsonConfig):
    """Architecture: `channels` predicted, `cond_channels` given, widths per level, groups of GroupNorm."""

    channels: int
    cond_channels: int
    widths: tuple[int, ...] = (32, 64, 64)
    groups: int = 8
    periodic: bool = True


def _repeat_edges(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    parts = [x.narrow(dim, 0, 1).expand(*[before if d == dim % x.ndim else -1 for d in range(x.ndim)])] if before else []
    parts.append(x)
    if after:
        parts.append(x.narrow(dim, x.shape[dim] - 1, 1).expand(*[after if d == dim % x.ndim else -1 for d in range(x.ndim)]))
    return torch.cat(parts, dim=dim) if len(parts) > 1 else x


def pad_sphere(x: torch.Tensor, p: int = 1, periodic: bool = True) -> torch.Tensor:
    """Pad (B, C, H, W) by `p`: circular in longitude (W) when `periodic`, else edge-replicated;
    edge-replicated in latitude (H)."""
    x = torch.cat([x[..., -p:], x, x[..., :p]], dim=-1) if periodic else _repeat_edges(x, p, p, -1)
    return _repeat_edges(x, p, p, -2)


def pad_to_multiple(x: torch.Tensor, multiple: int, periodic: bool) -> torch.Tensor:
    """Pad (B, C, H, W) at the end of each axis up to a multiple of `multiple`: latitude by repeating
    the last row; longitude by wrapping round (global) or repeating the last column (regional)."""
    ph, pw = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    x = _repeat_edges(x, 0, ph, -2)
    if pw and periodic:
        reps = -(-pw // x.shape[-1])
        return torch.cat([x, *[x] * (reps - 1), x[..., : pw - (reps - 1) * x.shape[-1]]], dim=-1)
    return _repeat_edges(x, 0, pw, -1)


class SphereConv(nn.Conv2d):
    """3x3 convolution with longitude-periodic (global) or edge-replicated (regional) padding."""

    def __init__(self, cin: int, cout: int, periodic: bool = True) -> None:
        super().__init__(cin, cout, 3, padding=0)
        self.periodic = periodic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_sphere(x, 1, self.periodic))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, time embedding added in between, 1x1 skip when widths differ."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int, periodic: bool = True) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(groups, cin), cin), SphereConv(cin, cout, periodic)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(min(groups, cout), cout), SphereConv(cout, cout, periodic)
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
        w, emb, per = cfg.widths, 4 * cfg.widths[0], cfg.periodic
        self.emb = nn.Sequential(nn.Linear(w[0], emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = SphereConv(cfg.channels + cfg.cond_channels, w[0], per)
        self.down = nn.ModuleList(ResBlock(w[max(i - 1, 0)], w[i], emb, cfg.groups, per) for i in range(len(w)))
        self.mid = ResBlock(w[-1], w[-1], emb, cfg.groups, per)
        self.up = nn.ModuleList(
            ResBlock(w[i] + w[min(i + 1, len(w) - 1)] if i < len(w) - 1 else 2 * w[i], w[i], emb, cfg.groups, per)
            for i in reversed(range(len(w)))
        )
        self.out_norm = nn.GroupNorm(min(cfg.groups, w[0]), w[0])
        self.out = SphereConv(w[0], cfg.channels, per)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        n_down = len(self.cfg.widths) - 1
        h_in, w_in = x.shape[-2:]
        if self.cfg.cond_channels:
            if cond is None or cond.shape[1] != self.cfg.cond_channels:
                got = None if cond is None else cond.shape[1]
                raise ValueError(f"model expects {self.cfg.cond_channels} conditioning channels, got {got}")
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        x = pad_to_multiple(x, 2**n_down, self.cfg.periodic)
        return self._unet(x, t)[..., :h_in, :w_in]

    def _unet(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n_down = len(self.cfg.widths) - 1
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


class NetworkEnsemble(nn.ModuleList):
    """N denoisers of one architecture, trained independently (their own seeds) on the same data.

    Member k of a sampled ensemble is drawn with network k mod N, so the ensemble samples the
    mixture (1/N) sum_n p_n(x | cond): its mean is the average of the networks' means, and where
    the networks disagree (what a few training times leave undetermined) its spread widens.
    It has no forward of its own; `networks` lists the members for the sampler."""

    def __init__(self, nets: list[ClimateUNet]) -> None:
        if not nets or len({n.cfg for n in nets}) != 1:
            raise ValueError("a NetworkEnsemble needs one or more networks of the same UNetConfig")
        super().__init__(nets)

    @property
    def cfg(self) -> UNetConfig:
        """The shared architecture."""
        return self[0].cfg


def networks(model: nn.Module) -> list[nn.Module]:
    """The denoisers of `model`: the members of a `NetworkEnsemble`, else [model]."""
    return list(model) if isinstance(model, NetworkEnsemble) else [model]
