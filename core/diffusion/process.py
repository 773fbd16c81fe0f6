"""The Gaussian forward process and the conversions between model parameterisations.

Notation (the core guide): `x_t = alpha_t x_0 + sigma_t eps`, `eps ~ N(0, I)`, `t` in [0, 1].
Between times `s < t`: `alpha_{t|s} = alpha_t / alpha_s`, `sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`.
Model outputs are one of `eps`, `x0`, `v = alpha eps - sigma x0` or `score = -eps / sigma`.

Every method is rank-agnostic: `x` has shape `(B, ...)` and per-example coefficients of shape `(B,)`
are broadcast with `expand`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sciffusion.core import rng
from sciffusion.core.diffusion.schedules import Schedule, get_schedule

__all__ = ["PREDICTIONS", "DiffusionProcess", "expand", "x0_and_eps"]

PREDICTIONS = ("eps", "x0", "v", "score")


def expand(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape per-example coefficients `(B,)` to `(B, 1, ..., 1)` so they broadcast against `x`."""
    return coef.reshape(coef.shape[0], *([1] * (x.ndim - 1))).to(x.dtype)


def x0_and_eps(out: Tensor, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, src: str) -> tuple[Tensor, Tensor]:
    """`(x0, eps)` implied by a prediction `out` of type `src` at `x_t = alpha x0 + sigma eps`.

    `alpha` and `sigma` are python floats (one time for the whole batch, as inside a sampler step) or
    tensors broadcastable to `x_t`. With `v = alpha eps - sigma x0`:
    `x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)`, `eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)`.
    """
    a, s = alpha, sigma
    if src == "eps":
        return (x_t - s * out) / a, out
    if src == "score":
        eps = -s * out
        return (x_t - s * eps) / a, eps
    if src == "x0":
        return out, (x_t - a * out) / s
    if src == "v":
        norm = a * a + s * s
        return (a * x_t - s * out) / norm, (s * x_t + a * out) / norm
    raise ValueError(f"unknown prediction type {src!r}; expected one of {', '.join(PREDICTIONS)}")


class DiffusionProcess:
    """The forward process of a schedule, with the model's prediction type.

    >>> proc = DiffusionProcess(get_schedule("cosine"), prediction="eps")
    >>> x_t, eps = proc.add_noise(torch.zeros(4, 2), torch.full((4,), 0.5))
    """

    def __init__(self, schedule: Schedule | str = "cosine", prediction: str = "eps") -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; expected one of {', '.join(PREDICTIONS)}")
        self.schedule = get_schedule(schedule)
        self.prediction = prediction

    def __repr__(self) -> str:
        return f"DiffusionProcess(schedule={self.schedule.name!r}, prediction={self.prediction!r})"

    def to_dict(self) -> dict:
        """JSON-ready description; `DiffusionProcess.from_dict` rebuilds the process."""
        return {"schedule": self.schedule.to_dict(), "prediction": self.prediction}

    @classmethod
    def from_dict(cls, d: dict) -> DiffusionProcess:
        """Inverse of `to_dict`."""
        return cls(get_schedule(**d["schedule"]), prediction=d["prediction"])

    # ----- coefficients -------------------------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        """`alpha(t)`."""
        return self.schedule.alpha(t)

    def sigma(self, t: Tensor) -> Tensor:
        """`sigma(t)`."""
        return self.schedule.sigma(t)

    def log_snr(self, t: Tensor) -> Tensor:
        """`lambda(t) = log(alpha^2 / sigma^2)`."""
        return self.schedule.log_snr(t)

    def check_time(self, t: Tensor, x: Tensor, name: str = "t") -> Tensor:
        """Validate that `t` is a float tensor of shape `(B,)` with values in [0, 1] matching `x` of shape `(B, ...)`.

        On the CPU a bad value raises `ValueError`; on an accelerator the range check is asynchronous
        (`torch._assert_async`), so it never forces a host-device synchronisation.
        """
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a float tensor of shape ({x.shape[0]},), got {type(t).__name__}")
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(
                f"{name} must have shape ({x.shape[0]},) to match x of shape {tuple(x.shape)}, got {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        inside = (t >= 0) & (t <= 1)
        if t.device.type == "cpu":
            if not bool(inside.all()):
                bad = t[~inside]
                raise ValueError(f"{name} must lie in [0, 1]; found {bad[:5].tolist()}")
        else:
            torch._assert_async(inside.all(), f"{name} must lie in [0, 1]")
        return t

    def transition(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """`(alpha_{t|s}, sigma_{t|s}^2)` for `s <= t`, computed in float64 from the log-SNR.

        `sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 = sigma_t^2 (1 - exp(lambda_t - lambda_s))`.
        """
        lam_s, lam_t = self.schedule.log_snr_fn(s.double()), self.schedule.log_snr_fn(t.double())
        a_s, a_t = torch.sigmoid(lam_s).sqrt(), torch.sigmoid(lam_t).sqrt()
        var_t = torch.sigmoid(-lam_t)
        var_ts = var_t * -torch.expm1(lam_t - lam_s)
        return (a_t / a_s).to(t.dtype), var_ts.to(t.dtype)

    # ----- forward process -----------------------------------------------------------------------
    def add_noise(
        self, x0: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw `x_t = alpha_t x_0 + sigma_t eps` from `q(x_t | x_0)`; returns `(x_t, eps)`.

        `noise` may be given (for instance noise projected to a subspace); else `eps ~ N(0, I)`.
        """
        self.check_time(t, x0)
        if noise is None:
            noise = rng.randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but x0 has shape {tuple(x0.shape)}")
        return expand(self.alpha(t), x0) * x0 + expand(self.sigma(t), x0) * noise, noise

    def forward_step(
        self, x_s: Tensor, s: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """One draw from `q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I)`, `s <= t`.

        On the DDPM grid this is `x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) eps`.
        """
        self.check_time(s, x_s, "s")
        self.check_time(t, x_s, "t")
        a_ts, var_ts = self.transition(s, t)
        noise = rng.randn(x_s.shape, generator, device=x_s.device, dtype=x_s.dtype)
        return expand(a_ts, x_s) * x_s + expand(var_ts.sqrt(), x_s) * noise

    def posterior(self, x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of `q(x_s | x_t, x_0)` for `s < t`.

        `mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x_0`,
        `var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2`; `var` has shape `(B,)`.
        """
        self.check_time(s, x_t, "s")
        self.check_time(t, x_t, "t")
        a_ts, var_ts = self.transition(s, t)
        var_s, var_t, a_s = self.sigma(s) ** 2, self.sigma(t) ** 2, self.alpha(s)
        mean = expand(a_ts * var_s / var_t, x_t) * x_t + expand(a_s * var_ts / var_t, x_t) * x0
        return mean, var_ts * var_s / var_t

    # ----- parameterisations ---------------------------------------------------------------------
    def convert(self, out: Tensor, x_t: Tensor, t: Tensor, src: str, dst: str) -> Tensor:
        """Convert a prediction `out` of type `src` at `(x_t, t)` to type `dst`.

        With `x_t = alpha x0 + sigma eps` and `v = alpha eps - sigma x0`:
        `x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)`, `eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)`,
        `eps = (x_t - alpha x0) / sigma`, `x0 = (x_t - sigma eps) / alpha`, `score = -eps / sigma`.
        """
        for kind in (src, dst):
            if kind not in PREDICTIONS:
                raise ValueError(f"unknown prediction type {kind!r}; expected one of {', '.join(PREDICTIONS)}")
        if src == dst:
            return out
        a, s = expand(self.alpha(t), x_t), expand(self.sigma(t), x_t)
        x0, eps = x0_and_eps(out, x_t, a, s, src)
        if dst == "eps":
            return eps
        if dst == "x0":
            return x0
        if dst == "score":
            return -eps / s
        return a * eps - s * x0

    def predict_x0(self, model_out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """`x0` implied by the model's output (of type `self.prediction`)."""
        return self.convert(model_out, x_t, t, self.prediction, "x0")

    def predict_eps(self, model_out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """`eps` implied by the model's output (of type `self.prediction`)."""
        return self.convert(model_out, x_t, t, self.prediction, "eps")

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The regression target of the model's prediction type for `x_t = alpha x0 + sigma eps`."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        a, s = expand(self.alpha(t), x0), expand(self.sigma(t), x0)
        if self.prediction == "v":
            return a * eps - s * x0
        return -eps / s
