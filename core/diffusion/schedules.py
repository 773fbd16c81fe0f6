"""Noise schedules: the Gaussian forward process `x_t = alpha(t) x_0 + sigma(t) eps`, `t` in [0, 1].

A schedule is defined by its log-SNR `lambda(t) = log(alpha^2 / sigma^2)`, strictly decreasing in `t`.
For a variance-preserving (VP) schedule `alpha^2 = sigmoid(lambda)` and `sigma^2 = sigmoid(-lambda)`,
which keeps both ends exact in float64 (no `1 - alphabar` cancellation near `t = 0`).

The discrete DDPM schedule with `T` steps is the same process on the grid `t_i = i / T`:
`alphabar_i = alpha(t_i)^2` and `beta_i = 1 - alphabar_i / alphabar_{i-1}`.

Schedules live in a registry: `get_schedule(name)` builds one, `register_schedule(name)` adds one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "available_schedules",
    "cosine_schedule",
    "ddpm_table_schedule",
    "get_schedule",
    "linear_schedule",
    "quadratic_schedule",
    "register_schedule",
    "sigmoid_schedule",
]

LogSNR = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Schedule:
    """A VP noise schedule given by its log-SNR function `lambda(t)` on `t` in [0, 1].

    `log_snr_fn` receives and returns float64 tensors; `alpha`, `sigma` and the tables derive from it.
    `params` records the constructor arguments so that a schedule round-trips through JSON.
    """

    name: str
    log_snr_fn: LogSNR
    params: tuple[tuple[str, float], ...] = ()

    def log_snr(self, t: Tensor) -> Tensor:
        """`lambda(t) = log(alpha(t)^2 / sigma(t)^2)`, computed in float64, returned in `t`'s dtype."""
        return self.log_snr_fn(_as_f64(t)).to(_out_dtype(t))

    def alpha(self, t: Tensor) -> Tensor:
        """`alpha(t) = sqrt(sigmoid(lambda(t)))`."""
        return torch.sigmoid(self.log_snr_fn(_as_f64(t))).sqrt().to(_out_dtype(t))

    def sigma(self, t: Tensor) -> Tensor:
        """`sigma(t) = sqrt(sigmoid(-lambda(t)))`."""
        return torch.sigmoid(-self.log_snr_fn(_as_f64(t))).sqrt().to(_out_dtype(t))

    def alphas_cumprod(self, num_steps: int) -> Tensor:
        """`alphabar_i = alpha(i / T)^2` for `i = 0..T` (float64, length `T + 1`, `alphabar_0 = alpha(0)^2`)."""
        t = torch.arange(num_steps + 1, dtype=torch.float64) / _check_steps(num_steps)
        return torch.sigmoid(self.log_snr_fn(t))

    def betas(self, num_steps: int) -> Tensor:
        """`beta_i = 1 - alphabar_i / alphabar_{i-1}` for `i = 1..T` (float64, length `T`)."""
        log_abar = torch.nn.functional.logsigmoid(
            self.log_snr_fn(torch.arange(num_steps + 1, dtype=torch.float64) / _check_steps(num_steps))
        )
        return -torch.expm1(log_abar[1:] - log_abar[:-1])

    def t_from_log_snr(self, log_snr: Tensor, iters: int = 80) -> Tensor:
        """Invert `lambda(t)` by bisection (float64); `lambda` is strictly decreasing on [0, 1]."""
        target = _as_f64(log_snr)
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = self.log_snr_fn(mid) > target
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(_out_dtype(log_snr))

    def to_dict(self) -> dict:
        """JSON-ready description: `{"name": ..., **params}`; `get_schedule(**d)` rebuilds it."""
        return {"name": self.name, **dict(self.params)}


def _as_f64(t: Tensor) -> Tensor:
    return torch.as_tensor(t).to(torch.float64)


def _out_dtype(t: Tensor) -> torch.dtype:
    t = torch.as_tensor(t)
    return t.dtype if t.is_floating_point() else torch.float32


def _check_steps(num_steps: int) -> int:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"number of steps must be a positive integer, got {num_steps!r}")
    return num_steps


def _log_snr_from_log_alphabar(log_abar: Tensor) -> Tensor:
    """`lambda = log(abar) - log(1 - abar)` from `log(abar)`, stable at both ends."""
    return log_abar - torch.log(-torch.expm1(log_abar))


def linear_schedule(beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """Linear betas (DDPM, Ho et al. 2020) as the VP SDE of Song et al. 2021.

    `alphabar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2))`; with `T = 1000` steps the betas
    run from about 1e-4 to 2e-2, the DDPM values.
    """

    def log_snr(t: Tensor) -> Tensor:
        integral = beta_min * t + 0.5 * (beta_max - beta_min) * t * t
        return -integral - torch.log(-torch.expm1(-integral))

    return Schedule("linear", log_snr, (("beta_min", beta_min), ("beta_max", beta_max)))


def quadratic_schedule(beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """Quadratic betas: `sqrt(beta)` linear in `t` from `sqrt(beta_min)` to `sqrt(beta_max)`.

    `beta(t) = (a + (b - a) t)^2` with `a, b = sqrt(beta_min), sqrt(beta_max)`;
    `alphabar(t) = exp(-int_0^t beta) = exp(-((a + (b - a) t)^3 - a^3) / (3 (b - a)))`.
    """
    a, b = math.sqrt(beta_min), math.sqrt(beta_max)

    def log_snr(t: Tensor) -> Tensor:
        integral = ((a + (b - a) * t) ** 3 - a**3) / (3.0 * (b - a))
        return -integral - torch.log(-torch.expm1(-integral))

    return Schedule("quadratic", log_snr, (("beta_min", beta_min), ("beta_max", beta_max)))


def cosine_schedule(offset: float = 0.008, min_alpha: float = 5e-5) -> Schedule:
    """Cosine schedule (Nichol & Dhariwal 2021): `alphabar(t) = cos^2(u(t) pi/2) / cos^2(u(0) pi/2)`,
    `u(t) = (t + offset) / (1 + offset)`.

    The unclipped schedule reaches `alpha = 0` at `t = 1`; as improved-diffusion clips its last beta,
    time is rescaled so that `alpha(1) = min_alpha` (`sigma / alpha` about 2e4 at `t = 1`).
    `1 - alphabar = sin(th - th0) sin(th + th0) / cos^2(th0)` avoids cancellation near `t = 0`.
    """
    th0 = 0.5 * math.pi * offset / (1.0 + offset)

    def raw(t: Tensor) -> Tensor:
        th = 0.5 * math.pi * (t + offset) / (1.0 + offset)
        return 2.0 * torch.log(torch.cos(th)) - torch.log(torch.sin(th - th0) * torch.sin(th + th0))

    # Largest t_end <= 1 with alpha(t_end) = min_alpha: solve cos(th) = min_alpha cos(th0) exactly.
    th_end = math.acos(min_alpha * math.cos(th0))
    t_end = th_end / (0.5 * math.pi) * (1.0 + offset) - offset

    def log_snr(t: Tensor) -> Tensor:
        return raw(t * t_end)

    return Schedule("cosine", log_snr, (("offset", offset), ("min_alpha", min_alpha)))


def sigmoid_schedule(start: float = -3.0, end: float = 3.0, tau: float = 1.0, min_alpha: float = 5e-5) -> Schedule:
    """Sigmoid schedule (Jabri et al. 2022, "Scalable adaptive computation"):
    `alphabar(t) = (v(end) - v(t (end - start) + start)) / (v(end) - v(start))`, `v(x) = sigmoid(x / tau)`,
    with time rescaled so that `alpha(1) = min_alpha`.
    """

    def abar(t: Tensor) -> Tensor:
        v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
        v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
        v = torch.sigmoid((t * (end - start) + start) / tau)
        return (v_end - v) / (v_end - v_start)

    # alphabar is monotone: find t_end with abar(t_end) = min_alpha^2 by bisection once.
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(abar(torch.tensor(mid, dtype=torch.float64))) > min_alpha**2:
            lo = mid
        else:
            hi = mid
    t_end = lo

    def log_snr(t: Tensor) -> Tensor:
        a = abar(t * t_end)
        v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
        v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
        one_minus = (torch.sigmoid((t * t_end * (end - start) + start) / tau) - v_start) / (v_end - v_start)
        return torch.log(a) - torch.log(one_minus)

    return Schedule("sigmoid", log_snr, (("start", start), ("end", end), ("tau", tau), ("min_alpha", min_alpha)))


def _ddpm_betas(kind: str, beta_start: float, beta_end: float, num_steps: int) -> Tensor:
    """The betas of a discrete DDPM table (float64): `linear` from `beta_start` to `beta_end` (Ho et al. 2020);
    `squaredcos_cap_v2`: `beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)`,
    `abar(u) = cos^2((u + 0.008) / 1.008 pi/2)` (Nichol & Dhariwal 2021)."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    abar = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.clamp(1 - abar[1:] / abar[:-1], max=0.999)


def ddpm_table_schedule(kind: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
                        num_steps: int = 1000) -> Schedule:
    """A discrete DDPM table as a continuous schedule: timestep `k` (0-based, `k < T`) is `t = (k + 1) / T`, so
    `alphabar((k + 1) / T) = prod_{j <= k} (1 - beta_j)` exactly (`alphabar(0) = 1`), and `log alphabar` is
    linear in `t` between the grid points (constant beta within each step).

    A model trained on the table with timestep `k` sees `k = T t - 1`; diffusers' and MONAI's timesteps `k`
    are the core's grid `t = (k + 1) / T` (then `t = 0`).
    """
    if kind not in ("linear", "squaredcos_cap_v2"):
        raise ValueError(f"unknown DDPM beta table {kind!r}; known: linear, squaredcos_cap_v2")
    betas = _ddpm_betas(kind, beta_start, beta_end, _check_steps(num_steps))
    log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])

    def log_snr(t: Tensor) -> Tensor:
        pos = torch.clamp(t, 0.0, 1.0) * num_steps
        i = torch.clamp(pos.floor().long(), max=num_steps - 1)
        frac = pos - i
        la = log_abar[i] + frac * (log_abar[i + 1] - log_abar[i])
        return _log_snr_from_log_alphabar(la)

    name = "ddpm_linear" if kind == "linear" else "ddpm_squaredcos_cap_v2"
    params = (("beta_start", beta_start), ("beta_end", beta_end), ("num_steps", num_steps))
    return Schedule(name, log_snr, params if kind == "linear" else (("num_steps", num_steps),))


_REGISTRY: dict[str, Callable[..., Schedule]] = {
    "linear": linear_schedule,
    "cosine": cosine_schedule,
    "quadratic": quadratic_schedule,
    "sigmoid": sigmoid_schedule,
    "ddpm_linear": functools.partial(ddpm_table_schedule, "linear"),
    "ddpm_squaredcos_cap_v2": lambda num_steps=1000: ddpm_table_schedule("squaredcos_cap_v2", num_steps=num_steps),
}


def register_schedule(name: str, factory: Callable[..., Schedule] | None = None):
    """Register a schedule factory under `name`; usable as a decorator.

    >>> @register_schedule("my_linear")
    ... def my_linear() -> Schedule:
    ...     return linear_schedule(0.1, 10.0)
    """

    def add(fn: Callable[..., Schedule]) -> Callable[..., Schedule]:
        if name in _REGISTRY:
            raise ValueError(f"a schedule named {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return add(factory) if factory is not None else add


def available_schedules() -> list[str]:
    """Names accepted by `get_schedule`."""
    return sorted(_REGISTRY)


def get_schedule(name: str | Schedule, **params: float) -> Schedule:
    """Build the schedule registered as `name` (a `Schedule` passes through unchanged)."""
    if isinstance(name, Schedule):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown schedule {name!r}; known schedules: {', '.join(available_schedules())}")
    return _REGISTRY[name](**params)
