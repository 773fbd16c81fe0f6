"""Discrete (categorical) diffusion over K classes, in continuous time t in [0, 1].

Austin et al. 2021 (D3PM), Hoogeboom et al. 2021 (multinomial diffusion). States are class indices;
distributions are row vectors. The transition from time s to time t > s is

    Q_{t|s} = a_{t|s} I + (1 - a_{t|s}) 1 m^T,     a_{t|s} = abar_t / abar_s,

with `m` the stationary distribution: uniform (m = 1/K) or the data marginal ("marginal",
DiGress, Vignac et al. 2023), and abar_t = alpha(t)^2 of a core `Schedule`. These matrices
compose: Q_{u|t} Q_{t|s} = Q_{u|s}, so q(x_t | x_0) = Cat(x_t; abar_t e_{x0} + (1 - abar_t) m).
Row i of a matrix is the distribution of the next state given state i.

Posterior (Bayes):  q(x_s | x_t, x_0) = Q_{t|s}[x_s, x_t] Qbar_s[x_0, x_s] / Qbar_t[x_0, x_t].
Reverse model (x0-parameterisation, DiGress): the posterior averaged over the denoiser's p_hat(x_0 | x_t)::

    p(x_s | x_t) = sum_k q(x_s | x_t, x_0 = k) p_hat(x_0 = k | x_t)
                 = Q_{t|s}[x_s, x_t] * sum_k w_k Qbar_s[k, x_s],   w_k = p_hat(x_0 = k | x_t) / Qbar_t[k, x_t].

With the exact p(x_0 | x_t) this is the exact reverse marginal q(x_s | x_t), so a denoiser trained
by cross-entropy on x_0 samples the data. Dropping the division by Qbar_t[k, x_t] (the unnormalised
sum_k q(x_s, x_t | x_0 = k) p_hat(k)) counts the evidence of x_t twice: it favours x_0 = x_t, which
keeps noisy states (for graphs: noisy bonds, hence over-valent atoms and fragments).

ELBO terms (nats per element): prior KL(q(x_1|x_0) || m), diffusion KL(q(x_s|x_t,x_0) || p(x_s|x_t))
per step, reconstruction -log p_hat(x_0 | x_{t_min}).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sciffusion.core import rng
from sciffusion.core.diffusion.schedules import Schedule, get_schedule

__all__ = ["TRANSITIONS", "CategoricalELBO", "CategoricalProcess", "JointCategoricalProcess", "draw_categorical"]

TRANSITIONS = ("uniform", "marginal")
_TINY = 1e-30


def _per_example(coef: Tensor, like: Tensor) -> Tensor:
    """A per-example coefficient (B,) reshaped to (B, 1, ..., 1) to broadcast against `like`."""
    return coef.to(like.device).reshape(-1, *([1] * (like.ndim - 1)))


def draw_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One class per row of a (..., K) probability table (rows need not be normalised), by
    inverse CDF: x = #{k : F_k < u}, u ~ U(0, 1). Returns (...) long."""
    u = rng.rand((*probs.shape[:-1], 1), generator, device=probs.device, dtype=torch.float64)
    cdf = probs.double().cumsum(-1)
    cdf = cdf / cdf[..., -1:].clamp_min(_TINY)
    return torch.searchsorted(cdf.contiguous(), u).squeeze(-1).clamp(max=probs.shape[-1] - 1)


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
        """q(x_t | x_0) for a (B, ..., K) distribution over x_0: abar_t p + (1 - abar_t) m."""
        a = _per_example(self.abar(t), x0_probs)
        return a * x0_probs.double() + (1 - a) * self.m.to(x0_probs.device)

    def sample_xt(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) for class indices x0 (B, ...); returns x0's shape, long."""
        onehot = torch.nn.functional.one_hot(x0, self.num_classes).double()
        return self._draw(self.q_probs(onehot, t), generator)

    def _draw(self, probs: Tensor, generator: torch.Generator | None) -> Tensor:
        """Inverse-CDF draw of one class per row, from a (B, ..., K) probability table."""
        return draw_categorical(probs, generator)

    # ----- posterior and reverse step ---------------------------------------------------------
    def posterior_from_x0_probs(self, x_t: Tensor, x0_probs: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """p(x_s | x_t) = sum_k q(x_s | x_t, x_0 = k) x0_probs[k], computed as
        Q_{t|s}[x_s, x_t] * sum_k w_k Qbar_s[k, x_s] with w_k ∝ x0_probs[k] / Qbar_t[k, x_t]
        (module docstring); exact q(x_s | x_t, x_0) when x0_probs is one-hot.
        Shapes: x_t (B, ...), x0_probs (B, ..., K) -> (B, ..., K) float64."""
        onehot_t = torch.nn.functional.one_hot(x_t, self.num_classes).double()
        m_xt = self.m.to(x_t.device)[x_t][..., None]

        def column_xt(a: Tensor) -> Tensor:
            """Column x_t of a I + (1 - a) 1 m^T, over the row index."""
            a = _per_example(a, onehot_t)
            return a * onehot_t + (1 - a) * m_xt

        like = column_xt(self.keep(s, t))                              # Q_{t|s}[j, x_t] over j
        evidence = column_xt(self.abar(t))                             # Qbar_t[k, x_t] over k
        w = x0_probs.double() / evidence.clamp_min(_TINY)
        w = w / w.sum(-1, keepdim=True).clamp_min(_TINY)
        post = like * self.q_probs(w, s)                               # sum_k w_k Qbar_s[k, j]
        return post / post.sum(-1, keepdim=True).clamp_min(_TINY)

    def posterior(self, x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """q(x_s | x_t, x_0) for class indices x0, x_t (B,), (B, K) float64."""
        return self.posterior_from_x0_probs(x_t, torch.nn.functional.one_hot(x0, self.num_classes).double(), s, t)

    def step(self, x_t: Tensor, x0_logits: Tensor, s: Tensor, t: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
        """One reverse draw x_s ~ p(x_s | x_t) from the model's logits of x_0, (B,) long."""
        p0 = torch.softmax(x0_logits.double(), dim=-1)
        return self._draw(self.posterior_from_x0_probs(x_t, p0, s, t), generator)

    # ----- ELBO terms (nats per element) ------------------------------------------------------
    @staticmethod
    def _kl(p: Tensor, q: Tensor) -> Tensor:
        p, q = p.double(), q.double()
        return (p * (torch.log(p.clamp_min(_TINY)) - torch.log(q.clamp_min(_TINY)))).sum(-1)

    def kl_prior(self, x0: Tensor) -> Tensor:
        """KL(q(x_1 | x_0) || m), (B,) nats."""
        t1 = torch.ones(x0.shape[0], dtype=torch.float64, device=x0.device)
        q1 = self.q_probs(torch.nn.functional.one_hot(x0, self.num_classes).double(), t1)  # (B, ..., K)
        return self._kl(q1, self.m.to(x0.device).expand_as(q1))

    def kl_step(self, x0: Tensor, x_t: Tensor, x0_logits: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """KL(q(x_s | x_t, x_0) || p(x_s | x_t)), (B,) nats: the diffusion term of one step."""
        q = self.posterior(x0, x_t, s, t)
        p = self.posterior_from_x0_probs(x_t, torch.softmax(x0_logits.double(), -1), s, t)
        return self._kl(q, p)

    def reconstruction_nll(self, x0: Tensor, x0_logits: Tensor) -> Tensor:
        """-log p_hat(x_0 | x_{t_min}) from the logits at the first time, (B,) nats."""
        return -torch.log_softmax(x0_logits.double(), -1).gather(-1, x0[..., None])[..., 0]


# ----------------------------------------------------------------------------- several fields
@dataclass(frozen=True)
class CategoricalELBO:
    """Terms of the negative ELBO of several categorical fields, each `{field: (B,)}` in nats per example."""

    prior: dict[str, Tensor]
    diffusion: dict[str, Tensor]
    reconstruction: dict[str, Tensor]

    @property
    def total(self) -> Tensor:
        """Sum of every term of every field: an upper bound on `-log p(x_0)` in nats per example."""
        return sum(sum(d.values()) for d in (self.prior, self.diffusion, self.reconstruction))

    def labelled(self) -> dict[str, Tensor]:
        """`{"prior/<field>": ..., "diffusion/<field>": ..., "reconstruction/<field>": ..., "total": ...}`."""
        out = {f"{k}/{f}": v for k in ("prior", "diffusion", "reconstruction")
               for f, v in getattr(self, k).items()}
        out["total"] = self.total
        return out


class JointCategoricalProcess:
    """Independent categorical processes on several fields of one example, on a shared time t.

    Each field `f` is a tensor of class indices of shape (B, ...) with its own `CategoricalProcess`
    (number of classes and stationary distribution m_f). A field named in `symmetric` has shape
    (B, n, n) and holds an undirected relation (edge types): only its strict upper triangle
    i < j is a random variable; forward and reverse draws are made there and mirrored, and the
    diagonal keeps its given value. A boolean `mask` per field (B, ...) marks the real elements
    (padding is left untouched and left out of every term). The joint forward kernel is the
    product over fields and elements, so the posterior, the KL terms and the ELBO are sums of
    the per-element ones:  KL(q || p) = sum_f sum_{e in mask_f} KL(q_{f,e} || p_{f,e}).
    """

    def __init__(self, fields: dict[str, CategoricalProcess], symmetric: tuple[str, ...] | list[str] = ()) -> None:
        if not fields:
            raise ValueError("JointCategoricalProcess needs at least one field")
        unknown = sorted(set(symmetric) - set(fields))
        if unknown:
            raise ValueError(f"symmetric fields {unknown} are not among the fields {sorted(fields)}")
        self.fields = dict(fields)
        self.symmetric = frozenset(symmetric)

    def element_mask(self, name: str, x: Tensor, mask: dict[str, Tensor] | None) -> Tensor:
        """The elements of field `name` that are random variables: `mask` (all if None), and
        for a symmetric field only i < j."""
        m = torch.ones_like(x, dtype=torch.bool) if mask is None or name not in mask else mask[name].bool()
        if name in self.symmetric:
            n = x.shape[-1]
            m = m & torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        return m

    def _finish(self, name: str, new: Tensor, old: Tensor, mask: dict[str, Tensor] | None) -> Tensor:
        """Mirror a symmetric field's upper triangle; keep `old` outside the random elements."""
        if name in self.symmetric:
            n = new.shape[-1]
            upper = torch.ones(n, n, dtype=torch.bool, device=new.device).triu(1)
            new = torch.where(upper, new, new.transpose(-1, -2))
            keep = ~(self.element_mask(name, new, mask) | self.element_mask(name, new, mask).transpose(-1, -2))
        else:
            keep = ~self.element_mask(name, new, mask)
        return torch.where(keep, old, new)

    # ----- forward ----------------------------------------------------------------------------
    def sample_xt(self, x0: dict[str, Tensor], t: Tensor, mask: dict[str, Tensor] | None = None,
                  generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """x_t ~ q(x_t | x_0) for every field (symmetric ones mirrored, padding kept)."""
        return {f: self._finish(f, p.sample_xt(x0[f], t, generator), x0[f], mask) for f, p in self.fields.items()}

    def sample_prior(self, like: dict[str, Tensor], mask: dict[str, Tensor] | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """x_1 ~ m for every element (the limit of q(x_1 | x_0)); `like` gives shapes and padding values."""
        out = {}
        for f, p in self.fields.items():
            probs = p.m.to(like[f].device).expand(*like[f].shape, p.num_classes)
            out[f] = self._finish(f, draw_categorical(probs, generator), like[f], mask)
        return out

    # ----- reverse ----------------------------------------------------------------------------
    def step(self, x_t: dict[str, Tensor], logits: dict[str, Tensor], s: Tensor, t: Tensor,
             mask: dict[str, Tensor] | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One reverse draw x_s ~ p(x_s | x_t) per field, from the model's x_0 logits (B, ..., K)."""
        out = {}
        for f, p in self.fields.items():
            post = p.posterior_from_x0_probs(x_t[f], torch.softmax(logits[f].double(), -1), s, t)
            out[f] = self._finish(f, draw_categorical(post, generator), x_t[f], mask)
        return out

    # ----- ELBO terms, nats per example ---------------------------------------------------------
    def _sum(self, name: str, per_element: Tensor, x: Tensor, mask: dict[str, Tensor] | None) -> Tensor:
        m = self.element_mask(name, x, mask)
        return (per_element * m).flatten(1).sum(1)

    def kl_prior(self, x0: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """{field: sum over elements of KL(q(x_1 | x_0) || m)}, (B,) nats."""
        return {f: self._sum(f, p.kl_prior(x0[f]), x0[f], mask) for f, p in self.fields.items()}

    def kl_step(self, x0: dict[str, Tensor], x_t: dict[str, Tensor], logits: dict[str, Tensor], s: Tensor,
                t: Tensor, mask: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """{field: sum over elements of KL(q(x_s | x_t, x_0) || p(x_s | x_t))}, (B,) nats."""
        return {f: self._sum(f, p.kl_step(x0[f], x_t[f], logits[f], s, t), x0[f], mask)
                for f, p in self.fields.items()}

    def reconstruction_nll(self, x0: dict[str, Tensor], logits: dict[str, Tensor],
                           mask: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """{field: -sum over elements of log p_hat(x_0 | x_{t_1})}, (B,) nats."""
        return {f: self._sum(f, p.reconstruction_nll(x0[f], logits[f]), x0[f], mask)
                for f, p in self.fields.items()}

    def elbo(self, denoise: Callable[[dict[str, Tensor], Tensor], dict[str, Tensor]], x0: dict[str, Tensor],
             num_steps: int = 500, mask: dict[str, Tensor] | None = None,
             generator: torch.Generator | None = None) -> CategoricalELBO:
        """Negative ELBO on the grid t_i = i / T (nats per example), with one x_{t_i} ~ q(. | x_0) per step:

            -log p(x_0) <= KL(q(x_1|x_0) || m) + sum_{i=2}^T KL(q(x_{i-1}|x_i,x_0) || p(x_{i-1}|x_i))
                           - log p_hat(x_0 | x_{t_1}).

        `denoise(x_t, t)` returns the x_0 logits of every field; t is (B,) float64.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        b = next(iter(x0.values())).shape[0]
        dev = next(iter(x0.values())).device
        diffusion = {f: torch.zeros(b, dtype=torch.float64, device=dev) for f in self.fields}
        for i in range(2, num_steps + 1):
            t = torch.full((b,), i / num_steps, dtype=torch.float64, device=dev)
            s = torch.full((b,), (i - 1) / num_steps, dtype=torch.float64, device=dev)
            x_t = self.sample_xt(x0, t, mask, generator)
            for f, v in self.kl_step(x0, x_t, denoise(x_t, t), s, t, mask).items():
                diffusion[f] += v
        t1 = torch.full((b,), 1 / num_steps, dtype=torch.float64, device=dev)
        x1 = self.sample_xt(x0, t1, mask, generator)
        recon = self.reconstruction_nll(x0, denoise(x1, t1), mask)
        return CategoricalELBO(self.kl_prior(x0, mask), diffusion, recon)
