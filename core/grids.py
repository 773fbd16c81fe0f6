"""Decreasing time grids from `t_max` down to `t_min` (`t_0 = t_max > t_1 > … > t_N = t_min`), for the samplers of both engines.

Three spacings need no schedule, and serve any time axis (the Gaussian engine's `t` in [0, 1], the OU or heat
time `t > 0` of the kernel engine):

- `uniform`: equal steps in `t` (the DDPM / DDIM grid);
- `geometric`: equal steps in `log t` (`t_min > 0`), fine near `t_min` where a kernel score sharpens;
- `power`: `t_i = t_min + (t_max - t_min) u_i^p`, `u` in equal steps from 1 to 0 (`p = POWER_GRID_EXPONENT`
  unless `time_grid(power=p)`); `p > 1` crowds the steps toward `t_min` ever more finely, down to the last.

Four spacings follow the noise levels of a VP schedule (`t` in [0, 1]):

- `angle` (the default of `unipc`): the angle `phi = atan(sigma / alpha)` of the VP process, spaced as
  `phi_i = phi_min + (phi_max - phi_min) u_i^ANGLE_POWER`, `u` uniform from 1 to 0. With power 1 it is the
  uniform grid of the cosine schedule on every schedule (equal steps in `t` there, since `phi ~ pi t / 2`); the
  power 1.2 moves steps toward small noise, where the data's fine structure is resolved;
- `uniform`: as above;
- `log_snr`: equal steps in `lambda(t)` (DPM-Solver's choice);
- `karras`: `sigma~ = sigma / alpha` spaced as `(sigma~_max^(1/rho) + i/(N-1) (sigma~_min^(1/rho) - sigma~_max^(1/rho)))^rho`,
  `rho = 7` (Karras et al. 2022), with `sigma~_max` the schedule's own value at `t_max`.

`log_snr` and `karras` space their points over `sigma~` in [SIGMA_TILDE_MIN, SIGMA_TILDE_MAX] = [0.002, 80]
(the range of Karras et al. 2022, for data of unit scale) clipped to the schedule's own range on
[max(t_min, T_EPS), t_max]. Beyond it nothing happens worth a step: when `sigma~(t_max)` is larger (2e4 for
the clipped cosine schedule) the grid opens with one jump from `t_max`, which the samplers take first-order,
and when `t_min = 0` it closes with a final denoising step to `t = 0` (`lambda = +inf`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from sciffusion.core.diffusion.schedules import Schedule

__all__ = [
    "ANGLE_POWER", "GRIDS", "LOG_SNR_RANGE", "POWER_GRID_EXPONENT", "SCHEDULE_FREE", "T_EPS", "available_grids",
    "time_grid",
]

T_EPS = 1e-3
ANGLE_POWER = 1.2
POWER_GRID_EXPONENT = 2.0
SIGMA_TILDE_MIN, SIGMA_TILDE_MAX = 0.002, 80.0
LOG_SNR_RANGE = (-2 * math.log(SIGMA_TILDE_MAX), -2 * math.log(SIGMA_TILDE_MIN))


def _uniform(schedule: Schedule | None, steps: int, t_max: float, t_min: float) -> Tensor:
    return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)


def _geometric(schedule: Schedule | None, steps: int, t_max: float, t_min: float) -> Tensor:
    """`t_i = t_max (t_min / t_max)^(i / N)`."""
    return torch.logspace(math.log10(t_max), math.log10(t_min), steps + 1, dtype=torch.float64)


def _power(schedule: Schedule | None, steps: int, t_max: float, t_min: float,
           power: float = POWER_GRID_EXPONENT) -> Tensor:
    """`t_i = t_min + (t_max - t_min) u_i^power`, `u_i = 1 - i / N`."""
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return t_min + (t_max - t_min) * u**power


def _angle(schedule: Schedule, steps: int, t_max: float, t_min: float, power: float = ANGLE_POWER) -> Tensor:
    """`phi_i = phi(t_min) + (phi(t_max) - phi(t_min)) u_i^power`, `phi(t) = atan(exp(-lambda(t) / 2))`."""
    lam = schedule.log_snr_fn(torch.tensor([t_max, t_min], dtype=torch.float64))
    phi_max, phi_min = torch.atan(torch.exp(-0.5 * lam)).tolist()
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    phi = phi_min + (phi_max - phi_min) * u**power
    ts = schedule.t_from_log_snr(-2.0 * torch.log(torch.tan(phi[1:-1])))
    return torch.cat([torch.tensor([t_max], dtype=torch.float64), ts, torch.tensor([t_min], dtype=torch.float64)])


def _in_log_snr(schedule: Schedule, steps: int, t_max: float, t_min: float, rho: float | None) -> Tensor:
    end = max(t_min, T_EPS)
    lam_max, lam_end = schedule.log_snr_fn(torch.tensor([t_max, end], dtype=torch.float64)).tolist()
    lo, hi = max(lam_max, LOG_SNR_RANGE[0]), min(lam_end, LOG_SNR_RANGE[1])
    head = [t_max] if lo > lam_max else []  # one first-order jump down to sigma~ = SIGMA_TILDE_MAX
    tail = [0.0] if t_min == 0 else []
    regular = steps - len(head) - len(tail)
    if regular < 1 or hi <= lo:
        return _uniform(schedule, steps, t_max, t_min)
    u = torch.linspace(0.0, 1.0, regular + 1, dtype=torch.float64)
    if rho is None:
        lam_grid = lo + u * (hi - lo)
    else:  # sigma~ = exp(-lambda / 2); space sigma~^(1/rho) uniformly
        s_max, s_min = math.exp(-lo / 2) ** (1 / rho), math.exp(-hi / 2) ** (1 / rho)
        lam_grid = -2.0 * rho * torch.log(s_max + u * (s_min - s_max))
    ts = schedule.t_from_log_snr(lam_grid)
    if not head:
        ts[0] = t_max
    if hi == lam_end:
        ts[-1] = end
    return torch.cat([torch.tensor(head, dtype=torch.float64), ts, torch.tensor(tail, dtype=torch.float64)])


GRIDS: dict[str, Callable[[Schedule | None, int, float, float], Tensor]] = {
    "angle": _angle,
    "uniform": _uniform,
    "geometric": _geometric,
    "power": _power,
    "log_snr": lambda sch, n, hi, lo: _in_log_snr(sch, n, hi, lo, rho=None),
    "karras": lambda sch, n, hi, lo: _in_log_snr(sch, n, hi, lo, rho=7.0),
}


def available_grids() -> list[str]:
    """Names accepted by `time_grid`."""
    return sorted(GRIDS)


SCHEDULE_FREE = ("geometric", "power", "uniform")
POWERED = {"angle": _angle, "power": _power}  # grids whose exponent `time_grid(power=...)` sets


def time_grid(
    schedule: Schedule | None, steps: int, kind: str = "uniform", t_max: float = 1.0, t_min: float = 0.0,
    power: float | None = None,
) -> Tensor:
    """A strictly decreasing float64 grid of `steps + 1` times from `t_max` to `t_min`.

    `power` is the exponent of the `angle` grid (default `ANGLE_POWER`) or of the `power` grid (default
    `POWER_GRID_EXPONENT`); larger puts more steps at small noise. Other grids take none.

    With a VP `schedule`, times lie in [0, 1]; with `schedule=None` (the spacings in `SCHEDULE_FREE`), any
    `0 <= t_min < t_max` (`geometric` needs `t_min > 0`).

        time_grid(get_schedule("cosine"), 20, "log_snr")      # the Gaussian engine
        time_grid(None, 200, "geometric", t_max=8.0, t_min=0.01)  # OU time of the kernel engine
    """
    if kind not in GRIDS:
        raise ValueError(f"unknown time grid {kind!r}; known grids: {', '.join(available_grids())}")
    if schedule is None and kind not in SCHEDULE_FREE:
        raise ValueError(f"the {kind} grid follows a schedule's noise levels; pass a schedule or use one of {SCHEDULE_FREE}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    upper = 1.0 if schedule is not None else math.inf
    if not 0.0 <= t_min < t_max <= upper:
        bound = " <= 1" if schedule is not None else ""
        raise ValueError(f"need 0 <= t_min < t_max{bound}, got t_min={t_min}, t_max={t_max}")
    if kind == "geometric" and t_min <= 0.0:
        raise ValueError(f"the geometric grid needs t_min > 0, got t_min={t_min}")
    if power is not None and (kind not in POWERED or not power > 0):
        raise ValueError(f"power must be a positive exponent of the angle or power grid, got power={power} "
                         f"with the {kind} grid")
    return _cached_grid(schedule, steps, kind, float(t_max), float(t_min), power).clone()


@functools.lru_cache(maxsize=256)
def _cached_grid(schedule: Schedule | None, steps: int, kind: str, t_max: float, t_min: float,
                 power: float | None = None) -> Tensor:
    """Grids are pure functions of their arguments: build each once (the log-SNR ones invert by bisection)."""
    if power is None:
        ts = GRIDS[kind](schedule, steps, t_max, t_min)
    else:
        ts = POWERED[kind](schedule, steps, t_max, t_min, power)
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"the {kind} grid with {steps} steps on [{t_min}, {t_max}] is not strictly decreasing")
    return ts
