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
from sciffusion.core.diffusion.samplers import (
    Interval,
    ancestral_mean,
    make_denoiser,
    step_intervals,
)
from sciffusion.core.grids import time_grid

__all__ = ["forward_trajectory", "resample_particles", "smc_inpaint"]


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
    intervals = step_intervals(process, time_grid(process.schedule, steps, "uniform"))

    def randn(shape: tuple[int, ...]) -> Tensor:
        return rng.randn(shape, generator, device=known.device, dtype=known.dtype)

    traj = [y.repeat_interleave(k, 0) for y in forward_trajectory(known, intervals, randn)]
    m = mask.repeat_interleave(k, 0).to(known.dtype)
    x = m * traj[0] + (1 - m) * randn((b * k, *known.shape[1:]))
    c = cond.repeat_interleave(k, 0) if isinstance(cond, Tensor) else cond
    denoise = make_denoiser(model, process, c, None, None)
    log_w = torch.zeros(b, k, dtype=torch.float64, device=known.device)
    for i, iv in enumerate(intervals):
        pred = denoise(x, iv.t)
        if iv.sigma_s == 0.0:
            x = m * traj[i + 1] + (1 - m) * pred.x0
            break
        x, log_w = _smc_step(x, log_w, pred.eps, iv, m, traj[i + 1], randn)
        x, log_w = _resample_when_degenerate(x, log_w, ess_threshold, generator)
    return resample_particles(x, log_w, generator).reshape(b, k, *known.shape[1:])


def forward_trajectory(known: Tensor, intervals: list[Interval], randn: Callable[[tuple[int, ...]], Tensor]) -> list[Tensor]:
    """One draw of the forward chain `y_0 = known`, `y_{t_i} ~ q(y_{t_i} | y_{t_{i-1}})`, listed at the grid's
    times from the first (the noisiest) to the last (`known` itself)."""
    traj = [known]
    for iv in reversed(intervals):
        traj.append(iv.alpha_ts * traj[-1] + math.sqrt(iv.var_ts) * randn(known.shape))
    return traj[::-1]


def _smc_step(
    x: Tensor, log_w: Tensor, eps: Tensor, iv: Interval, m: Tensor, target: Tensor,
    randn: Callable[[tuple[int, ...]], Tensor],
) -> tuple[Tensor, Tensor]:
    """Move the particles by the ancestral kernel `N(mean, std^2)`, weight them by its density of the known part
    at the forward trajectory `target`, and set the known part to `target`."""
    mean = ancestral_mean(x, eps, iv)
    var = iv.ancestral_std**2
    b, k = log_w.shape
    log_w = log_w + (-0.5 * (m * (target - mean) ** 2).reshape(b, k, -1).sum(-1) / var).double()
    return m * target + (1 - m) * (mean + math.sqrt(var) * randn(tuple(x.shape))), log_w


def resample_particles(x: Tensor, log_w: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Multinomial resampling of `x` `(B * K, ...)` within each example by the weights `softmax(log_w)` `(B, K)`."""
    b, k = log_w.shape
    idx = rng.multinomial(torch.softmax(log_w, dim=1), k, generator=generator)
    idx = (idx.to(x.device) + torch.arange(b, device=x.device)[:, None] * k).reshape(-1)
    return x[idx]


def _resample_when_degenerate(
    x: Tensor, log_w: Tensor, ess_threshold: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Resample the examples whose effective sample size `(sum w)^2 / sum w^2` is below `ess_threshold * K`, and
    reset their weights. All examples are resampled and the result selected, so nothing waits on the host."""
    k = log_w.shape[1]
    ess = torch.exp(2 * torch.logsumexp(log_w, 1) - torch.logsumexp(2 * log_w, 1))
    low = ess < ess_threshold * k
    x = torch.where(low.repeat_interleave(k).reshape(-1, *[1] * (x.ndim - 1)), resample_particles(x, log_w, generator), x)
    return x, torch.where(low[:, None], torch.zeros_like(log_w), log_w)
