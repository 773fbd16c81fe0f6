"""Exponential moving average (EMA) of a model's weights.

    theta_ema <- beta * theta_ema + (1 - beta) * theta

Sampling uses the EMA copy: it averages out the last steps' gradient noise
(Polyak & Juditsky 1992; used by every modern diffusion model since Ho et al. 2020).
A half-life `h` (in optimiser steps) fixes `beta = 0.5 ** (1 / h)`: after `h` steps a
weight's contribution has halved (Karras et al. 2024, "Analyzing and improving the
training dynamics of diffusion models", define it in images rather than steps).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def decay_from_half_life(half_life: float) -> float:
    """Return `beta = 0.5 ** (1 / h)`, the per-step decay whose weights halve every `h` steps."""
    if not half_life > 0:
        raise ValueError(f"ema half-life must be > 0 steps, got {half_life}")
    return 0.5 ** (1.0 / half_life)


class EMA:
    """An EMA copy of `model`: `ema.model` is a frozen module in eval mode.

    Floating-point parameters and buffers are averaged; integer buffers (step counters,
    BatchNorm's `num_batches_tracked`) are copied. The update runs under `no_grad` with
    `torch._foreach_lerp_`, one fused kernel per dtype/device group.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_ema <- beta * theta_ema + (1 - beta) * theta, for every float tensor of `model`."""
        src = list(model.parameters()) + list(model.buffers())
        dst = list(self.model.parameters()) + list(self.model.buffers())
        if len(src) != len(dst):
            raise RuntimeError(
                f"EMA model has {len(dst)} tensors but the trained model has {len(src)}: "
                "the architecture changed after the EMA copy was made"
            )
        avg_dst, avg_src = [], []
        for d, s in zip(dst, src):
            if d.dtype.is_floating_point or d.dtype.is_complex:
                avg_dst.append(d)
                avg_src.append(s.detach())
            else:
                d.copy_(s)
        if avg_dst:
            torch._foreach_lerp_(avg_dst, avg_src, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights, keyed like the model's own `state_dict`."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load EMA weights (strict: keys and shapes must match the model)."""
        self.model.load_state_dict(state)
