"""Data with an exact denoiser: diagonal Gaussian mixtures under the Gaussian forward process.

For `x_0 ~ sum_k w_k N(m_k, diag(s_k^2))` the noised marginal is
`p_t(x) = sum_k w_k N(x; alpha_t m_k, diag(alpha_t^2 s_k^2 + sigma_t^2))`, so the score, the posterior
mean `E[x_0 | x_t]` (Tweedie) and the log-density are closed-form. Tests and benchmarks use it as the
perfect network, so that only the sampler's own error is measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sciffusion.core import rng
from sciffusion.core.diffusion.process import DiffusionProcess

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """A diagonal Gaussian mixture in `R^d` with weights `(K,)`, means `(K, d)` and standard deviations `(K, d)`."""

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        self.means = means
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand_as(means).clone()
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (means.shape[0],) or (weights <= 0).any():
            raise ValueError(f"weights must be {means.shape[0]} positive numbers, got {weights.tolist()}")
        self.weights = weights / weights.sum()

    @classmethod
    def gaussian(cls, mean: Tensor, std: Tensor) -> GaussianMixture:
        """A single Gaussian `N(mean, diag(std^2))`."""
        mean = torch.as_tensor(mean, dtype=torch.float64)
        return cls(torch.ones(1), mean[None], torch.as_tensor(std, dtype=torch.float64)[None])

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to(self, device: torch.device | str) -> GaussianMixture:
        """The same mixture with its parameters on `device` (its samples and denoiser then run there)."""
        return GaussianMixture(self.weights.to(device), self.means.to(device), self.stds.to(device))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` draws of `x_0` (float64, shape `(n, d)`)."""
        k = rng.multinomial(self.weights, n, generator=generator)
        z = rng.randn((n, self.dim), generator, device=self.means.device, dtype=torch.float64)
        return self.means[k] + self.stds[k] * z

    def _parts(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Responsibilities `r_k(x)` `(B, K)`, centred `x - alpha m_k` `(B, K, d)` and variances `(B, K, d)`."""
        x = x.double()
        a, s = alpha.double()[:, None, None], sigma.double()[:, None, None]
        var = a * a * self.stds[None] ** 2 + s * s
        diff = x[:, None, :] - a * self.means[None]
        log_n = -0.5 * (diff * diff / var + torch.log(2 * math.pi * var)).sum(-1)
        resp = torch.softmax(log_n + self.weights.log()[None], dim=1)
        return resp, diff, var

    def log_prob(self, x: Tensor, alpha: Tensor | None = None, sigma: Tensor | None = None) -> Tensor:
        """`log p_t(x)` of the marginal with coefficients `alpha, sigma` of shape `(B,)` (default: the data, `t = 0`)."""
        b = x.shape[0]
        alpha = torch.ones(b, dtype=torch.float64, device=x.device) if alpha is None else alpha
        sigma = torch.zeros(b, dtype=torch.float64, device=x.device) if sigma is None else sigma
        a, s = alpha.double()[:, None, None], sigma.double()[:, None, None]
        var = a * a * self.stds[None] ** 2 + s * s
        diff = x.double()[:, None, :] - a * self.means[None]
        log_n = -0.5 * (diff * diff / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.logsumexp(log_n + self.weights.log()[None], dim=1)

    def score(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """`grad log p_t(x) = -sum_k r_k(x) (x - alpha m_k) / (alpha^2 s_k^2 + sigma^2)`."""
        resp, diff, var = self._parts(x, alpha, sigma)
        return -(resp[..., None] * diff / var).sum(1).to(x.dtype)

    def posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Tweedie: `E[x_0 | x_t] = sum_k r_k (m_k + alpha s_k^2 (x_t - alpha m_k) / (alpha^2 s_k^2 + sigma^2))`."""
        resp, diff, var = self._parts(x, alpha, sigma)
        a = alpha.double()[:, None, None]
        comp = self.means[None] + a * self.stds[None] ** 2 * diff / var
        return (resp[..., None] * comp).sum(1).to(x.dtype)

    def denoiser(self, process: DiffusionProcess) -> Callable[..., Tensor]:
        """The exact model for `process`: `model(x_t, t, cond=None)` returns the process's prediction type."""

        def model(x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
            alpha, sigma = process.alpha(t.double()), process.sigma(t.double())
            x0 = self.posterior_mean(x_t, alpha, sigma)
            return process.convert(x0, x_t, t.to(x_t.dtype), "x0", process.prediction)

        return model
