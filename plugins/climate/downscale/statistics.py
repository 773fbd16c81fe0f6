"""Residual statistics over the training times: the statistical downscaler the network refines.

In normalised units z (`normalise.py`), with C the area-weighted block mean and B bicubic
interpolation back to the fine grid, the residual is r = z - B(C(z)). Its per-cell mean follows
the solar features f = [1, insolation, sin(hour angle)] (`solar.py`) where that helps, m = f . beta,
and s is its per-cell standard deviation about that mean. During training, m and s for time t are
fitted without t (leave-one-out), so the network sees the same relation between statistics and
data as on held-out times.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from sciffusion.plugins.climate.downscale.grids import Alignment, Grids, load_aligned
from sciffusion.plugins.climate.grid import coarsen_observed
from sciffusion.plugins.climate.normalise import Normaliser
from sciffusion.plugins.climate.solar import N_FEATURES, has_clock_times, solar_features

RIDGE = 1e-3              # ridge on the solar coefficients, per training time
MIN_DIURNAL_TIMES = 8     # fewer training times: the per-cell mean only


@dataclass
class ResidualStats:
    """Per-cell least-squares fit of the residual on solar features over the training times.

    r_t(c, i, j) ~ f_t(i, j) . beta(c, i, j), with f = [1, insolation, sin(hour angle)] (`solar.py`),
    kept as running sums in float64 over the times where the cell is observed (v_t = 1; NaN cells
    of the truth are left out): gram A = sum_t v f f^T (C, H, W, P, P), cross b = sum_t v r f
    (C, H, W, P), total_sq q = sum_t v r^2 (C, H, W), count n = sum_t v (C, H, W). Variables with
    `diurnal[c]` False use the intercept alone, i.e. the per-cell mean m = S / n and
    s^2 = (Q - n m^2) / (n - 1). For the others beta = (A + R)^-1 b, with a ridge R = RIDGE * n on the
    solar terms that keeps A invertible, and s^2 = (q - 2 b . beta + beta^T A beta) / (n - P).
    A cell observed fewer than twice gets beta = 0 and the floor for s.
    """

    n: np.ndarray
    gram: np.ndarray
    cross: np.ndarray
    total_sq: np.ndarray
    diurnal: np.ndarray

    def _fit(self, gram, cross, total_sq, n, floor_ratio):
        p = gram.shape[-1]
        n = np.broadcast_to(np.asarray(n, np.float64), total_sq.shape)
        ridge = np.diag([0.0] + [RIDGE] * (p - 1)) * n[..., None, None]
        empty = n < 1
        gram = gram + np.where(empty[..., None, None], np.eye(p), 0.0)              # beta = 0 where never seen
        beta = np.linalg.solve(gram + ridge, cross[..., None])[..., 0]              # (C, H, W, P)
        mean = np.zeros_like(beta)
        mean[..., 0] = cross[..., 0] / gram[..., 0, 0]
        use = np.asarray(self.diurnal, bool)[:, None, None, None]
        coef = np.where(use, beta, mean)
        dof = np.where(use[..., 0], n - p, n - 1)
        fitted_sq = np.einsum("chwp,chwpq,chwq->chw", coef, gram, coef)
        rss = np.maximum(total_sq - 2 * (coef * cross).sum(-1) + fitted_sq, 0)
        s = np.where(n >= 2, np.sqrt(rss / np.maximum(dof, 1)), np.nan)
        return np.moveaxis(coef, -1, 1), _floor(s, floor_ratio)

    def coefficients(self, floor_ratio: float) -> tuple[np.ndarray, np.ndarray]:
        """(beta (C, P, H, W), s (C, H, W)) from all training times; s floored at floor_ratio <s>_c."""
        return self._fit(self.gram, self.cross, self.total_sq, self.n, floor_ratio)

    def leave_one_out(self, r: np.ndarray, f: np.ndarray, floor_ratio: float,
                      valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean f . beta_(-t) and std s_(-t) for training time t (residual r (C, H, W), features
        f (P, H, W), observed cells `valid` (C, H, W), default all), fitted on the other times:
        A - v f f^T, b - v r f, q - v r^2, n - v."""
        v = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
        r = np.where(v, r, 0.0)
        ft = np.moveaxis(f, 0, -1)
        vf = v[..., None] * ft[None]
        gram = self.gram - vf[..., :, None] * ft[None, ..., None, :]
        coef, s = self._fit(gram, self.cross - r[..., None] * vf, self.total_sq - r**2, self.n - v, floor_ratio)
        return np.einsum("cphw,phw->chw", coef, f), s


def _floor(s: np.ndarray, ratio: float) -> np.ndarray:
    """max(s, ratio <s>) per variable; cells without an estimate (NaN) take the floor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a variable never observed twice
        ref = np.nan_to_num(np.nanmean(s, axis=(-2, -1), keepdims=True), nan=1.0)
    return np.fmax(s, ratio * ref)


def residual_features(times: np.ndarray | None, lat: np.ndarray, lon: np.ndarray, n: int) -> np.ndarray:
    """Solar features (n, P, H, W) for `times`, or the intercept alone ([1, 0, 0]) without clock times."""
    if times is not None and has_clock_times(times):
        return solar_features(times, lat, lon)
    f = np.zeros((n, N_FEATURES, len(lat), len(lon)))
    f[:, 0] = 1.0
    return f



def normalised_residual(fine: np.ndarray, norm: Normaliser, grids: Grids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B(C_O(z)), r, valid) for physical fine fields (T, C, H, W). C_O is the block mean over the
    observed cells (`grid.coarsen_observed`, all-missing blocks filled from their neighbours), the
    coarse field a user with the same gaps would have; r is 0 where the truth is NaN (`valid` False)."""
    z = norm.forward(fine.astype(np.float64))
    valid = np.isfinite(z)
    with np.errstate(all="ignore"):
        coarse = coarsen_observed(z, grids.lat, grids.factor, grids.periodic) if not valid.all() else grids.coarsen(z)
    b = grids.up(coarse)
    return b, np.where(valid, z - b, 0.0), valid


def normal_sums(r: np.ndarray, f: np.ndarray, valid: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares sums of residuals r (T, C, H, W) on features f (T, P, H, W) over the observed
    cells `valid` (T, C, H, W; default all): n = sum_t v (C, H, W), A = sum_t v f f^T (C, H, W, P, P),
    b = sum_t v r f (C, H, W, P), q = sum_t v r^2 (C, H, W)."""
    v = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
    r = np.where(v, r, 0.0)
    ft = np.moveaxis(f, 1, -1)
    vf = v.astype(np.float64)
    return (vf.sum(0), np.einsum("tchw,thwp,thwq->chwpq", vf, ft, ft), np.einsum("tchw,thwp->chwp", r, ft),
            (r**2).sum(0))


def time_values(ds: xr.Dataset, times: Sequence[int]) -> np.ndarray | None:
    return ds["time"].values[list(times)] if "time" in ds.coords else None


def fit_residual_stats(
    ds: xr.Dataset, variables: Sequence[str], times: Sequence[int], norm: Normaliser, grids: Grids,
    batch: int = 4, alignment: Alignment | None = None, diurnal: np.ndarray | None = None,
) -> ResidualStats:
    """Accumulate the least-squares sums over the training times, `batch` time steps in memory at a time,
    then choose per variable between the per-cell mean and the diurnal fit by leave-one-out error.

    A variable gets the diurnal fit when the times carry clock times, there are at least
    MIN_DIURNAL_TIMES of them, and its latitude-weighted leave-one-out squared error
    sum_t <(r_t - f_t . beta_(-t))^2> is at least 1 % below that of the per-cell mean (a second pass).
    `alignment` fits that block alignment (`load_aligned`, default (0, 0)); `diurnal` (C,) imposes
    the choice instead.
    """
    alignment = Alignment() if alignment is None else alignment
    times = list(times)
    tvals = time_values(ds, times)

    def residual_batches():
        for start in range(0, len(times), batch):
            idx = list(range(start, min(start + batch, len(times))))
            fine, agrids, lon = load_aligned(ds, [times[i] for i in idx], variables, grids, alignment)
            _, r, valid = normalised_residual(fine, norm, agrids)
            f = residual_features(None if tvals is None else tvals[idx], agrids.lat, lon, len(idx))
            yield r, f, valid

    sums = None
    for r, f, valid in residual_batches():
        new = normal_sums(r, f, valid)
        sums = new if sums is None else tuple(a + b for a, b in zip(sums, new))
    off = np.zeros(len(variables), bool)
    stats = ResidualStats(*sums, off)
    if diurnal is not None:
        return replace(stats, diurnal=np.asarray(diurnal, bool))
    if tvals is None or not has_clock_times(tvals) or len(times) < MIN_DIURNAL_TIMES:
        return stats
    on = replace(stats, diurnal=~off)
    w = grids.aligned(alignment.row, alignment.col).weights[:, None]
    err_mean, err_diurnal = np.zeros(len(variables)), np.zeros(len(variables))
    for r, f, valid in residual_batches():
        for rt, ft, vt in zip(r, f, valid):
            err_mean += ((rt - stats.leave_one_out(rt, ft, 0.0, vt)[0]) ** 2 * w * vt).mean((-2, -1))
            err_diurnal += ((rt - on.leave_one_out(rt, ft, 0.0, vt)[0]) ** 2 * w * vt).mean((-2, -1))
    return replace(stats, diurnal=err_diurnal < 0.99 * err_mean)

