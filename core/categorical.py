"""Discrete (categorical) diffusion over K classes, in continuous time t in [0, 1].

Austin et al. 2021 (D3PM), Hoogeboom et al. 2021 (multinomial diffusion). States are class indices;
distributions are row vectors. The transition from time s to time t > s is

    Q_{t|s} = a_{t|s} I + (1 - a_{t|s}) 1 m^T,     a_{t|s} = abar_t / abar_s,

with `m` the stationary distribution: uniform (m = 1/K) or the data marginal ("marginal",
DiGress, Vignac et al. 2023), and abar_t = alpha(t)^2 of a core `Schedule`. These matrices
compose: Q_{u|t} Q_{t|s} = Q_{u|s}, so q(x_t | x_0) = Cat(x_t; abar_t e_{x0} + (1 - abar_t) m).
Row i of a matrix is the distribution of the next state given state i.

Posterior (Bayes):  q(x_s | x_t, x_0) ∝ Q_{t|s}[x_s, x_t] * Qbar_s[x_0, x_s].
Reverse model (D3PM's x0-parameterisation):
    p(x_s | x_t) ∝ Q_{t|s}[x_s, x_t] * sum_k p_hat(x_0 = k | x_t) Qbar_s[k, x_s].
ELBO terms (nats per element): prior KL(q(x_1|x_0) || m), diffusion KL(q(x_s|x_t,x_0) || p(x_s|x_t))
per step, reconstruction -log p_hat(x_0 | x_{t_min}).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sciffusion.core.schedules import Schedule, get_schedule

__all__ = ["TRANSITIONS", "CategoricalProcess"]

TRANSITIONS = ("uniform", "marginal")
_TINY = 1e-30


class CategoricalProcess:
    """The categorical forward process, its posterior, ELBO terms and reverse sampler step.

    >>> proc = CategoricalProcess("cosine", num_classes=5)
    >>> x_t = proc.sample_xt(torch.tensor([0, 3]), torch.tensor([0.5, 0.9]))
    """

    def __init__(self, schedule: Schedule | str = "cosine", num_classes: int = 2,
                 transition: str = "uniform", marginal: Tensor | None = None) -> None:
        if transition not in TRANSITIONS:
            raise ValueError(f"unknown transition {transition!r}; expected one of {', '.join(TRANSITIONS)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.schedule = get_schedule(schedule)
        self.num_classes = num_classes
        self.transition = transition
        if transition == "uniform":
            m = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        else:
            if marginal is None:
                raise ValueError("transition='marginal' needs the class marginal (a (K,) tensor)")
            m = torch.as_tensor(marginal, dtype=torch.float64).flatten()
            if m.numel() != num_classes or bool((m < 0).any()) or float(m.sum()) <= 0:
                raise ValueError(f"marginal must be {num_classes} nonnegative numbers with a positive sum")
            m = m / m.sum()
        self.m = m

    # ----- coefficients and matrices ---------------------------------------------------------
    def abar(self, t: Tensor) -> Tensor:
        """abar_t = alpha(t)^2, float64, shape of t."""
        return torch.sigmoid(self.schedule.log_snr_fn(torch.as_tensor(t).double()))

    def keep(self, s: Tensor, t: Tensor) -> Tensor:
        """a_{t|s} = abar_t / abar_s (probability of 'keep' rather than 'resample from m')."""
        return self.abar(t) / self.abar(s)

    def matrix(self, s: Tensor, t: Tensor) -> Tensor:
        """Q_{t|s}, (B, K, K) float64: a I + (1 - a) 1 m^T."""
        a = self.keep(s, t)[:, None, None]
        eye = torch.eye(self.num_classes, dtype=torch.float64, device=a.device)
        return a * eye + (1 - a) * self.m.to(a.device)[None, None, :]

    def cumulative_matrix(self, t: Tensor) -> Tensor:
        """Qbar_t = Q_{t|0}-like matrix of q(x_t | x_0), (B, K, K): abar_t I + (1 - abar_t) 1 m^T."""
        a = self.abar(t)[:, None, None]
        eye = torch.eye(self.num_classes, dtype=torch.float64, device=a.device)
        return a * eye + (1 - a) * self.m.to(a.device)[None, None, :]

    def prior(self) -> Tensor:
        """The limiting distribution m, (K,) float64 (q(x_1 | x_0) ~ m for abar_1 ~ 0)."""
        return self.m

    # ----- forward process --------------------------------------------------------------------
    def q_probs(self, x0_probs: Tensor, t: Tensor) -> Tensor:
        """q(x_t | x_0) for a (B, K) distribution over x_0: abar_t p + (1 - abar_t) m."""
        a = self.abar(t)[:, None].to(x0_probs.device)
        return a * x0_probs.double() + (1 - a) * self.m.to(x0_probs.device)

    def sample_xt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) for class indices x0 (B,); returns (B,) long."""
        onehot = torch.nn.functional.one_hot(x0, self.num_classes).double()
        return self._draw(self.q_probs(onehot, t), generator)

    def _draw(self, probs: Tensor, generator: torch.Generator | None) -> Tensor:
        """Inverse-CDF draw of one class per row, from a (B, K) probability table."""
        u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64).to(probs.device)
        cdf = probs.double().cumsum(1)
        cdf = cdf / cdf[:, -1:]
        return torch.searchsorted(cdf, u).flatten().clamp(max=self.num_classes - 1)

    # ----- posterior and reverse step ---------------------------------------------------------
    def posterior_from_x0_probs(self, x_t: Tensor, x0_probs: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """p(x_s | x_t) ∝ Q_{t|s}[x_s, x_t] * (x0_probs Qbar_s)[x_s]; exact q(x_s | x_t, x_0) when
        x0_probs is one-hot. Shapes: x_t (B,), x0_probs (B, K) -> (B, K) float64."""
        a_ts = self.keep(s, t)[:, None].to(x_t.device)
        m = self.m.to(x_t.device)
        onehot_t = torch.nn.functional.one_hot(x_t, self.num_classes).double()
        like = a_ts * onehot_t + (1 - a_ts) * m[x_t][:, None]          # Q_{t|s}[j, x_t] over j
        prior_s = self.q_probs(x0_probs, s)                            # sum_k p0_k Qbar_s[k, j]
        post = like * prior_s
        return post / post.sum(1, keepdim=True).clamp_min(_TINY)

    def posterior(self, x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """q(x_s | x_t, x_0) for class indices x0, x_t (B,), (B, K) float64."""
        return self.posterior_from_x0_probs(x_t, torch.nn.functional.one_hot(x0, self.num_classes).double(), s, t)

    def step(self, x_t: Tensor, x0_logits: Tensor, s: Tensor, t: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
        """One reverse draw x_s ~ p(x_s | x_t) from the model's logits of x_0, (B,) long."""
        p0 = torch.softmax(x0_logits.double(), dim=1)
        return self._draw(self.posterior_from_x0_probs(x_t, p0, s, t), generator)

    # ----- ELBO terms (nats per element) ------------------------------------------------------
    @staticmethod
    def _kl(p: Tensor, q: Tensor) -> Tensor:
        p, q = p.double(), q.double()
        return (p * (torch.log(p.clamp_min(_TINY)) - torch.log(q.clamp_min(_TINY)))).sum(-1)

    def kl_prior(self, x0: Tensor) -> Tensor:
        """KL(q(x_1 | x_0) || m), (B,) nats."""
        t1 = torch.ones(x0.shape[0], dtype=torch.float64, device=x0.device)
        q1 = self.q_probs(torch.nn.functional.one_hot(x0, self.num_classes).double(), t1)
        return self._kl(q1, self.m.to(x0.device).expand_as(q1))

    def kl_step(self, x0: Tensor, x_t: Tensor, x0_logits: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """KL(q(x_s | x_t, x_0) || p(x_s | x_t)), (B,) nats: the diffusion term of one step."""
        q = self.posterior(x0, x_t, s, t)
        p = self.posterior_from_x0_probs(x_t, torch.softmax(x0_logits.double(), 1), s, t)
        return self._kl(q, p)

    def reconstruction_nll(self, x0: Tensor, x0_logits: Tensor) -> Tensor:
        """-log p_hat(x_0 | x_{t_min}) from the logits at the first time, (B,) nats."""
        return torch.nn.functional.cross_entropy(x0_logits.double(), x0, reduction="none")
