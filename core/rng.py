"""The one generator rule of sciffusion: draws happen on the generator's device, then move to the data's.

Every function that takes `generator=` draws through these helpers, so a `torch.Generator` may live
on any device: a CPU generator with CUDA data (reproducible across machines), or a CUDA generator with
CUDA data (no host-to-device copy per draw). Without a generator the draw happens on `device` from
the global stream of that device. The result always lies on `device`.

    x = randn((4, 3), generator=torch.Generator().manual_seed(0), device="cuda")   # CPU draw, moved
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["draw_device", "multinomial", "rand", "randint", "randn", "randperm"]


def draw_device(generator: torch.Generator | None, device: torch.device | str) -> torch.device:
    """Where a draw happens: the generator's device when there is a generator, else `device`."""
    return generator.device if generator is not None else torch.device(device)


def randn(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None,
          device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal draws `z ~ N(0, I)` of `shape`, on `device`."""
    where = draw_device(generator, device)
    return torch.randn(tuple(shape), generator=generator, device=where, dtype=dtype).to(device)


def rand(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None,
         device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform draws `u ~ U[0, 1)` of `shape`, on `device`."""
    where = draw_device(generator, device)
    return torch.rand(tuple(shape), generator=generator, device=where, dtype=dtype).to(device)


def randint(low: int, high: int, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None,
            device: torch.device | str = "cpu") -> Tensor:
    """Integers uniform on `[low, high)` of `shape` (int64), on `device`."""
    where = draw_device(generator, device)
    return torch.randint(low, high, tuple(shape), generator=generator, device=where).to(device)


def randperm(n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """A uniformly random permutation of the integers `[0, n)` (int64), on `device`."""
    where = draw_device(generator, device)
    return torch.randperm(n, generator=generator, device=where).to(device)


def multinomial(probs: Tensor, num_samples: int, generator: torch.Generator | None = None,
                replacement: bool = True) -> Tensor:
    """Category indices drawn from each row of `probs` (rows need not be normalised), on `probs`' device."""
    where = draw_device(generator, probs.device)
    idx = torch.multinomial(probs.to(where), num_samples, replacement=replacement, generator=generator)
    return idx.to(probs.device)
