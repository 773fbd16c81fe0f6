"""Markov diffusions beyond the Gaussian VP process, and their time reversal on manifolds.

Conventions (the time conventions of the kernels guide):

* Ornstein-Uhlenbeck on ``R^d``: ``dX = -X dt + sqrt(2) dW``, ``X_t = e^{-t} X_0 + sqrt(1 - e^{-2t}) Z``.
  A VP schedule of the core with ``alpha(s)`` is this process at OU time ``t = -log alpha(s)``
  (``sigma^2 = 1 - alpha^2`` holds for both), see ``ou_time_from_vp`` and ``score_as_core_model``.
* Brownian motion on a manifold: generator ``Delta`` (``dX = sqrt(2) dW``), simulated by a tangent
  Gaussian step and a retraction (exact on ``R^d`` and the torus, a geodesic random walk on spheres).
* A general SDE ``dX = a(X, t) dt + b(X, t) dW`` simulated by Euler-Maruyama.

Reverse time (Anderson): for ``dX = f dt + g dW`` with score ``s_t = grad log rho_t``, running ``tau``
from ``T`` down to ``t_min``,

    reverse SDE:   x <- x + [g^2 s_t(x) - f(x)] dt + g sqrt(dt) z
    PF-ODE:        x <- x + [g^2 s_t(x) / 2 - f(x)] dt

with ``g^2 = 2``; on a manifold the increment is projected to ``T_x M`` and the step retracted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sciffusion.core import rng
from sciffusion.core.chain import ChainStep, run_chain
from sciffusion.core.grids import time_grid
from sciffusion.core.kernels.manifolds import Euclidean, Manifold
from sciffusion.core.probability_flow import divergence as divergence_of
from sciffusion.core.probability_flow import flow_log_likelihood

ScoreFn = Callable[[Tensor, float], Tensor]
_DRIFTS = ("heat", "ou")
_METHODS = ("sde", "ode")


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return rng.randn(x.shape, generator, device=x.device, dtype=x.dtype)


# ====================================================================================================
class OrnsteinUhlenbeck:
    """OU process ``dX = -X dt + sqrt(2) dW`` on ``R^d`` with invariant law ``N(0, I)``."""

    def __init__(self, d: int):
        self.manifold = Euclidean(d)
        self.d = int(d)

    @staticmethod
    def alpha(t: Tensor | float) -> Tensor:
        """``a_t = e^{-t}``."""
        return torch.exp(-torch.as_tensor(t, dtype=torch.float64))

    @staticmethod
    def sigma(t: Tensor | float) -> Tensor:
        """``sigma_t = sqrt(1 - e^{-2t})``."""
        return torch.sqrt(-torch.expm1(-2 * torch.as_tensor(t, dtype=torch.float64)))

    def drift(self, x: Tensor, t: float) -> Tensor:
        return -x

    def marginal_sample(self, x0: Tensor, t: float, generator: torch.Generator | None = None) -> Tensor:
        """Exact draw of ``X_t | X_0 = x0``."""
        a, s = float(self.alpha(t)), float(self.sigma(t))
        return a * x0 + s * _randn_like(x0, generator)

    def prior_sample(self, n: int, generator=None, dtype=torch.float64, device=None) -> Tensor:
        """Draw from ``N(0, I)``, the law the reverse process starts from."""
        return rng.randn((n, self.d), generator, device=device or "cpu", dtype=dtype)


def ou_time_from_vp(schedule, s: Tensor) -> Tensor:
    """OU time of VP time ``s``: ``t = -log alpha(s)`` (``schedule`` has ``.alpha``, e.g. a core Schedule)."""
    a = torch.as_tensor(schedule.alpha(s), dtype=torch.float64)
    return -torch.log(a.clamp_min(1e-300))


def score_as_core_model(score: Callable[[Tensor, Tensor], Tensor], schedule, t_floor: float = 1e-6):
    """Wrap an OU-time ``score(x, t)`` as a core model with ``prediction="score"``.

    Returns ``model(x_s, s, cond=None) = score(x_s, -log alpha(s))`` so a DKS/OISM score drives the
    core samplers (``sample(model, DiffusionProcess(schedule, prediction="score"), ...)``).
    """

    def model(x: Tensor, s: Tensor, cond=None) -> Tensor:
        t = ou_time_from_vp(schedule, s).clamp_min(t_floor)
        return score(x, t.to(x.dtype)).to(x.dtype)

    return model


# ====================================================================================================
class BrownianMotion:
    """Brownian motion with generator ``Delta`` on a manifold (``dX = sqrt(2) dW``)."""

    def __init__(self, manifold: Manifold):
        self.manifold = manifold

    def transition_log_density(self, x: Tensor, y: Tensor, t: float) -> Tensor:
        """``log p_t(x_i, y_j)`` (w.r.t. ``mu`` on compact manifolds, Lebesgue on ``R^d``)."""
        return self.manifold.log_heat_kernel(x, y, t)

    def sample(self, x0: Tensor, t: float, steps: int = 100, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``X_t`` given ``X_0 = x0``: one exact Gaussian step on flat spaces, else ``steps``
        tangent-Gaussian steps with retraction (geodesic random walk)."""
        m = self.manifold
        if t < 0:
            raise ValueError(f"BrownianMotion.sample: t must be >= 0, got {t}")
        flat = m.dim == m.ambient_dim
        n_steps = 1 if flat else int(steps)
        dt = t / n_steps
        x = x0
        for _ in range(n_steps):
            x = m.retract(x, m.project_tangent(x, math.sqrt(2 * dt) * _randn_like(x, generator)))
        return x


class GeneralSDE:
    """``dX = a(X, t) dt + b(X, t) dW`` with user drift ``a`` and diffusion ``b``.

    ``b(x, t)`` may return a scalar, a ``(B, D)`` tensor (diagonal noise) or a ``(B, D, m)`` matrix
    (then ``dW`` is ``m``-dimensional). On a manifold the step is projected and retracted.
    """

    def __init__(self, drift: Callable[[Tensor, float], Tensor], diffusion, manifold: Manifold | None = None):
        self.drift, self.diffusion, self.manifold = drift, diffusion, manifold

    def _noise(self, x: Tensor, t: float, dt: float, generator) -> Tensor:
        b = self.diffusion(x, t) if callable(self.diffusion) else self.diffusion
        b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
        if b.dim() == 3:
            dw = rng.randn((x.shape[0], b.shape[-1]), generator, device=x.device, dtype=x.dtype)
            return math.sqrt(dt) * torch.einsum("bdm,bm->bd", b, dw)
        return math.sqrt(dt) * b * _randn_like(x, generator)

    def simulate(
        self,
        x0: Tensor,
        t0: float,
        t1: float,
        steps: int,
        generator: torch.Generator | None = None,
        return_path: bool = False,
    ) -> Tensor:
        """Euler-Maruyama: ``x <- x + a(x, t) dt + b(x, t) sqrt(dt) z`` (strong order 1/2, weak order 1).

        Returns ``X_{t1}`` ``(B, D)`` or the path ``(steps + 1, B, D)``.
        """
        if steps < 1:
            raise ValueError(f"GeneralSDE.simulate: steps must be >= 1, got {steps}")
        dt = (t1 - t0) / steps
        if dt <= 0:
            raise ValueError(f"GeneralSDE.simulate: need t1 > t0, got t0={t0}, t1={t1}")
        x, path = x0, [x0]
        for i in range(steps):
            t = t0 + i * dt
            inc = self.drift(x, t) * dt + self._noise(x, t, dt, generator)
            if self.manifold is not None:
                x = self.manifold.retract(x, self.manifold.project_tangent(x, inc))
            else:
                x = x + inc
            if return_path:
                path.append(x)
        return torch.stack(path) if return_path else x


# ====================================================================================================
def _reverse_step(
    score: ScoreFn, manifold: Manifold, times: list[float], method: str, drift: str, generator: torch.Generator | None
) -> ChainStep:
    """The step `t_i -> t_{i+1}` of the reverse SDE (Euler-Maruyama) or the PF-ODE (Euler), projected and retracted."""

    def step(x: Tensor, i: int, state: None) -> tuple[Tensor, None]:
        t = times[i]
        dt = t - times[i + 1]
        s = score(x, t)
        f = -x if drift == "ou" else 0.0
        if method == "sde":
            inc = (2 * s - f) * dt + math.sqrt(2 * dt) * _randn_like(x, generator)
        else:
            inc = (s - f) * dt
        return manifold.retract(x, manifold.project_tangent(x, inc)), None

    return step


def reverse_sample(
    score: ScoreFn,
    manifold: Manifold,
    x_init: Tensor,
    t_max: float,
    t_min: float,
    steps: int = 200,
    method: str = "sde",
    drift: str = "heat",
    generator: torch.Generator | None = None,
    grid: str = "geometric",
    return_path: bool = False,
    progress: bool = False,
) -> Tensor:
    """Integrate the reverse SDE or the probability-flow ODE from ``t_max`` down to ``t_min``.

    ``drift="heat"`` (``f = 0``, ``L = Delta``): SDE step ``2 s dt + sqrt(2 dt) z``, ODE step ``s dt``.
    ``drift="ou"`` (``f = -x``): SDE ``(x + 2 s) dt + sqrt(2 dt) z``, ODE ``(x + s) dt``.
    Each increment is projected onto ``T_x M`` and retracted. The last step evaluates the score at
    the last grid time above ``t_min``; the noise of that step is kept (``rho_{t_min}`` is the target).
    ``grid``: ``"geometric"`` (fine near ``t_min``) or ``"uniform"``, see ``sciffusion.core.grids.time_grid``;
    the loop is ``sciffusion.core.chain.run_chain`` (a non-finite value raises after it, naming the step).
    Returns ``x`` at ``t_min``, or with ``return_path`` the path ``(steps + 1, B, D)``.
    """
    if method not in _METHODS:
        raise ValueError(f"reverse_sample: method must be one of {_METHODS}, got {method!r}")
    if drift not in _DRIFTS:
        raise ValueError(f"reverse_sample: drift must be one of {_DRIFTS}, got {drift!r}")
    times = time_grid(None, steps, grid, t_max=t_max, t_min=t_min).tolist()
    path = [x_init]
    x = run_chain(
        _reverse_step(score, manifold, times, method, drift, generator), x_init, times,
        label=f"reverse sampling ({method})", hint="check the score near that time", progress=progress,
        callback=(lambda info: path.append(info["x"])) if return_path else None,
    )
    return torch.stack(path) if return_path else x


def pf_ode_log_likelihood(
    score: ScoreFn,
    manifold: Manifold,
    x: Tensor,
    t_min: float,
    t_max: float,
    steps: int = 100,
    divergence: Callable[[Tensor, float], Tensor] | None = None,
    drift: str = "heat",
) -> Tensor:
    """``log rho_{t_min}(x)`` (nats, w.r.t. Lebesgue / volume) by the probability-flow ODE, forward in t.

    Heat (compact flat ``M``): ``dx/dt = -s``, ``d/dt log rho_t(x_t) = div s``, so
    ``log rho_{t_min}(x) = -log vol(M) - int div s dt`` with ``rho_{t_max}`` taken uniform.
    OU: ``dx/dt = -x - s``, ``log rho_{t_min}(x) = log N(x_T; 0, I) - int (d + div s) dt``.
    Heun steps on a geometric grid, by the integrator the Gaussian engine uses
    (``sciffusion.core.probability_flow.flow_log_likelihood``); ``divergence`` defaults to the exact autograd
    divergence (flat coordinates).
    """
    if drift not in _DRIFTS:
        raise ValueError(f"pf_ode_log_likelihood: drift must be one of {_DRIFTS}, got {drift!r}")
    if drift == "heat" and manifold.dim != manifold.ambient_dim and divergence is None:
        raise ValueError("pf_ode_log_likelihood: pass divergence= on a curved manifold")
    d = x.shape[1]

    def field(y: Tensor, t: float) -> tuple[Tensor, Tensor]:
        if divergence is None:
            s, dv = divergence_of(lambda z: score(z, t), y)
        else:
            s, dv = score(y, t).detach(), divergence(y, t).detach()
        return (-y - s, -(d + dv)) if drift == "ou" else (-s, -dv)

    def log_prior(y: Tensor) -> Tensor:
        if drift == "ou":
            return -0.5 * (y * y).sum(-1) - 0.5 * d * math.log(2 * math.pi)
        return torch.full((y.shape[0],), -manifold.log_volume, dtype=y.dtype, device=y.device)

    times = time_grid(None, steps, "geometric", t_max=t_max, t_min=t_min).flip(0).tolist()

    def move(y: Tensor, v: Tensor) -> Tensor:
        return manifold.retract(y, manifold.project_tangent(y, v))

    return flow_log_likelihood(field, x, times, log_prior, method="heun", move=move)
