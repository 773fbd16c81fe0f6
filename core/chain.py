"""The reverse-time loop both engines sample with: one step per interval of a decreasing time grid.

`run_chain(step, x, times)` calls `x, state = step(x, i, state)` for the interval `times[i] -> times[i + 1]`,
shows a tqdm bar that can be quieted, hands every iterate to a `callback`, and checks for non-finite values
without a host-device synchronisation inside the loop: it keeps one sum per step on the device (NaN and inf
propagate through a sum) and raises after the loop, naming the first bad step. The Gaussian samplers
(`sciffusion.core.diffusion.samplers.sample`) and the reverse SDE / probability-flow ODE on manifolds
(`sciffusion.core.kernels.sde.reverse_sample`) differ only in `step`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["ChainStep", "check_finite", "run_chain"]

ChainStep = Callable[[Tensor, int, Any], tuple[Tensor, Any]]


def check_finite(sums: Sequence[Tensor], times: Sequence[float], label: str, hint: str) -> None:
    """Raise `FloatingPointError` naming the first step whose sum is NaN or infinite (one host sync, at the end)."""
    if not sums:
        return
    bad_steps = (~torch.isfinite(torch.stack(list(sums)))).nonzero()
    if len(bad_steps):
        i = int(bad_steps[0, 0])
        raise FloatingPointError(
            f"non-finite values appeared in {label} at step {i} of {len(times) - 1} "
            f"(t = {times[i]:.4g} -> {times[i + 1]:.4g}); {hint}"
        )


def run_chain(
    step: ChainStep,
    x: Tensor,
    times: Sequence[float],
    *,
    label: str = "sampling",
    hint: str = "check the model near that time",
    progress: bool = False,
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Run `x_{i+1}, state = step(x_i, i, state)` over the intervals `times[i] -> times[i + 1]` (decreasing times).

    `callback({"step": i, "t": times[i], "s": times[i + 1], "x": x_{i+1}})` sees every iterate. A non-finite
    value raises `FloatingPointError` after the loop, with `label` and `hint` in its message.
    """
    sums = []
    state = None
    for i in tqdm(range(len(times) - 1), desc=label, disable=not progress, leave=False):
        x, state = step(x, i, state)
        sums.append(x.sum())
        if callback is not None:
            callback({"step": i, "t": times[i], "s": times[i + 1], "x": x})
    check_finite(sums, times, label, hint)
    return x
