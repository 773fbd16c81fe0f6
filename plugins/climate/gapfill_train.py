"""Training a gap-filling model (`gapfill.GapFiller`): random masks, their kriging, strips, the core `Trainer`.

Kriging weights depend on the mask only, not on the field. A pool of masks is drawn once from every
family of `masks` (fractions uniform in `fractions`), and each mask's `KrigingPlan` (lambda, sigma^2 per
variable) is solved once and cached in the run folder. A training example pairs a pool mask with a
training time whose field is rolled in longitude by a random number of cells (the isotropic
covariance and the standardised anomalies make the plan valid for any roll, so the pool of P masks
serves T x W x P (mask, field) pairs), and cuts a strip of `strip_height` latitude rows over the
full longitude circle. Its parts are the target r (`gapfill.residual_target`), the conditioning
(`gapfill.condition`) and the loss weights w = cell area x M (0 on observed cells and where the
truth is NaN), for `downscale.training.weighted_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset

from sciffusion.plugins.climate import masks
from sciffusion.plugins.climate.gapfill import GapFillConfig, GapFiller, condition, residual_target
from sciffusion.plugins.climate.grid import lat_weights
from sciffusion.plugins.climate.io import load_times
from sciffusion.plugins.climate.kriging import Kriging, KrigingPlan


def draw_pool(lat: np.ndarray, lon: np.ndarray, n: int, rng: np.random.Generator,
              fractions: tuple[float, float] = (0.05, 0.5)) -> np.ndarray:
    """n masks (n, H, W), the families of `masks.FAMILIES` in turn, missing area fraction ~ U(fractions)."""
    return np.concatenate([masks.draw(masks.FAMILIES[i % len(masks.FAMILIES)], lat, lon,
                                      float(rng.uniform(*fractions)), rng) for i in range(n)])


def solve_pool(kriging: Kriging, pool: np.ndarray, neighbours: int, cache: Path | None = None,
               progress: bool = False) -> list[KrigingPlan]:
    """The `KrigingPlan` of every mask (weights in float32), read from / written to `cache` (.npz)."""
    from tqdm.auto import tqdm

    if cache is not None and cache.exists():
        with np.load(cache) as f:
            if np.array_equal(f["pool"], np.packbits(pool)):
                return [KrigingPlan(f[f"missing{i}"], f[f"nb{i}"], f[f"w{i}"], f[f"var{i}"], tuple(f["channels"]))
                        for i in range(len(pool))]
    plans = []
    for m in tqdm(pool, desc="kriging the mask pool", disable=not progress):
        p = kriging.plan(m, neighbours=neighbours)
        plans.append(KrigingPlan(p.missing.astype(np.int32), p.neighbours.astype(np.int32),
                                 p.weights.astype(np.float32), p.variance.astype(np.float32), p.channels))
    if cache is not None:
        from sciffusion.core.atomic import atomic_write

        arrays = {"pool": np.packbits(pool), "channels": np.asarray(plans[0].channels)}
        for i, p in enumerate(plans):
            arrays.update({f"missing{i}": p.missing, f"nb{i}": p.neighbours, f"w{i}": p.weights, f"var{i}": p.variance})
        atomic_write(cache, lambda tmp: np.savez(str(tmp), **arrays))
    return plans


class GapStrips(Dataset):
    """Training examples (r, cond, w) (see the module docstring); item i is drawn from the seeded
    generator (seed, i): a training time, a pool mask, a longitude roll and a first row."""

    def __init__(self, z: np.ndarray, pool: np.ndarray, plans: Sequence[KrigingPlan], lat: np.ndarray,
                 cfg: GapFillConfig, seed: int = 0, length: int = 1_000_000) -> None:
        self.z, self.pool, self.plans, self.lat, self.cfg = z.astype(np.float32), pool, list(plans), lat, cfg
        self.seed, self.length = seed, length
        self.h = min(cfg.strip_height, z.shape[-2])
        self.area = lat_weights(lat).astype(np.float32)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(i)])
        t, j = rng.integers(len(self.z)), rng.integers(len(self.plans))
        n_lat, n_lon = self.z.shape[-2:]
        z = np.roll(self.z[t], -int(rng.integers(n_lon)), axis=-1)
        r0 = int(rng.integers(n_lat - self.h + 1))
        return strip_example(z, self.pool[j], self.plans[j], r0, self.h, self.lat, self.area, self.cfg.sd_floor)


def strip_example(z: np.ndarray, mask: np.ndarray, plan: KrigingPlan, r0: int, h: int, lat: np.ndarray,
                  area: np.ndarray, floor: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r, cond, w) for rows r0..r0+h of a standardised field z (C, H, W) under `mask` (H, W)."""
    c_n, _, n_lon = z.shape
    lo, hi = np.searchsorted(plan.missing, [r0 * n_lon, (r0 + h) * n_lon])
    cells = plan.missing[lo:hi] - r0 * n_lon
    zf = z.reshape(c_n, -1)
    mu = z[:, r0 : r0 + h].copy().reshape(c_n, -1)
    sigma = np.zeros_like(mu)
    for c in range(c_n):
        mu[c, cells] = plan.anomaly(c, zf[c], slice(lo, hi))
        sigma[c, cells] = np.sqrt(plan.variance[plan.channels.index(c), lo:hi])
    mu, sigma = mu.reshape(c_n, h, n_lon), sigma.reshape(c_n, h, n_lon)
    miss = np.broadcast_to(mask[r0 : r0 + h], mu.shape)
    truth = z[:, r0 : r0 + h]
    r = residual_target(truth, np.nan_to_num(mu), sigma, miss, floor)
    w = (area[r0 : r0 + h, None] * (miss & np.isfinite(truth) & np.isfinite(mu))).astype(np.float32)
    cond = condition(np.nan_to_num(mu), sigma, miss, lat[r0 : r0 + h])
    return torch.from_numpy(r), torch.from_numpy(cond), torch.from_numpy(w)


def prepare(ds: xr.Dataset, cfg: GapFillConfig, train_idx: Sequence[int], out_dir: Path, n_masks: int = 48,
            seed: int = 0, progress: bool = False) -> tuple[GapFiller, GapStrips]:
    """Fit the kriging on the training times, solve the mask pool (cached in `out_dir`), build the data."""
    lat, lon = ds["latitude"].values.astype(np.float64), ds["longitude"].values.astype(np.float64)
    train = load_times(ds, list(train_idx), cfg.variables).astype(np.float64)
    nonneg = [v == "tp" for v in cfg.variables]
    kriging = Kriging.fit(train, lat, lon, nonneg=nonneg, seed=seed)
    pool = draw_pool(lat, lon, n_masks, np.random.default_rng([seed, 7]))
    plans = solve_pool(kriging, pool, cfg.neighbours, Path(out_dir) / "mask_pool.npz", progress)
    z = (train - kriging.mean) / kriging.scale
    periodic = bool(np.isclose((lon[1] - lon[0]) * len(lon), 360.0))
    return GapFiller(cfg, kriging, periodic=periodic), GapStrips(z, pool, plans, lat, cfg, seed)


def train(ds: xr.Dataset, cfg: GapFillConfig, train_idx: Sequence[int], out_dir: str | Path, steps: int = 2000,
          batch_size: int = 4, lr: float = 5e-4, n_masks: int = 48, seed: int = 0, progress: bool = False,
          checkpoint_every: int = 100, device: str | None = None) -> GapFiller:
    """Train with the core `Trainer` (EMA, atomic checkpoints every `checkpoint_every` steps, resumes
    from the latest one in `out_dir`) and return the model with the EMA weights."""
    from sciffusion.core.train.trainer import TrainConfig, Trainer
    from sciffusion.plugins.climate.downscale.training import weighted_loss

    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle, data = prepare(ds, cfg, train_idx, out_dir, n_masks, seed, progress)
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, lr_schedule="cosine", warmup_steps=min(100, steps // 10 + 1),
                       min_lr_ratio=0.05, ema_half_life=max(steps / 20, 5), checkpoint_every=checkpoint_every,
                       keep_last=2, log_every=10, seed=seed, out_dir=str(out_dir), device=device)
    trainer = Trainer(bundle.model, bundle.process(), data, tcfg, loss_fn=weighted_loss, progress=progress)
    trainer.fit(resume=True)
    bundle.model = trainer.ema_model
    bundle.model.eval()
    return bundle


def export(ds: xr.Dataset, cfg: GapFillConfig, train_idx: Sequence[int], out_dir: str | Path, n_masks: int = 48,
           seed: int = 0) -> tuple[GapFiller, int]:
    """The model with the EMA weights of the newest training checkpoint in `out_dir` (a run stopped
    early or still going), and that checkpoint's step."""
    from sciffusion.core.train.checkpoint import read_torch_file
    from sciffusion.core.train.trainer import latest_checkpoint, load_weights

    bundle, _ = prepare(ds, cfg, train_idx, Path(out_dir), n_masks, seed)
    path = latest_checkpoint(out_dir)
    if path is None:
        raise FileNotFoundError(f"no training checkpoint in {out_dir}")
    load_weights(bundle.model, path, ema=True)
    bundle.model.eval()
    return bundle, int(read_torch_file(path, "checkpoint")["step"])


def main(argv: Sequence[str] | None = None) -> int:
    """Train the gap-filling model on the first times of the ERA5 sample (the last `--holdout` held out)
    and save it: ``python -m sciffusion.plugins.climate.gapfill_train --out DIR --checkpoint PATH``."""
    import argparse

    from sciffusion.plugins.climate.grid import trim_to_factor
    from sciffusion.plugins.climate.io import era5_sample_path, open_fields

    p = argparse.ArgumentParser(description="train a climate gap-filling model on the ERA5 sample")
    p.add_argument("--out", required=True, help="run folder (checkpoints, mask pool; resumes from it)")
    p.add_argument("--checkpoint", required=True, help="where to save the trained model (.pt)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--masks", type=int, default=48, help="masks in the kriged pool")
    p.add_argument("--widths", default="24,48,96")
    p.add_argument("--holdout", type=int, default=6)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", action="store_true", help="save the EMA weights of the newest checkpoint, do not train")
    a = p.parse_args(argv)
    variables = ("t2m", "u10", "v10", "msl", "tp")
    ds, _ = trim_to_factor(open_fields(era5_sample_path(), list(variables)), 4)   # the benchmark's 180 x 360 grid
    train_idx = list(range(ds.sizes["time"] - a.holdout))
    cfg = GapFillConfig(variables=variables, widths=tuple(int(w) for w in a.widths.split(",")), source="ERA5 sample",
                        train_times=tuple(str(t) for t in ds["time"].values[train_idx]))
    if a.export:
        bundle, step = export(ds, cfg, train_idx, a.out, a.masks, a.seed)
    else:
        bundle, step = train(ds, cfg, train_idx, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, n_masks=a.masks,
                             seed=a.seed, progress=True, checkpoint_every=a.checkpoint_every), a.steps
    bundle.save(a.checkpoint, extra={"train_steps": step, "batch_size": a.batch_size, "lr": a.lr, "masks": a.masks,
                                     "strip_height": cfg.strip_height})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
