"""Fitting a downscaling model: statistics on the training times (`build`), then the network (`train`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import xarray as xr

from sciffusion.plugins.climate.downscale.bundle import Downscaler
from sciffusion.plugins.climate.downscale.config import DownscaleConfig, n_condition_channels
from sciffusion.plugins.climate.downscale.dataset import ResidualStrips
from sciffusion.plugins.climate.downscale.grids import Grids, alignments
from sciffusion.plugins.climate.downscale.statistics import fit_residual_stats
from sciffusion.plugins.climate.model import NetworkEnsemble
from sciffusion.plugins.climate.normalise import fit_normaliser

CACHE_BYTES = 2 << 30     # prepared training times kept in memory (x0, cond, w)


def weighted_loss(model, process, batch) -> torch.Tensor:
    """Latitude-weighted denoising loss for (x0, cond, w) batches (`Trainer` loss_fn): the mean of
    ``(w / <w>) |f(x_t, t) - target|^2`` over the batch's elements, with w the cell-area weight times
    the variable's loss weight, 0 where the truth is missing (`ResidualStrips`), and <w> its mean."""
    from sciffusion.core import losses

    x0, cond, w = batch
    return losses.denoising_loss(model, process, x0, cond=cond, weights=w)


def build(ds: xr.Dataset, cfg: DownscaleConfig, train_idx: Sequence[int]) -> tuple[Downscaler, ResidualStrips]:
    """Fit the normaliser and residual statistics on the training times; return bundle and data."""
    if len(train_idx) < 3:
        raise ValueError(f"need at least 3 training times for leave-one-out statistics, got {len(train_idx)}")
    cfg.check()
    grids = Grids(ds["latitude"].values, ds["longitude"].values, cfg.factor)
    norm = fit_normaliser(ds, cfg.variables, list(train_idx))
    first, *others = alignments(cfg)
    stats = [fit_residual_stats(ds, cfg.variables, list(train_idx), norm, grids, alignment=first,
                                local_slope=cfg.local_slope)]
    stats += [fit_residual_stats(ds, cfg.variables, list(train_idx), norm, grids, alignment=al, diurnal=stats[0].diurnal,
                                 local_slope=cfg.local_slope, local=stats[0].local) for al in others]
    coef, std = stats[0].coefficients(cfg.std_floor)
    missing = stats[0].n == 0   # never observed in the training times
    slot_bytes = 4 * (2 * len(cfg.variables) + n_condition_channels(cfg)) * len(grids.lat) * len(grids.lon)
    data = ResidualStrips(ds, cfg, train_idx, norm, stats, grids, cache=max(2, CACHE_BYTES // slot_bytes))
    return Downscaler(cfg, norm, grids, coef, std, stats[0].diurnal, missing=missing), data


def train(ds: xr.Dataset, cfg: DownscaleConfig, train_idx: Sequence[int], out_dir: str | Path,
          steps: int = 2500, batch_size: int = 8, lr: float = 7e-4, seed: int = 0,
          progress: bool = False, checkpoint_every: int = 200, device: str | None = None,
          num_workers: int = 0, persistent_workers: bool = True, channels_last: bool = False) -> Downscaler:
    """Train with the core `Trainer` (EMA, atomic checkpoints, resume) and return the EMA bundle.

    With `cfg.networks` N > 1, network n is trained as a run of seed `seed + n` would train it,
    in `out_dir`/net{n}, and the bundle holds the N EMA networks (`NetworkEnsemble`).
    `num_workers` loader processes prepare the strips (each keeps its own cache of prepared times, for
    the whole run with `persistent_workers`); `channels_last` stores the UNet's convolutions as NHWC on
    CUDA (see `TrainConfig`).
    """
    from sciffusion.core.train.trainer import TrainConfig, Trainer

    torch.manual_seed(seed)
    bundle, data = build(ds, cfg, train_idx)
    nets = []
    for n in range(cfg.networks):
        model = bundle.model
        if cfg.networks > 1:   # initialised as a one-network run of seed + n initialises its network
            torch.manual_seed(seed + n)
            model = Downscaler.new_model(replace(cfg, networks=1), bundle.grids.periodic)
        run_dir = Path(out_dir) if cfg.networks == 1 else Path(out_dir) / f"net{n}"
        tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, lr_schedule="cosine",
                           warmup_steps=min(100, steps // 10 + 1), min_lr_ratio=0.05, ema_half_life=max(steps / 20, 5),
                           checkpoint_every=checkpoint_every, keep_last=2, log_every=20, seed=seed + n,
                           out_dir=str(run_dir), device=device, num_workers=num_workers,
                           persistent_workers=persistent_workers, channels_last=channels_last)
        trainer = Trainer(model, bundle.process(), data, tcfg, loss_fn=weighted_loss, progress=progress)
        trainer.fit(resume=True)
        nets.append(trainer.ema_model.eval())
    bundle.model = nets[0] if cfg.networks == 1 else NetworkEnsemble(nets).eval()
    return bundle
