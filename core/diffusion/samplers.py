"""Reverse samplers: stateless steps over an explicit decreasing time grid, and the `sample` entry point.

Every sampler is one function `step(denoise, x, iv, state, noise) -> (x_s, state)` that moves `x` from time
`iv.t` to the earlier time `iv.s`; `denoise(x, t)` returns a `Prediction` with `.x0` and `.eps`. The only state any step
carries is explicit (the previous `x0_hat` of the multistep solver). With `x_t = alpha_t x0 + sigma_t eps`,
`sigma~ = sigma / alpha` and `lambda' = log(alpha / sigma)`::

    | method | update | order |
    |---|---|---|
    | `ddpm` | `x_s ~ N((x_t - sigma_{t|s}^2 / sigma_t eps) / alpha_{t|s}, sigma_{t|s}^2 sigma_s^2 / sigma_t^2)` (Ho et al. 2020) | weak 1 |
    | `ddim` | `x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z`, `c^2 = eta^2 sigma_{t|s}^2 sigma_s^2 / sigma_t^2` (Song et al. 2021) | 1 |
    | `ddpm_beta` | DDPM with the larger variance (Ho et al.'s `sigma^2 = beta`): mean as `ddpm`, variance `sigma_{t|s}^2`; `euler_maruyama` is an older name for it | weak 1 |
    | `heun` | probability-flow ODE `dx~/dsigma~ = eps` by Heun's method (Karras et al. 2022) | 2 |
    | `dpmpp_2m` | DPM-Solver++(2M) in `lambda'` (Lu et al. 2022) | 2 |
    | `unipc`, `unipc_3`, `unipc_bh1` | UniPC (Zhao et al. 2023): multistep predictor in `lambda'` on data predictions, corrected with the next evaluation; order 2 (3) with `B(h) = e^{-h} - 1` (`bh1`: `-h`) | 3 (4) |

`step_intervals` (the coefficients of every step), `make_denoiser` (the model as `denoise(x, t) -> Prediction`,
with guidance) and `ancestral_mean` are public: other samplers over the same grid use them (e.g.
`sciffusion.core.diffusion.inpainting.smc_inpaint`).

`heun` takes a first-order step wherever `sigma~` falls by more than `HEUN_MAX_RATIO` (4) in one step (the
first step of a uniform grid on a clipped cosine schedule, where `sigma~` drops from 2e4), and on the
last step to `sigma = 0`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sciffusion.core.chain import ChainStep, run_chain
from sciffusion.core.diffusion.process import DiffusionProcess, x0_and_eps
from sciffusion.core.diffusion.schedules import Schedule
from sciffusion.core.grids import LOG_SNR_RANGE, time_grid

__all__ = [
    "SAMPLERS",
    "Interval",
    "Prediction",
    "ancestral_mean",
    "available_samplers",
    "default_t_max",
    "make_denoiser",
    "noise_source",
    "register_sampler",
    "sample",
    "step_intervals",
]

HEUN_MAX_RATIO = 4.0
PRIOR_MEAN_MIN_SIGMA_TILDE = 20.0  # default starts at least this noisy get the prior's mean alpha E[x_0]
DEFAULT_METHOD = "unipc"  # what `sample` runs without `method=`
LOWER_ORDER_FINAL_BELOW = 15  # UniPC lowers its order over the last steps of grids shorter than this (or ending at 0)

class Prediction:
    """The model's output at `(x_t, t)`; `x0` and `eps` are derived on first use, so a step pays only for
    what it reads (`x_t = alpha x0 + sigma eps`)."""

    __slots__ = ("_eps", "_x0", "alpha", "kind", "out", "sigma", "x")

    def __init__(self, out: Tensor, x: Tensor, alpha: float, sigma: float, kind: str) -> None:
        self.out, self.x, self.alpha, self.sigma, self.kind = out, x, alpha, sigma, kind
        self._x0 = out if kind == "x0" else None
        self._eps = out if kind == "eps" else (-sigma * out if kind == "score" else None)

    def _derive_missing(self) -> None:
        """Fill whichever of x0 / eps is missing from the other, or both from `out` (v prediction)."""
        if self._eps is not None:
            self._x0 = self.x.sub(self._eps, alpha=self.sigma).div_(self.alpha)
        elif self._x0 is not None:
            self._eps = self.x.sub(self._x0, alpha=self.alpha).div_(self.sigma)
        else:
            self._x0, self._eps = x0_and_eps(self.out, self.x, self.alpha, self.sigma, self.kind)

    @property
    def x0(self) -> Tensor:
        if self._x0 is None:
            self._derive_missing()
        return self._x0

    @property
    def eps(self) -> Tensor:
        if self._eps is None:
            self._derive_missing()
        return self._eps


Denoise = Callable[[Tensor, float], Prediction]
NoiseFn = Callable[[], Tensor]


@dataclass(frozen=True)
class Interval:
    """Coefficients of one step from `t` down to `s < t` (python floats, computed in float64 on the host)."""

    index: int
    t: float
    s: float
    alpha_t: float
    sigma_t: float
    alpha_s: float
    sigma_s: float
    alpha_ts: float  # alpha_{t|s}
    var_ts: float  # sigma_{t|s}^2
    lambda_t: float  # log(alpha_t / sigma_t)
    lambda_s: float
    eta: float = 0.0
    count: int = 0  # number of steps in the whole grid (for lower-order final steps)
    to_data: bool = False  # the grid ends at sigma = 0 (lambda' = +inf)

    @property
    def ancestral_std(self) -> float:
        """Standard deviation of `q(x_s | x_t, x_0)`: `sigma_{t|s} sigma_s / sigma_t`."""
        return math.sqrt(self.var_ts) * self.sigma_s / self.sigma_t


def step_intervals(process: DiffusionProcess, ts: Tensor, eta: float = 0.0) -> list[Interval]:
    """The `Interval` of every step `ts[i] -> ts[i + 1]` of a decreasing float64 grid `ts` (e.g. from
    `sciffusion.core.grids.time_grid`): `alpha`, `sigma` at both ends, the transition `alpha_{t|s}`,
    `sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2` and `lambda' = log(alpha / sigma)`, evaluated once on the host."""
    t, s = ts[:-1], ts[1:]
    alpha, sigma = process.alpha(ts), process.sigma(ts)
    a_ts, var_ts = process.transition(s, t)
    half_lam = 0.5 * process.log_snr(ts)
    out, to_data = [], bool(sigma[-1] == 0)
    for i in range(len(t)):
        out.append(
            Interval(
                index=i, t=float(t[i]), s=float(s[i]),
                alpha_t=float(alpha[i]), sigma_t=float(sigma[i]),
                alpha_s=float(alpha[i + 1]), sigma_s=float(sigma[i + 1]),
                alpha_ts=float(a_ts[i]), var_ts=float(var_ts[i]),
                lambda_t=float(half_lam[i]), lambda_s=float(half_lam[i + 1]), eta=eta, count=len(t),
                to_data=to_data,
            )
        )
    return out


# ----- the steps -------------------------------------------------------------------------------
def ancestral_mean(x: Tensor, eps: Tensor, iv: Interval) -> Tensor:
    """Mean of `q(x_s | x_t, x0_hat)` in terms of the noise prediction:
    `(x_t - sigma_{t|s}^2 / sigma_t eps_hat) / alpha_{t|s}` (Ho et al. 2020, eq. 11)."""
    return x.add(eps, alpha=-iv.var_ts / iv.sigma_t).mul_(1.0 / iv.alpha_ts)


def ddpm_step(denoise: Denoise, x: Tensor, iv: Interval, state: Any, noise: NoiseFn) -> tuple[Tensor, Any]:
    """Ancestral step: a draw from `q(x_s | x_t, x0_hat)`."""
    pred = denoise(x, iv.t)
    if iv.sigma_s == 0.0:
        return pred.x0, state
    return ancestral_mean(x, pred.eps, iv).add_(noise(), alpha=iv.ancestral_std), state


def ddpm_beta_step(denoise: Denoise, x: Tensor, iv: Interval, state: Any, noise: NoiseFn) -> tuple[Tensor, Any]:
    """DDPM step with variance `beta = sigma_{t|s}^2`: `x_s = (x_t + sigma_{t|s}^2 score) / alpha_{t|s} + sigma_{t|s} z`,
    `score = -eps / sigma_t` (the reverse SDE's exponential-integrator step, not its Euler-Maruyama step)."""
    pred = denoise(x, iv.t)
    if iv.sigma_s == 0.0:
        return pred.x0, state
    return ancestral_mean(x, pred.eps, iv).add_(noise(), alpha=math.sqrt(iv.var_ts)), state


def ddim_step(denoise: Denoise, x: Tensor, iv: Interval, state: Any, noise: NoiseFn) -> tuple[Tensor, Any]:
    """DDIM: `x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z`; `eta = 0` is deterministic."""
    pred = denoise(x, iv.t)
    if iv.sigma_s == 0.0:
        return pred.x0, state
    c = iv.eta * math.sqrt(iv.var_ts) * iv.sigma_s / iv.sigma_t
    out = (pred.x0 * iv.alpha_s).add_(pred.eps, alpha=math.sqrt(max(iv.sigma_s**2 - c * c, 0.0)))
    return (out.add_(noise(), alpha=c) if c > 0 else out), state


def heun_step(denoise: Denoise, x: Tensor, iv: Interval, state: Any, noise: NoiseFn) -> tuple[Tensor, Any]:
    """Heun on `dx~/dsigma~ = eps(x, t)`, `x~ = x / alpha`: average the slopes at both ends of the step."""
    pred = denoise(x, iv.t)
    euler = (pred.x0 * iv.alpha_s).add_(pred.eps, alpha=iv.sigma_s)
    if iv.sigma_s == 0.0 or (iv.sigma_t / iv.alpha_t) > HEUN_MAX_RATIO * (iv.sigma_s / iv.alpha_s):
        return euler, state
    eps_s = denoise(euler, iv.s).eps
    ratio = iv.alpha_s / iv.alpha_t
    return (x * ratio).add_(pred.eps + eps_s, alpha=(iv.sigma_s - ratio * iv.sigma_t) * 0.5), state


def dpmpp_2m_step(denoise: Denoise, x: Tensor, iv: Interval, state: Any, noise: NoiseFn) -> tuple[Tensor, Any]:
    """DPM-Solver++(2M): `x_s = sigma_s / sigma_t x_t - alpha_s (e^{-h} - 1) D`, `h = lambda'_s - lambda'_t`,
    `D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev`, `r = h_prev / h`; first-order (`D = x0_t`) on the first step.
    State: `(x0_prev, h_prev)`.
    """
    x0 = denoise(x, iv.t).x0
    if iv.sigma_s == 0.0:
        return x0, None
    h = iv.lambda_s - iv.lambda_t
    if state is None:
        d = x0
    else:
        x0_prev, h_prev = state
        r = h_prev / h
        d = (x0 * (1 + 1 / (2 * r))).add_(x0_prev, alpha=-1 / (2 * r))
    return (x * (iv.sigma_s / iv.sigma_t)).add_(d, alpha=-iv.alpha_s * math.expm1(-h)), (x0, h)


@dataclass(frozen=True)
class MultistepState:
    """What a UniPC step hands to the next: the chain point `x` it started from, its interval, the order it
    used, and the latest data predictions `x0_hat` with their `lambda'` (oldest first)."""

    x: Tensor
    iv: Interval
    order: int
    history: tuple[tuple[Tensor, float], ...]


def _unipc_weights(h: float, rks: list[float], variant: str) -> tuple[float, float, list[float]]:
    """`(e^{-h} - 1, B(h), b)` of UniPC in data prediction (Zhao et al. 2023, eq. 7-8): `b_i = i! phi_{i+1}(-h)
    / B(h)` with `phi_1(-h) = (e^{-h} - 1) / (-h) - 1`, `phi_{k+1} = phi_k / (-h) - 1 / (k + 1)!`, and
    `B(h) = -h` (`bh1`) or `e^{-h} - 1` (`bh2`). `rks` are the ratios `(lambda'_k - lambda'_0) / h` of the
    points used (the target, ratio 1, last)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k, factorial, b = h_phi_1 / hh - 1.0, 1.0, []
    for i in range(1, len(rks) + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, b


def _solve_small(a: list[list[float]], b: list[float]) -> list[float]:
    """`x` with `a x = b` for a small dense system (Gaussian elimination with partial pivoting, python floats:
    no tensor is made on the host in the sampling loop)."""
    n = len(b)
    m = [[*row, rhs] for row, rhs in zip(a, b, strict=True)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[piv] = m[piv], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            m[r] = [v - f * w for v, w in zip(m[r], m[col], strict=True)]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def _unipc_update(x: Tensor, iv: Interval, target: tuple[float, float, float], x0: Tensor,
                  older: list[tuple[Tensor, float]], new: Tensor | None, variant: str) -> Tensor:
    """One UniPC update from `x` at `iv.t` (prediction `x0`) to the point `target = (lambda', alpha, sigma)`:
    `x_s = sigma_s / sigma_t x - alpha_s (e^{-h} - 1) x0 - alpha_s B(h) sum_k a_k D_k`, `D_k = (x0_k - x0) / r_k`.

    Predictor (`new is None`): the `D_k` of the `older` predictions (newest first), weights from `R a = b`,
    `R_ik = r_k^i` (`a = 1/2` at order 2). Corrector (`new` = the prediction at the target point): adds
    `D = new - x0` at `r = 1`, and `a = 1/2` alone is the trapezoidal rule.
    """
    lam_s, alpha_s, sigma_s = target
    h = lam_s - iv.lambda_t
    rks = [(lam - iv.lambda_t) / h for _, lam in older] + [1.0]
    h_phi_1, b_h, b = _unipc_weights(h, rks, variant)
    out = (x * (sigma_s / iv.sigma_t)).add_(x0, alpha=-alpha_s * h_phi_1)
    diffs = [(xk - x0) / r for (xk, _), r in zip(older, rks, strict=False)]
    if new is not None:
        diffs.append(new - x0)
    n = len(diffs)
    if n == 1:
        rhos = [0.5]
    elif n > 1:
        rhos = _solve_small([[r**i for r in rks[:n]] for i in range(n)], b[:n])
    for rho, d in zip(rhos if n else [], diffs, strict=True):
        out.add_(d, alpha=-alpha_s * b_h * rho)
    return out


def unipc_step(denoise: Denoise, x: Tensor, iv: Interval, state: Any, noise: NoiseFn, order: int = 2,
               variant: str = "bh2") -> tuple[Tensor, Any]:
    """UniPC (Zhao et al. 2023) in data prediction: correct the point just reached with the evaluation made
    there (UniC, no extra evaluation), then predict the next one (UniP) from up to `order` predictions;
    first-order on the first step and on the last (to `sigma = 0`), and order `<= count - index` near the end
    on grids of fewer than `LOWER_ORDER_FINAL_BELOW` steps and on every grid that ends at `sigma = 0`: there
    the last steps stay long in `lambda'` whatever the step count (on the `angle` grid the k-th step from the
    end tends to `h = 2 * 1.2 * log((k + 1) / k)`), and extrapolating old predictions over them costs most.
    Order `p` with the corrector converges at order `p + 1` (on grids that end at `sigma = 0`, at order above
    2: the final steps do not shrink in `lambda'`).
    """
    x0 = denoise(x, iv.t).x0
    history: tuple[tuple[Tensor, float], ...] = ()
    if state is not None:
        older = list(reversed(state.history[:-1]))[: state.order - 1]
        here = (iv.lambda_t, iv.alpha_t, iv.sigma_t)
        x = _unipc_update(state.x, state.iv, here, state.history[-1][0], older, x0, variant)
        history = state.history
    history = (*history, (x0, iv.lambda_t))[-order:]
    if iv.sigma_s == 0.0:
        return x0 * iv.alpha_s, None
    this_order = min(order, len(history))
    if iv.count < LOWER_ORDER_FINAL_BELOW or iv.to_data:
        this_order = min(this_order, iv.count - iv.index)
    older = list(reversed(history[:-1]))[: this_order - 1]
    x_s = _unipc_update(x, iv, (iv.lambda_s, iv.alpha_s, iv.sigma_s), x0, older, None, variant)
    return x_s, MultistepState(x, iv, this_order, history)


StepFn = Callable[[Denoise, Tensor, Interval, Any, NoiseFn], tuple[Tensor, Any]]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its step, the default time grid, and whether it draws noise."""

    step: StepFn
    grid: str
    stochastic: bool


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(ddpm_step, "uniform", True),
    "ddim": SamplerSpec(ddim_step, "uniform", False),
    "ddpm_beta": SamplerSpec(ddpm_beta_step, "uniform", True),
    "euler_maruyama": SamplerSpec(ddpm_beta_step, "uniform", True),  # the older name of ddpm_beta
    "heun": SamplerSpec(heun_step, "log_snr", False),
    "dpmpp_2m": SamplerSpec(dpmpp_2m_step, "log_snr", False),
    "unipc": SamplerSpec(unipc_step, "angle", False),
    "unipc_3": SamplerSpec(functools.partial(unipc_step, order=3), "angle", False),
    "unipc_bh1": SamplerSpec(functools.partial(unipc_step, variant="bh1"), "angle", False),
}


def register_sampler(name: str, step: StepFn, grid: str = "uniform", stochastic: bool = True) -> None:
    """Add a sampler: `step(denoise, x, iv, state, noise) -> (x_s, state)` and its default grid."""
    if name in SAMPLERS:
        raise ValueError(f"a sampler named {name!r} is already registered")
    SAMPLERS[name] = SamplerSpec(step, grid, stochastic)


def available_samplers() -> list[str]:
    """Names accepted by `sample(method=...)`."""
    return sorted(SAMPLERS)


# ----- the entry point -------------------------------------------------------------------------
def _model_device(model: Callable) -> torch.device | None:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return None


def make_denoiser(
    model: Callable,
    process: DiffusionProcess,
    cond: Any,
    guidance: float | None,
    null_cond: Any,
    coefficients: dict[float, tuple[float, float]] | None = None,
) -> Denoise:
    """Wrap the model as `denoise(x, t) -> Prediction` (`.x0`, `.eps`), with classifier-free guidance
    `out = out(null) + w (out(cond) - out(null))` (affine in the output, so any prediction type).

    `coefficients` maps the grid's times to their `(alpha, sigma)`, computed once on the host, so that a step
    does not evaluate the schedule again."""
    coefficients = {} if coefficients is None else coefficients
    guided = guidance is not None and guidance != 1.0
    if guided and cond is None:
        raise ValueError("classifier-free guidance needs a condition: pass cond= with guidance=")
    batch_both = guided and isinstance(cond, Tensor) and isinstance(null_cond, Tensor) and cond.shape == null_cond.shape

    def call(x: Tensor, t: Tensor, c: Any) -> Tensor:
        out = model(x, t, c) if c is not None else model(x, t)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the model returned {got}; it must return a tensor of x_t's shape {tuple(x.shape)}")
        return out

    def denoise(x: Tensor, t_value: float) -> Prediction:
        t = torch.full((x.shape[0],), t_value, device=x.device, dtype=x.dtype)
        if not guided:
            out = call(x, t, cond).to(x.dtype)
        elif batch_both:
            both = call(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null_cond])).to(x.dtype)
            out_c, out_u = both.chunk(2)
            out = out_u + guidance * (out_c - out_u)
        else:
            out_c, out_u = call(x, t, cond).to(x.dtype), call(x, t, null_cond).to(x.dtype)
            out = out_u + guidance * (out_c - out_u)
        if t_value not in coefficients:
            tt = torch.tensor([t_value], dtype=torch.float64)
            coefficients[t_value] = (float(process.alpha(tt)[0]), float(process.sigma(tt)[0]))
        alpha, sigma = coefficients[t_value]
        return Prediction(out, x, alpha, sigma, process.prediction)

    return denoise


def _shift_to_prior_mean(denoise: Denoise, x: Tensor, iv: Interval) -> tuple[Tensor, Denoise]:
    """Start from `x + alpha x0_hat(x)` instead of `x ~ N(0, (alpha^2 + sigma^2) I)` at a high noise level.

    The marginal there has mean `alpha E[x_0]`, and `x0_hat = E[x_0 | x]` is almost flat in `x` (its Jacobian is
    `alpha Cov[x_0 | x] / sigma^2`), so `alpha x0_hat(x)` is that mean; an error `e` of an `eps` network moves it
    by only `sigma e`. The first step reuses this evaluation (with `x0_hat` held), so it costs nothing.
    """
    pred = denoise(x, iv.t)
    shifted = x.add(pred.x0, alpha=iv.alpha_t)
    held = Prediction(pred.x0, shifted, iv.alpha_t, iv.sigma_t, "x0")
    pending = [True]

    def denoise_once_held(x_arg: Tensor, t_value: float) -> Prediction:
        if pending[0] and x_arg is shifted and t_value == iv.t:
            pending[0] = False
            return held
        return denoise(x_arg, t_value)

    return shifted, denoise_once_held


def default_t_max(process: DiffusionProcess) -> float:
    """Where sampling starts by default: `t = 1`, except for `eps` and `score` models on a schedule whose
    `sigma~(1) = sigma / alpha` exceeds `SIGMA_TILDE_MAX` (80): they start where `sigma~ = 80`.

    `x0 = (x_t - sigma eps) / alpha` multiplies a network's error in `eps` by `1 / alpha` (2e4 at `t = 1` on the
    clipped cosine schedule), which deterministic samplers carry to the end; at `sigma~ = 80` the factor is
    80, and starting there from `N(0, I)` costs a prior mismatch of `alpha = 1/80` of the data mean.
    """
    if process.prediction in ("x0", "v"):
        return 1.0
    return _eps_start(process.schedule)


@functools.lru_cache(maxsize=64)
def _eps_start(schedule: Schedule) -> float:
    lam_1 = float(schedule.log_snr_fn(torch.ones(1, dtype=torch.float64))[0])
    if lam_1 >= LOG_SNR_RANGE[0]:
        return 1.0
    return float(schedule.t_from_log_snr(torch.tensor([LOG_SNR_RANGE[0]], dtype=torch.float64))[0])


def sample(
    model: Callable,
    process: DiffusionProcess,
    shape: tuple[int, ...],
    method: str = DEFAULT_METHOD,
    steps: int = 20,
    *,
    generator: torch.Generator | None = None,
    cond: Any = None,
    guidance: float | None = None,
    null_cond: Any = None,
    progress: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_init: Tensor | None = None,
    known: Tensor | None = None,
    mask: Tensor | None = None,
    resample: int = 1,
    project: Callable[[Tensor], Tensor] | None = None,
    eta: float = 0.0,
    grid: str | Tensor | None = None,
    t_max: float | None = None,
    t_min: float = 0.0,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Draw samples of shape `shape` by integrating the reverse process from `t_max` down to `t_min`.

    - `model(x_t, t, cond=None)` returns the process's prediction type, of `x_t`'s shape; `t` is `(B,)`.
    - `method` (default `unipc`, on its `angle` grid): a registered sampler, see `available_samplers()`.
    - `grid`: a named spacing (`angle`, `uniform`, `log_snr`, `karras`; default: the sampler's own) or an explicit
      strictly decreasing tensor of times, which then overrides `steps`, `t_max` and `t_min`.
    - `t_max` (default `default_t_max(process)`): where the chain starts.
    - `x_init` (default `N(0, (alpha^2 + sigma^2) I)` at `t_max`, moved to the prior's mean `alpha x0_hat` by
      the first evaluation when `sigma / alpha > 20` there and nothing is inpainted) starts the chain.
    - Inpainting: `known` values where `mask` is 1 are imposed at every step as draws of
      `q(x_s | x_0 = known)` (replacement); `resample > 1` re-noises each step `q(x_t | x_s)` and repeats it
      (RePaint, Lugmayr et al. 2022), which moves the unknown part toward the exact conditional.
    - `project` maps the chain into a subspace after every step (e.g. zero centre of mass).
    - `guidance=w` with `cond` and `null_cond`: classifier-free guidance.
    - No host-device synchronisation inside the loop: a non-finite value is recorded on the device and
      raised after the loop, naming the first bad step.

    Steps: `_check_arguments`, `step_intervals`, `_start_point`, `make_denoiser`, `_resampled_step` in `run_chain`.
    """
    spec = _check_arguments(method, eta, resample, known, mask)
    device = _sampling_device(model, device, x_init)
    ts = _sampling_grid(process, spec, steps, grid, default_t_max(process) if t_max is None else t_max, t_min)
    intervals = step_intervals(process, ts, eta)
    noise = noise_source(shape, generator, device, dtype)
    impose = _constraint(shape, known, mask, project, noise, device, dtype)
    first = intervals[0]
    x = impose(_start_point(first, shape, noise, x_init, device, dtype), first.alpha_t, first.sigma_t)
    denoise = make_denoiser(model, process, cond, guidance, null_cond, _grid_coefficients(intervals))
    if x_init is None and known is None and first.sigma_t > PRIOR_MEAN_MIN_SIGMA_TILDE * first.alpha_t:
        x, denoise = _shift_to_prior_mean(denoise, x, first)
    return run_chain(
        _resampled_step(spec.step, denoise, intervals, noise, impose, resample), x, ts.tolist(),
        label=f"sampling ({method})", hint="check the model output and the schedule near that time",
        progress=progress, callback=callback,
    )


# ----- the steps of `sample` ---------------------------------------------------------------------
def _check_arguments(method: str, eta: float, resample: int, known: Tensor | None, mask: Tensor | None) -> SamplerSpec:
    """The registered sampler `method`, after checking the options that depend on it."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; known samplers: {', '.join(available_samplers())}")
    if eta != 0.0 and method != "ddim":
        raise ValueError(f"eta applies to the 'ddim' sampler only, not to {method!r}")
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    if (known is None) != (mask is None):
        raise ValueError("inpainting needs both known= and mask=")
    return SAMPLERS[method]


def _sampling_device(model: Callable, device: torch.device | str | None, x_init: Tensor | None) -> torch.device:
    """`device`, else the device of the model's parameters, else `x_init`'s, else the CPU."""
    if device is not None:
        return torch.device(device)
    return _model_device(model) or (x_init.device if x_init is not None else torch.device("cpu"))


def _sampling_grid(
    process: DiffusionProcess, spec: SamplerSpec, steps: int, grid: str | Tensor | None, t_max: float, t_min: float
) -> Tensor:
    """An explicit grid (checked: strictly decreasing times in [0, 1]) or the named one (default: the sampler's)."""
    if not isinstance(grid, Tensor):
        return time_grid(process.schedule, steps, grid or spec.grid, t_max=t_max, t_min=t_min)
    ts = grid.detach().to("cpu", torch.float64)
    if ts.ndim != 1 or len(ts) < 2 or not bool((ts[1:] < ts[:-1]).all()) or ts[0] > 1 or ts[-1] < 0:
        raise ValueError(f"an explicit grid must be a strictly decreasing 1-D tensor of times in [0, 1], got {ts.tolist()}")
    return ts


def noise_source(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> NoiseFn:
    """`noise()`: a standard normal draw of `shape`, made on the generator's device and moved to `device`."""
    gen_device = generator.device if generator is not None else device

    def noise() -> Tensor:
        return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)

    return noise


def _start_point(
    first: Interval, shape: tuple[int, ...], noise: NoiseFn, x_init: Tensor | None, device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """`x_init` (checked against `shape`), else a draw of `N(0, (alpha^2 + sigma^2) I)` at the first time."""
    if x_init is None:
        return math.sqrt(first.alpha_t**2 + first.sigma_t**2) * noise()
    if tuple(x_init.shape) != tuple(shape):
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(shape)}")
    return x_init.to(device=device, dtype=dtype)


Impose = Callable[[Tensor, float, float], Tensor]


def _constraint(
    shape: tuple[int, ...], known: Tensor | None, mask: Tensor | None, project: Callable[[Tensor], Tensor] | None,
    noise: NoiseFn, device: torch.device, dtype: torch.dtype,
) -> Impose:
    """`impose(x, alpha, sigma)`: the known values as a draw of `q(x_t | x_0 = known)` where `mask` is 1
    (replacement inpainting), then `project`; the identity when neither is given."""
    if known is not None:
        if tuple(known.shape) != tuple(shape) or tuple(mask.shape) != tuple(shape):
            raise ValueError(
                f"known {tuple(known.shape)} and mask {tuple(mask.shape)} must both have the sample shape {tuple(shape)}"
            )
        known = known.to(device=device, dtype=dtype)
        mask = mask.to(device=device, dtype=dtype)

    def impose(x: Tensor, alpha: float, sigma: float) -> Tensor:
        if known is not None:
            noisy_known = alpha * known + (sigma * noise() if sigma > 0 else 0.0)
            x = mask * noisy_known + (1 - mask) * x
        return project(x) if project is not None else x

    return impose


def _grid_coefficients(intervals: list[Interval]) -> dict[float, tuple[float, float]]:
    """`(alpha, sigma)` at every time of the grid, as the intervals already hold them (no schedule calls in the loop)."""
    coefficients = {iv.t: (iv.alpha_t, iv.sigma_t) for iv in intervals}
    coefficients.update({iv.s: (iv.alpha_s, iv.sigma_s) for iv in intervals})
    return coefficients


def _resampled_step(
    step_fn: StepFn, denoise: Denoise, intervals: list[Interval], noise: NoiseFn, impose: Impose, resample: int
) -> ChainStep:
    """The chain's step `i`: the sampler's step, the constraint imposed at `s`, and with `resample > 1` the
    RePaint loop (re-noise by `q(x_t | x_s)`, impose at `t`, step again; Lugmayr et al. 2022)."""

    def step(x: Tensor, i: int, state: Any) -> tuple[Tensor, Any]:
        iv = intervals[i]
        for r in range(resample):
            x_s, new_state = step_fn(denoise, x, iv, state, noise)
            x_s = impose(x_s, iv.alpha_s, iv.sigma_s)
            if r + 1 < resample and iv.sigma_s > 0:
                x = impose(iv.alpha_ts * x_s + math.sqrt(iv.var_ts) * noise(), iv.alpha_t, iv.sigma_t)
        return x_s, new_state

    return step
