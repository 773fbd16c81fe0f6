"""Toy model, data and a training entry point for the trainer's subprocess tests.

Run as a script (plain `python` or under `torchrun`) it trains the toy MLP and exits;
the tests compare the checkpoints it writes. `--hang-at S` makes the loss function
signal (by creating `<out>/HANG`) and sleep at its S-th call, so that the test can
SIGKILL the process at a known point.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


class ToyMLP(nn.Module):
    """eps-prediction MLP for 2-D points: input (x_t, sin/cos features of t)."""

    def __init__(self, hidden: int = 64, dim: int = 2) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.arange(1, 5, dtype=torch.float32) * math.pi)
        self.net = nn.Sequential(
            nn.Linear(dim + 8, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim),
        )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        ft = t.to(x.dtype)[:, None] * self.freqs
        return self.net(torch.cat([x, torch.sin(ft), torch.cos(ft)], dim=1))


def gaussian_mixture(
    n: int, seed: int, modes: int = 4, radius: float = 1.5, std: float = 0.2
) -> torch.Tensor:
    """`n` points from `modes` equal Gaussians (std `std`) on a circle of radius `radius`."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, modes, (n,), generator=g)
    angle = 2 * math.pi * k.double() / modes
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return (centres + std * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


class JitteredPoints(torch.utils.data.Dataset):
    """Points with a random jitter drawn from numpy's and Python's global RNGs (like an augmentation)."""

    def __init__(self, points: torch.Tensor) -> None:
        self.points = points

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> torch.Tensor:
        jitter = 0.01 * np.random.randn(2) + 0.01 * random.random()  # noqa: NPY002 (tests global RNG restore)
        return self.points[i] + torch.as_tensor(jitter, dtype=torch.float32)


def noisy_loss(model, process, batch: torch.Tensor) -> torch.Tensor:
    """A denoising loss on x_t = (1 - t) x0 + t eps, drawing t and eps from the global RNG of the batch's device."""
    t = torch.rand(batch.shape[0], device=batch.device)
    eps = torch.randn_like(batch)
    x_t = (1 - t[:, None]) * batch + t[:, None] * eps
    return ((model(x_t, t) - eps) ** 2).mean()


class FixedNoisePoints(torch.utils.data.Dataset):
    """(x0, eps, t) with eps and t fixed per index, so DDP and one process see the same noise."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed + 1)
        self.x0 = gaussian_mixture(n, seed)
        self.eps = torch.randn(n, 2, generator=g)
        self.t = torch.rand(n, generator=g)

    def __len__(self) -> int:
        return len(self.x0)

    def __getitem__(self, i: int):
        return self.x0[i], self.eps[i], self.t[i]


def fixed_noise_loss(model, process, batch) -> torch.Tensor:
    """The loss of `noisy_loss` with the noise carried by the batch."""
    x0, eps, t = batch
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    return ((model(x_t, t) - eps) ** 2).mean()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["resume", "ddp"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--hang-at", type=int, default=0)
    p.add_argument("--loss", choices=["default", "custom"], default="custom")
    p.add_argument("--device", default="cpu", help="the TrainConfig device (cpu, cuda)")
    p.add_argument(
        "--extend-to", type=int, default=0, help="then resume, in new Trainer, to this step"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from sciffusion.core.train.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    model = ToyMLP(hidden=32)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=1e-2,
        warmup_steps=5,
        ema_half_life=5.0,
        checkpoint_every=args.ckpt_every,
        keep_last=2,
        log_every=5,
        seed=3,
        out_dir=args.out,
        device=args.device,
    )
    process = None
    if args.mode == "ddp":
        data, loss_fn = FixedNoisePoints(256, seed=5), fixed_noise_loss
    else:
        data = JitteredPoints(gaussian_mixture(200, seed=5))
        loss_fn = noisy_loss
        if args.loss == "default":
            from sciffusion.core import DiffusionProcess, get_schedule

            process, loss_fn = DiffusionProcess(get_schedule("cosine"), prediction="eps"), None
    calls = [0]
    base = loss_fn

    def counting_loss(model, proc, batch):
        calls[0] += 1
        if calls[0] == args.hang_at:
            (Path(args.out) / "HANG").touch()
            time.sleep(600)
        if base is None:
            from sciffusion.core.train.trainer import denoising_loss_fn

            return denoising_loss_fn(model, proc, batch)
        return base(model, proc, batch)

    Trainer(model, process, data, cfg, loss_fn=counting_loss, progress=False).fit(resume=True)
    if args.extend_to:
        import dataclasses
        import warnings

        longer = dataclasses.replace(cfg, steps=args.extend_to)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "the cosine schedule is stretched"
            trainer = Trainer(
                ToyMLP(hidden=32), process, data, longer, loss_fn=counting_loss, progress=False
            )
            trainer.fit(resume=True)
        assert trainer.step == args.extend_to


if __name__ == "__main__":
    main()
