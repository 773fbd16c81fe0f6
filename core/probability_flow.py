"""The probability-flow ODE with its log-density, for both engines: one divergence estimator and one integrator.

Along an ODE `dy/dt = v(y, t)` the log-density of the transported law changes by the divergence of the
velocity (the instantaneous change of variables, Chen et al. 2018):

    d/dt log p_t(y(t)) = -div v(y(t), t),   so   log p_{t_0}(y(t_0)) = log p_{t_N}(y(t_N)) + int_{t_0}^{t_N} div v dt.

`flow_log_likelihood` integrates `y` and `int div v dt` together with an explicit Runge-Kutta method (a
`Tableau`: `heun` or `rk4`) over any grid of times, and adds the log-density at the far end. The Gaussian
engine (`sciffusion.core.diffusion.likelihood`) runs it in `u = log(sigma / alpha)`; the kernel engine
(`sciffusion.core.kernels.sde`) in OU or heat time on a manifold, where `move` is the retraction.

`divergence` gives `div f = sum_j d f_j / d x_j` per example: exact (`D` backward passes) or Hutchinson's
unbiased estimate `v^T (df/dx) v` with a Rademacher probe `v` (FFJORD, Grathwohl et al. 2019).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sciffusion.core import rng

__all__ = [
    "HEUN",
    "RK4",
    "TABLEAUS",
    "Tableau",
    "divergence",
    "flow_log_likelihood",
    "rademacher_probe",
    "stage_times",
]

Field = Callable[[Tensor, float], tuple[Tensor, Tensor]]
Move = Callable[[Tensor, Tensor], Tensor]


def divergence(fn: Callable[[Tensor], Tensor], x: Tensor, probe: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`f(x)` and `div f(x) = sum_j d f_j / d x_j` per example, both detached; `x` is `(B, ...)`, `f(x)` of its shape.

    Exact with `probe=None` (`D = x[0].numel()` backward passes, for small `D`); else Hutchinson's
    `E_v[v^T (df/dx) v] = div f` with the probe `v` `(B, D)` (one backward pass).
    """
    b = x.shape[0]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        flat = out.reshape(b, -1)
        if probe is not None:
            (grad,) = torch.autograd.grad((flat * probe).sum(), x)
            div = (grad.reshape(b, -1) * probe).sum(1)
        else:
            div = torch.zeros(b, dtype=x.dtype, device=x.device)
            dims = flat.shape[1]
            for i in range(dims):
                (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < dims - 1)
                div = div + grad.reshape(b, -1)[:, i]
    return out.detach(), div.detach()


def rademacher_probe(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """`v` `(B, D)` with independent entries `+-1` (probability 1/2 each), on `x`'s device and dtype."""
    b, dims = x.shape[0], x[0].numel()
    return rng.randint(0, 2, (b, dims), generator, device=x.device).to(x.dtype) * 2 - 1


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method: stage `i` evaluates `v` at `t + c_i h` and `y + h sum_j a_ij k_j`; the step
    is `y + h sum_i b_i k_i`."""

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]


HEUN = Tableau("heun", (0.0, 1.0), ((), (1.0,)), (0.5, 0.5))
RK4 = Tableau("rk4", (0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6))
TABLEAUS = {"heun": HEUN, "rk4": RK4}


def _stage_time(t0: float, t1: float, c: float) -> float:
    """`t0 + c (t1 - t0)`, exactly `t0` or `t1` at the ends, so that neighbouring steps share their grid times."""
    return t0 if c == 0.0 else t1 if c == 1.0 else t0 + c * (t1 - t0)


def stage_times(times: Sequence[float], method: str = "rk4") -> list[float]:
    """Every time at which `flow_log_likelihood(..., times, method=method)` evaluates the field, in order and
    without repeats (a caller may tabulate its coefficients there once)."""
    tab = _tableau(method)
    out: list[float] = []
    for t0, t1 in itertools.pairwise(times):
        for c in tab.c:
            t = _stage_time(t0, t1, c)
            if not out or out[-1] != t:
                out.append(t)
    return out


def _tableau(method: str) -> Tableau:
    if method not in TABLEAUS:
        raise ValueError(f"unknown ODE method {method!r}; known: {', '.join(sorted(TABLEAUS))}")
    return TABLEAUS[method]


def _add(y: Tensor, d: Tensor) -> Tensor:
    return y + d


def _combine(weights: Sequence[float], terms: Sequence[Tensor]) -> Tensor | float:
    """`sum_i w_i terms_i` over the non-zero weights."""
    return sum((w * k for w, k in zip(weights, terms, strict=False) if w != 0.0), start=0.0)


def _rk_step(field: Field, y: Tensor, t0: float, t1: float, tab: Tableau, move: Move) -> tuple[Tensor, Tensor]:
    """One step of `tab` from `t0` to `t1`: the new point and `int_{t0}^{t1} div v dt` by the same weights."""
    h = t1 - t0
    ks: list[Tensor] = []
    divs: list[Tensor] = []
    for c, row in zip(tab.c, tab.a, strict=True):
        y_stage = move(y, h * _combine(row, ks)) if row else y
        v, dv = field(y_stage, _stage_time(t0, t1, c))
        ks.append(v)
        divs.append(dv)
    return move(y, h * _combine(tab.b, ks)), h * _combine(tab.b, divs)


def flow_log_likelihood(
    field: Field,
    x: Tensor,
    times: Sequence[float],
    log_prior: Callable[[Tensor], Tensor],
    method: str = "rk4",
    move: Move | None = None,
) -> Tensor:
    """`log p_{t_0}(x)` per example by the ODE `dy/dt = v(y, t)` from `y(t_0) = x` along `times = (t_0, ..., t_N)`:

        log p_{t_0}(x) = log_prior(y(t_N)) + int_{t_0}^{t_N} div v(y(t), t) dt,

    with `field(y, t) -> (v, div v)` (`div v` of shape `(B,)`), an explicit Runge-Kutta `method` (`rk4`, `heun`)
    for both `y` and the integral, and `move(y, d)` (default `y + d`; a retraction on a manifold) for every
    displacement. `log_prior` is the log-density at `t_N` in the coordinates of `y`.
    """
    tab = _tableau(method)
    move = move or _add
    y = x.detach()
    integral = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for t0, t1 in itertools.pairwise(times):
        y, d_int = _rk_step(field, y, t0, t1, tab, move)
        integral = integral + d_int
    return log_prior(y) + integral
