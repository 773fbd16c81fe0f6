"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021), in nats per example.

With `x~ = x / alpha` and `sigma~ = sigma / alpha = exp(u)`, the probability-flow ODE is
`dx~/du = sigma~ eps_hat(alpha x~, t(u))`, and along it
`log p_{t_eps}(x~(u_0)) = log p_1(x~(u_1)) + int_{u_0}^{u_1} div_{x~}(sigma~ eps_hat) du`.
The prior is `N(0, (alpha_1^2 + sigma_1^2) I)` in `x` (the standard normal for a VP schedule); the change
of variables `x = alpha x~` adds `-D log alpha` at each end. The ODE is integrated by classical RK4 on a
uniform grid in `u` (`sciffusion.core.probability_flow`, shared with the kernel engine). The divergence is
exact (`D` backward passes) up to `exact_max_dim` elements, else Hutchinson's estimator with one
Rademacher probe per example held fixed along the path (FFJORD).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sciffusion.core.diffusion.process import DiffusionProcess
from sciffusion.core.probability_flow import (
    divergence,
    flow_log_likelihood,
    rademacher_probe,
    stage_times,
)

__all__ = ["log_likelihood"]


def _u_grid(process: DiffusionProcess, steps: int, t_eps: float) -> tuple[list[float], dict[float, tuple[float, float]]]:
    """The uniform grid in `u = log sigma~` from `t_eps` to 1, and `(t, alpha)` at every RK4 stage time
    (one batched inversion of `lambda(t)`; the ends are pinned to `t_eps` and 1)."""
    sched = process.schedule
    u0, u1 = (-0.5 * sched.log_snr_fn(torch.tensor([t_eps, 1.0], dtype=torch.float64))).tolist()
    us = torch.linspace(u0, u1, steps + 1, dtype=torch.float64).tolist()
    nodes = stage_times(us, "rk4")
    ts = sched.t_from_log_snr(-2.0 * torch.tensor(nodes, dtype=torch.float64))
    ts[0], ts[-1] = t_eps, 1.0
    alphas = torch.sigmoid(sched.log_snr_fn(ts)).sqrt().tolist()
    return us, dict(zip(nodes, zip(ts.tolist(), alphas, strict=True), strict=True))


def log_likelihood(
    model: Callable[..., Tensor],
    process: DiffusionProcess,
    x0: Tensor,
    cond: Any = None,
    steps: int = 100,
    t_eps: float = 1e-5,
    exact_max_dim: int = 64,
    hutchinson: bool | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`log p(x_0)` in nats per example `(B,)`, by the probability-flow ODE from `t_eps` to 1.

    `hutchinson=None` picks the exact divergence when an example has at most `exact_max_dim` elements.
    Work in float64 for small problems when a tight answer matters.
    """
    b, dims = x0.shape[0], x0[0].numel()
    use_probe = dims > exact_max_dim if hutchinson is None else hutchinson
    probe = rademacher_probe(x0, generator) if use_probe else None
    us, coef = _u_grid(process, steps, t_eps)

    def field(y: Tensor, u: float) -> tuple[Tensor, Tensor]:
        t_value, alpha = coef[u]
        tt = torch.full((b,), t_value, dtype=y.dtype, device=y.device)

        def eps_hat(x: Tensor) -> Tensor:
            out = model(x, tt, cond) if cond is not None else model(x, tt)
            return process.predict_eps(out.to(x.dtype), x, tt)

        eps, div = divergence(eps_hat, alpha * y, probe)
        sig_tilde = math.exp(u)  # d x~/du = sigma~ eps(alpha x~); div_{x~} = sigma~ alpha div_x eps
        return sig_tilde * eps, sig_tilde * alpha * div

    a0, a1 = coef[us[0]][1], coef[us[-1]][1]
    s1 = float(process.schedule.sigma(torch.ones(1, dtype=torch.float64))[0])
    var_prior = a1 * a1 + s1 * s1

    def log_prior(y: Tensor) -> Tensor:
        """`log p_x~(x~_1) = log N(alpha_1 x~_1; 0, var I) + D log alpha_1`."""
        sq = ((a1 * y).reshape(b, -1) ** 2).sum(1)
        return -0.5 * (sq / var_prior + dims * math.log(2 * math.pi * var_prior)) + dims * math.log(a1)

    # p_x(x0) = p_x~(x0 / alpha_0) / alpha_0^D
    return flow_log_likelihood(field, x0 / a0, us, log_prior, method="rk4") - dims * math.log(a0)
