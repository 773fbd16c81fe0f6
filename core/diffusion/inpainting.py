"""Inpainting by sequential Monte Carlo: asymptotically exact conditional samples from an unconditional model.

Replacement (`sample(known=, mask=)`, optionally with RePaint resampling) is fast but biased: it conditions
the unknown part on a *noisy* copy of the known values at every level. SMCDiff (Trippe et al. 2022) instead

1. draws one forward trajectory of the known part, `y_{t_N} <- ... <- y_{t_1} <- y_0 = known`, by `q(y_{t_i} | y_{t_{i-1}})`;
2. moves `K` particles per example with the ancestral (DDPM) reverse kernel `p(x_s | x_t)`;
3. weights each particle by the reverse kernel's density of the known part at the forward trajectory,
   `w = N(y_s; mean_k(x_t), var)`, sets the known part to `y_s`, and resamples by weight.

As `K` grows (and the reverse kernel approaches the true reverse transition), the particles follow
`p(x_unknown | x_known = known)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sciffusion.core import rng
from sciffusion.core.diffusion.process import DiffusionProcess
from sciffusion.core.diffusion.samplers import _intervals, _make_denoise
from sciffusion.core.grids import time_grid

__all__ = ["smc_inpaint"]


def smc_inpaint(
    model: Callable[..., Tensor],
    process: DiffusionProcess,
    known: Tensor,
    mask: Tensor,
    particles: int = 64,
    steps: int = 200,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    ess_threshold: float = 0.5,
) -> Tensor:
    """Conditional samples of shape `(B, particles, ...)` given `known` values where `mask == 1` (shape `(B, ...)`).

    Resamples (multinomially, per example) when the effective sample size falls below
    `ess_threshold * particles`, and once at the end, so the returned particles are equally weighted.
    """
    if known.shape != mask.shape:
        raise ValueError(f"known {tuple(known.shape)} and mask {tuple(mask.shape)} must have the same shape")
    if particles < 1:
        raise ValueError(f"particles must be >= 1, got {particles}")
    b, k = known.shape[0], particles
    dev, dt = known.device, known.dtype
    ts = time_grid(process.schedule, steps, "uniform")
    intervals = _intervals(process, ts, 0.0)

    def randn(shape: tuple[int, ...]) -> Tensor:
        return rng.randn(shape, generator, device=dev, dtype=dt)

    # forward trajectory of the known part, from t = 0 up to t_max
    traj = [known]
    for iv in reversed(intervals):
        traj.append(iv.alpha_ts * traj[-1] + math.sqrt(iv.var_ts) * randn(known.shape))
    traj = traj[::-1]  # traj[i] at time ts[i]

    rep = (b * k, *known.shape[1:])
    m = mask.repeat_interleave(k, 0).to(dt)

    def known_at(i: int) -> Tensor:
        return traj[i].repeat_interleave(k, 0)

    x = m * known_at(0) + (1 - m) * randn(rep)
    c = cond.repeat_interleave(k, 0) if isinstance(cond, Tensor) else cond
    denoise = _make_denoise(model, process, c, None, None)
    log_w = torch.zeros(b, k, dtype=torch.float64, device=dev)

    def resample(x: Tensor, log_w: Tensor) -> Tensor:
        probs = torch.softmax(log_w, dim=1)
        idx = rng.multinomial(probs, k, generator=generator)
        idx = (idx.to(dev) + torch.arange(b, device=dev)[:, None] * k).reshape(-1)
        return x[idx]

    for i, iv in enumerate(intervals):
        pred = denoise(x, iv.t)
        x0, eps = pred.x0, pred.eps
        target = known_at(i + 1)
        if iv.sigma_s == 0.0:
            x = m * target + (1 - m) * x0
            break
        mean = (x - (iv.var_ts / iv.sigma_t) * eps) / iv.alpha_ts
        var = iv.var_ts * iv.sigma_s**2 / iv.sigma_t**2
        log_w = log_w + (-0.5 * (m * (target - mean) ** 2).reshape(b, k, -1).sum(-1) / var).double()
        x = m * target + (1 - m) * (mean + math.sqrt(var) * randn(rep))
        ess = torch.exp(2 * torch.logsumexp(log_w, 1) - torch.logsumexp(2 * log_w, 1))
        low = ess < ess_threshold * k  # resampled every step and selected, so nothing waits on the host
        x = torch.where(low.repeat_interleave(k).reshape(-1, *[1] * (x.ndim - 1)), resample(x, log_w), x)
        log_w = torch.where(low[:, None], torch.zeros_like(log_w), log_w)
    x = resample(x, log_w)
    return x.reshape(b, k, *known.shape[1:])
