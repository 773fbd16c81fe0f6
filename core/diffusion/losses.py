"""Training losses: the denoising (simple) loss with uniform or min-SNR weighting, and the ELBO.

`denoising_loss` regresses the model output on the target of the process's prediction type
(`eps`, `x0`, `v` or `score`) at `t ~ U(t_min, 1)`. Weightings, in terms of `SNR = alpha^2 / sigma^2`:

- `uniform`: every element counts once (for `score`, the loss is `|sigma s + eps|^2`, the usual `sigma^2` weight);
- `min_snr`: Min-SNR-gamma (Hang et al. 2023): the `x0`-loss weight `min(SNR, gamma)` expressed for the
  prediction type: `min(SNR, gamma) / SNR` for `eps`, `min(SNR, gamma)` for `x0`, `min(SNR, gamma) / (SNR + 1)` for `v`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sciffusion.core import rng
from sciffusion.core.diffusion.elbo import ELBOTerms, elbo, vdm_elbo
from sciffusion.core.diffusion.process import DiffusionProcess, expand

__all__ = ["WEIGHTINGS", "ELBOTerms", "denoising_loss", "elbo", "loss_weight", "vdm_elbo"]

WEIGHTINGS = ("uniform", "min_snr")


def loss_weight(process: DiffusionProcess, t: Tensor, weighting: str = "uniform", gamma: float = 5.0) -> Tensor:
    """Per-example weight `(B,)` of the squared error of the process's prediction type."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
    if weighting == "uniform":
        return torch.ones_like(t)
    snr = torch.exp(process.log_snr(t))
    clipped = torch.clamp(snr, max=gamma)
    return {"eps": clipped / snr, "score": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[process.prediction]


def denoising_loss(
    model: Callable[..., Tensor],
    process: DiffusionProcess,
    x0: Tensor,
    cond: Any = None,
    weighting: str = "uniform",
    generator: torch.Generator | None = None,
    weights: Tensor | None = None,
    t_min: float = 1e-4,
    gamma: float = 5.0,
    cond_dropout: float = 0.0,
    null_cond: Tensor | None = None,
    p_terminal: float = 0.0,
) -> Tensor:
    """`E_{t, eps} w(t) |f(x_t, t) - target|^2`, averaged over examples and elements.

    `t ~ U(t_min, 1)`, or, with `p_terminal > 0`, the mixture `p_terminal delta_1 + (1 - p_terminal)
    U(t_min, 1)`. This reweights the times without changing the minimiser at any `t`; the point mass
    at `t = 1` trains harder the regression `E[x0 | cond]` that a conditional model's first
    sampling step returns, for models whose point estimate is that prediction.

    - `weights`: optional per-element weights broadcastable to `x0` (e.g. latitude weights), normalised
      to mean 1 over the elements they cover so that the scale of the loss does not change.
    - `cond_dropout`: probability of replacing `cond` by `null_cond` per example, to train a model for
      classifier-free guidance.
    """
    b = x0.shape[0]
    t = t_min + (1.0 - t_min) * rng.rand((b,), generator, device=x0.device, dtype=x0.dtype)
    if p_terminal > 0:
        terminal = rng.rand((b,), generator, device=x0.device, dtype=x0.dtype) < p_terminal
        t = torch.where(terminal, torch.ones_like(t), t)
    x_t, eps = process.add_noise(x0, t, generator=generator)
    if cond_dropout > 0:
        if not isinstance(cond, Tensor) or null_cond is None:
            raise ValueError("cond_dropout needs a tensor cond and a null_cond of the same shape per example")
        drop = rng.rand((b,), generator, device=x0.device) < cond_dropout
        cond = torch.where(expand(drop, cond).bool(), null_cond.expand_as(cond), cond)
    out = model(x_t, t, cond) if cond is not None else model(x_t, t)
    if out.shape != x0.shape:
        raise ValueError(f"the model returned shape {tuple(out.shape)}; expected x0's shape {tuple(x0.shape)}")
    target = process.target(x0, eps, t)
    err = (out.float() - target.float()) ** 2
    if process.prediction == "score":
        err = err * expand(process.sigma(t), err) ** 2
    if weights is not None:
        w = torch.as_tensor(weights, dtype=err.dtype, device=err.device)
        err = err * (w / w.mean())
    per_example = err.reshape(b, -1).mean(dim=1)
    return (per_example * loss_weight(process, t, weighting, gamma).float()).mean()
