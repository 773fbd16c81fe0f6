"""Scoring gap fills on the gaps only, per mask family, and the spread-against-distance diagnostic.

A fill is an ensemble (member, T, C, H, W); the truth is (T, C, H, W) and the mask (T, H, W) is True
where a cell was removed. Scores are those of `metrics.score_all` (latitude-weighted RMSE of the
ensemble mean, fair CRPS, spread/skill) over the removed cells only. Before scoring, every fill gets
the truth in its observed cells, and whether it had returned them bit for bit is recorded.

Baselines built from the observed cells (`baseline_fills`):

- bilinear / bicubic: the coarse field is the NaN-aware area-weighted block mean of the observed
  cells (`infill.coarsen_observed`, empty blocks filled from their neighbours), interpolated back;
- statistical: bicubic plus the per-cell mean residual and Gaussian noise of the residual's standard
  deviation (`baselines.StatisticalDownscaler`, fitted on complete training fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import erf

from sciffusion.plugins.climate.baselines import StatisticalDownscaler
from sciffusion.plugins.climate.grid import coarse_coords, interpolate, lat_weights
from sciffusion.plugins.climate.infill import coarsen_observed
from sciffusion.plugins.climate.metrics import score_all


def baseline_fills(gappy: np.ndarray, lat: np.ndarray, lon: np.ndarray, factor: int,
                   stat: StatisticalDownscaler | None, members: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{"bilinear", "bicubic"[, "statistical"]} ensembles (member, T, C, H, W) from fields with NaN gaps."""
    with np.errstate(all="ignore"):
        coarse = coarsen_observed(np.asarray(gappy, np.float64), lat, factor)
    lat_c, lon_c = coarse_coords(lat, lon, factor)
    bil = interpolate(coarse, lat_c, lon_c, lat, lon, "bilinear").astype(np.float32)
    bic = interpolate(coarse, lat_c, lon_c, lat, lon, "bicubic").astype(np.float32)
    out = {"bilinear": bil[None], "bicubic": bic[None]}
    if stat is not None:
        out["statistical"] = stat.predict(bic, members, rng)
    return out


def score_gaps(fills: dict[str, np.ndarray], truth: np.ndarray, missing: np.ndarray, lat: np.ndarray,
               variables: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{variable: {method: {rmse, crps, spread_skill, observed_exact}}} over the removed cells only.

    `observed_exact` is 1.0 when the fill returned every observed cell bit for bit, else 0.0.
    """
    miss = np.broadcast_to(missing[:, None] if missing.ndim == 3 else missing, truth.shape)
    score_truth = np.where(miss, truth, np.nan)
    table: dict[str, dict[str, dict[str, float]]] = {v: {} for v in variables}
    for name, ens in fills.items():
        exact = bool(np.all(ens[:, ~miss] == truth[~miss]))
        ens = np.where(miss[None], ens, truth[None])
        for i, v in enumerate(variables):
            row = score_all(ens[:, :, i], score_truth[:, i], lat, None)
            row["observed_exact"] = float(exact)
            table[v][name] = row
    return table


def gaussian_crps(mean: np.ndarray, var: np.ndarray, truth: np.ndarray, lat: np.ndarray) -> float:
    """Latitude-weighted CRPS of N(mean, var) over cells where `truth` is finite (T, H, W), in closed form:
    CRPS = sigma [u (2 Phi(u) - 1) + 2 phi(u) - 1 / sqrt(pi)], u = (y - mu) / sigma (the absolute error where sigma = 0)."""
    sigma = np.sqrt(np.maximum(var, 0.0))
    err = truth - mean
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(sigma > 0, err / sigma, 0.0)
        crps = sigma * (u * erf(u / np.sqrt(2)) + 2 * np.exp(-u * u / 2) / np.sqrt(2 * np.pi) - 1 / np.sqrt(np.pi))
    crps = np.where(sigma > 0, crps, np.abs(err))
    ok = np.isfinite(truth)
    w = np.broadcast_to(lat_weights(lat)[:, None], truth.shape[-2:])
    w = np.broadcast_to(w, truth.shape)
    return float(np.sum(np.where(ok, crps * w, 0.0)) / np.sum(np.where(ok, w, 0.0)))


def spread_by_distance(ensemble: np.ndarray, truth: np.ndarray, distance: np.ndarray, lat: np.ndarray,
                       edges_km: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Spread and skill of one variable binned by distance to the nearest observed cell.

    ensemble (K, T, H, W), truth and distance (T, H, W). In bin b, with latitude weights w:
    spread_b = sqrt((K+1)/K <var_k x (ddof=1)>_b), rmse_b = sqrt(<(xbar - y)^2>_b) (the two
    `metrics.spread_skill` compares). Returns (bin centres, spread, rmse, area weight per bin); empty
    bins are NaN.
    """
    k = ensemble.shape[0]
    var = ensemble.var(axis=0, ddof=1) * (k + 1) / k if k > 1 else np.zeros(truth.shape)
    sq = (ensemble.mean(axis=0) - truth) ** 2
    w = np.broadcast_to(lat_weights(lat)[:, None], truth.shape[-2:])
    w = np.broadcast_to(w, truth.shape)
    b = np.digitize(distance, edges_km) - 1
    ok = (b >= 0) & (b < len(edges_km) - 1) & np.isfinite(truth)
    n = len(edges_km) - 1
    wsum = np.bincount(b[ok], weights=w[ok], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.sqrt(np.bincount(b[ok], weights=(w * var)[ok], minlength=n) / wsum)
        rmse = np.sqrt(np.bincount(b[ok], weights=(w * sq)[ok], minlength=n) / wsum)
    return 0.5 * (edges_km[1:] + edges_km[:-1]), spread, rmse, wsum


def plot_spread_distance(path: Path, curves: dict[str, dict[str, tuple]], units: dict[str, str], title: str) -> Path:
    """One panel per variable: spread (solid) and RMSE (dashed) against distance, one colour per label.

    `curves[variable][label] = (centres, spread, rmse, weight)` from `spread_by_distance`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variables = list(curves)
    fig, axes = plt.subplots(1, len(variables), figsize=(3.2 * len(variables), 3.0), squeeze=False)
    for ax, v in zip(axes[0], variables, strict=True):
        for j, (label, (x, spread, rmse, _)) in enumerate(curves[v].items()):
            ax.plot(x, spread, "-", color=f"C{j}", label=f"{label} spread")
            ax.plot(x, rmse, "--", color=f"C{j}", label=f"{label} RMSE")
        ax.set_title(f"{v} ({units.get(v, '')})")
        ax.set_xlabel("distance to nearest observed cell (km)")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
