"""The discrete-time variational bound (ELBO) on the grid `t_i = i / T`, in nats per example.

`-log p(x_0) <= prior + diffusion + reconstruction` with (Ho et al. 2020; Kingma et al. 2021, VDM):

- `prior = KL(q(x_1 | x_0) || N(0, (alpha_1^2 + sigma_1^2) I))` (the standard normal for a VP schedule);
- `diffusion = sum_{i=2}^{T} KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i))
  = sum_i E 1/2 (SNR(t_{i-1}) - SNR(t_i)) |x_0 - x0_hat(x_i, t_i)|^2`,
  with `p(x_{i-1} | x_i)` the posterior at `x0_hat` (same variance), `SNR = alpha^2 / sigma^2`;
- `reconstruction = -log p(x_0 | x_{t_1})`. Decoders: `"gaussian"`, `N(x_0; x0_hat, (sigma_1 / alpha_1)^2 I)`
  for continuous data; `"discretized"`, the Gaussian integrated over bins of width `bin_width`
  (outermost bins open to infinity at `data_range`) for quantised data.

`vdm_elbo` is the continuous-time bound (`T -> infinity`, Kingma et al. 2021) on `[t_min, 1]`: the diffusion
term becomes `1/2 int_{lambda(1)}^{lambda(t_min)} SNR E|x_0 - x0_hat(x_lambda)|^2 dlambda`, and the reconstruction
is the Gaussian decoder at `t_min`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sciffusion.core import rng
from sciffusion.core.diffusion.process import DiffusionProcess

__all__ = ["ELBOTerms", "elbo", "vdm_elbo"]

DECODERS = ("gaussian", "discretized")


@dataclass(frozen=True)
class ELBOTerms:
    """Terms of the negative ELBO, each `(B,)` in nats per example; `dims` is the number of elements per example."""

    prior: Tensor
    diffusion: Tensor
    reconstruction: Tensor
    dims: int

    @property
    def total(self) -> Tensor:
        """`prior + diffusion + reconstruction`: an upper bound on `-log p(x_0)` in nats per example."""
        return self.prior + self.diffusion + self.reconstruction

    def bits_per_dim(self) -> Tensor:
        """`total / (dims ln 2)`: bits per element. For continuous data this is a density, in the data's own units."""
        return self.total / (self.dims * math.log(2.0))


def _log_normal_cdf(z: Tensor) -> Tensor:
    return torch.special.log_ndtr(z)


def _discretized_log_likelihood(x0: Tensor, mean: Tensor, std: Tensor, bin_width: float, lo: float, hi: float) -> Tensor:
    """`log P(x_0)` of a Gaussian integrated over the bin `[x_0 - w/2, x_0 + w/2]`; edge bins are open."""
    upper = (x0 + bin_width / 2 - mean) / std
    lower = (x0 - bin_width / 2 - mean) / std
    log_cdf_up = torch.where(x0 >= hi - bin_width / 2, torch.zeros_like(upper), _log_normal_cdf(upper))
    log_sf_low = _log_normal_cdf(-lower)  # log(1 - Phi(lower))
    log_cdf_low = torch.where(x0 <= lo + bin_width / 2, torch.full_like(lower, -math.inf), _log_normal_cdf(lower))
    # log(Phi(up) - Phi(low)), computed on whichever tail is more accurate
    mid = log_cdf_up + torch.log1p(-torch.exp(torch.clamp(log_cdf_low - log_cdf_up, max=-1e-12)))
    upper_sf = torch.where(x0 >= hi - bin_width / 2, torch.full_like(upper, -math.inf), _log_normal_cdf(-upper))
    tail = log_sf_low + torch.log1p(-torch.exp(torch.clamp(upper_sf - log_sf_low, max=-1e-12)))
    return torch.where(lower > 0, tail, mid)


def elbo(
    model: Callable[..., Tensor],
    process: DiffusionProcess,
    x0: Tensor,
    num_steps: int = 1000,
    cond: Any = None,
    decoder: str = "gaussian",
    bin_width: float | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    num_samples: int | None = None,
    chunk: int = 64,
    generator: torch.Generator | None = None,
) -> ELBOTerms:
    """Negative ELBO terms of `x_0` `(B, ...)` on the grid `t_i = i / num_steps`, in nats per example.

    The diffusion sum uses every step when `num_samples` is None (one draw of `x_{t_i}` per step), or an
    unbiased estimate from `num_samples` random steps per example. Model calls are batched `chunk` steps at a time.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
    if decoder == "discretized" and (bin_width is None or bin_width <= 0):
        raise ValueError("the discretized decoder needs a positive bin_width (e.g. 2/255 for 8-bit data in [-1, 1])")
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    b, dev, dt = x0.shape[0], x0.device, x0.dtype
    flat = x0.reshape(b, -1)
    grid = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    log_snr = process.schedule.log_snr_fn(grid)
    x0_hat = _x0_predictor(model, process, dt)
    prior = _prior_kl(process, flat)
    diffusion = _discrete_diffusion_sum(x0_hat, process, x0, cond, grid, num_samples, chunk, generator)

    # reconstruction at t_1 = 1 / T
    t1 = torch.full((b,), float(grid[1]), dtype=dt, device=dev)
    x_1, _ = process.add_noise(x0, t1, generator=generator)
    mean = x0_hat(x_1, t1, cond).reshape(b, -1)
    std = math.exp(-0.5 * float(log_snr[1]))  # sigma_1 / alpha_1
    if decoder == "gaussian":
        log_lik = -0.5 * (((flat - mean) / std) ** 2 + math.log(2 * math.pi * std * std))
    else:
        log_lik = _discretized_log_likelihood(flat.double(), mean.double(), std, bin_width, *data_range)
    reconstruction = -log_lik.sum(1)
    return ELBOTerms(prior.double(), diffusion, reconstruction.double(), flat.shape[1])


def _discrete_diffusion_sum(
    x0_hat: Callable, process: DiffusionProcess, x0: Tensor, cond: Any, grid: Tensor, num_samples: int | None,
    chunk: int, generator: torch.Generator | None,
) -> Tensor:
    """`sum_{i=2}^T 1/2 (SNR(t_{i-1}) - SNR(t_i)) |x0 - x0_hat(x_{t_i})|^2` per example, over every step
    (`num_samples=None`) or as the unbiased estimate from `num_samples` random steps; `chunk` steps per call."""
    b, dev, dt = x0.shape[0], x0.device, x0.dtype
    snr = torch.exp(process.schedule.log_snr_fn(grid))
    steps = torch.arange(2, len(grid))
    weights = 0.5 * (snr[steps - 1] - snr[steps])
    if num_samples is None:
        chosen, scale = steps.repeat(b, 1), 1.0
    else:
        chosen = steps[rng.randint(0, len(steps), (b, num_samples), generator, device=steps.device)]
        scale = len(steps) / num_samples
    diffusion = torch.zeros(b, dtype=torch.float64, device=dev)
    for start in range(0, chosen.shape[1], chunk):
        idx = chosen[:, start : start + chunk]  # (b, k)
        k = idx.shape[1]
        xs = x0.repeat_interleave(k, dim=0)
        t = grid[idx.reshape(-1)].to(device=dev, dtype=dt)
        x_t, _ = process.add_noise(xs, t, generator=generator)
        c = cond.repeat_interleave(k, dim=0) if isinstance(cond, Tensor) else cond
        err = ((xs - x0_hat(x_t, t, c)) ** 2).reshape(b * k, -1).sum(1).double()
        w = weights[idx.reshape(-1) - 2].to(dev)
        diffusion += (w * err).reshape(b, k).sum(1)
    return diffusion * scale



def vdm_elbo(
    model: Callable[..., Tensor],
    process: DiffusionProcess,
    x0: Tensor,
    cond: Any = None,
    num_samples: int = 16,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
) -> ELBOTerms:
    """Continuous-time negative ELBO of `x_0` `(B, ...)` (VDM, Kingma et al. 2021), in nats per example.

    `prior = KL(q(x_1 | x_0) || N(0, (alpha_1^2 + sigma_1^2) I))`;
    `diffusion = -1/2 int_{t_min}^1 SNR'(t) E|x_0 - x0_hat(x_t, t)|^2 dt
    = 1/2 int_{lambda_1}^{lambda_min} e^lambda E|x_0 - x0_hat|^2 dlambda`,
    estimated with `num_samples` stratified draws of `lambda` per example (uniform in `lambda`, so that the
    integrand `e^lambda |x_0 - x0_hat|^2` stays of order one at every noise level);
    `reconstruction = -log N(x_0; x0_hat(x_{t_min}), (sigma / alpha)^2_{t_min} I)`.
    For `N(m, s^2)` data and the exact model the diffusion term is `1/2 log((1 + SNR_max s^2) / (1 + SNR_1 s^2))`
    per dimension.
    """
    if not 0.0 < t_min < 1.0:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    b, dev, dt = x0.shape[0], x0.device, x0.dtype
    flat = x0.reshape(b, -1)
    lam_1, lam_max = process.schedule.log_snr_fn(torch.tensor([1.0, t_min], dtype=torch.float64)).tolist()

    x0_hat = _x0_predictor(model, process, dt)
    prior = _prior_kl(process, flat)

    jitter = rng.rand((b, num_samples), generator, device="cpu", dtype=torch.float64)
    u = (torch.arange(num_samples, dtype=torch.float64) + jitter) / num_samples
    lam = lam_1 + u * (lam_max - lam_1)  # (b, k)
    t = process.schedule.t_from_log_snr(lam.reshape(-1)).to(device=dev, dtype=dt)
    xs = x0.repeat_interleave(num_samples, dim=0)
    x_t, _ = process.add_noise(xs, t, generator=generator)
    c = cond.repeat_interleave(num_samples, dim=0) if isinstance(cond, Tensor) else cond
    err = ((xs - x0_hat(x_t, t, c)) ** 2).reshape(b * num_samples, -1).sum(1).double().reshape(b, num_samples)
    diffusion = 0.5 * (lam_max - lam_1) * (torch.exp(lam).to(dev) * err).mean(1)

    tm = torch.full((b,), t_min, dtype=dt, device=dev)
    x_m, _ = process.add_noise(x0, tm, generator=generator)
    mean = x0_hat(x_m, tm, cond).reshape(b, -1)
    var = math.exp(-lam_max)  # (sigma / alpha)^2 at t_min
    reconstruction = 0.5 * (((flat - mean) ** 2) / var + math.log(2 * math.pi * var)).sum(1)
    return ELBOTerms(prior.double(), diffusion, reconstruction.double(), flat.shape[1])


def _x0_predictor(model: Callable[..., Tensor], process: DiffusionProcess, dtype: torch.dtype) -> Callable:
    """`x0_hat(x_t, t, cond)`: the model's prediction converted to `x_0`, in the data's dtype."""

    def x0_hat(x_t: Tensor, t: Tensor, c: Any) -> Tensor:
        out = model(x_t, t, c) if c is not None else model(x_t, t)
        return process.predict_x0(out.to(dtype), x_t, t)

    return x0_hat


def _prior_kl(process: DiffusionProcess, flat: Tensor) -> Tensor:
    """`KL(N(alpha_1 x_0, sigma_1^2) || N(0, alpha_1^2 + sigma_1^2))` summed over elements, per example `(B,)`."""
    one = torch.ones(flat.shape[0], dtype=flat.dtype, device=flat.device)
    a1, s1 = float(process.alpha(one)[0]), float(process.sigma(one)[0])
    v = a1 * a1 + s1 * s1
    return 0.5 * ((s1 * s1 + a1 * a1 * flat**2) / v - 1.0 - math.log(s1 * s1 / v)).sum(1)
