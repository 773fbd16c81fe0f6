"""Residual statistics over the training times: the statistical downscaler the network refines.

In normalised units z (`normalise.py`), with C the area-weighted block mean and B bicubic
interpolation back to the fine grid, the residual is r = z - B(C(z)). Its per-cell mean follows
the solar features f = [1, insolation, sin(hour angle)] (`solar.py`) where that helps, m = f . beta,
and s is its per-cell standard deviation about that mean. With the local slopes (`local_features`),
f ends with the bicubic fields B of all variables, so m can also follow the large-scale state at
the cell at each time. During training, m and s for time t are fitted without t (leave-one-out),
or without t and its neighbouring times (`ResidualStats.leave_out`), so the network sees the same
relation between statistics and data as on held-out times.
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
LOCAL_SHRINK = (0.25, 1.0, 4.0)   # ridges kappa n tried on the local slopes


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
    With the features f = [1, insolation, sin(hour angle), B_1, ..., B_C] (`local_features`,
    P = 3 + C), variables with a finite `local[c]` = kappa also fit the slopes on the B_k, each with
    the ridge kappa * n. B is in normalised units (about unit variance per variable), so a slope
    alone on a feature whose variance over the times at the cell is v is shrunk by v / (v + kappa):
    little where the large-scale state varies, much where it hardly does. The others leave the
    slopes at 0. P counts the features in use. A cell observed fewer than twice gets beta = 0
    and the floor for s.
    """

    n: np.ndarray
    gram: np.ndarray
    cross: np.ndarray
    total_sq: np.ndarray
    diurnal: np.ndarray
    local: np.ndarray | None = None

    def active(self) -> np.ndarray:
        """(C, P) features in each variable's fit: the intercept, the solar terms where `diurnal`,
        the local slopes (features N_FEATURES..P-1) where the ridge `local` is finite."""
        p, c = self.gram.shape[-1], len(self.diurnal)
        act = np.zeros((c, p), bool)
        act[:, 0] = True
        act[:, 1:N_FEATURES] = np.asarray(self.diurnal, bool)[:, None]
        if p > N_FEATURES:
            act[:, N_FEATURES:] = np.isfinite(self.local_ridge())[:, None]
        return act

    def local_ridge(self) -> np.ndarray:
        """(C,) ridge kappa of the local slopes; inf: not fitted."""
        return np.full(len(self.diurnal), np.inf) if self.local is None else np.asarray(self.local, np.float64)

    def _fit(self, gram, cross, total_sq, n, floor_ratio):
        p = gram.shape[-1]
        n = np.broadcast_to(np.asarray(n, np.float64), total_sq.shape)
        act = self.active()[:, None, None, :]                                       # (C, 1, 1, P)
        both = act[..., :, None] & act[..., None, :]
        eye = np.eye(p)
        empty = (n < 1)[..., None, None]
        gram = np.where(both, gram, 0.0) + eye * ~act[..., None, :] + np.where(empty, eye, 0.0)  # beta = 0 if unused / never seen
        cross = np.where(act, cross, 0.0)
        ridge = np.zeros(gram.shape)
        ridge[..., range(1, p), range(1, p)] = RIDGE * n[..., None]
        if p > N_FEATURES:   # kappa n on each local slope
            kappa = np.where(np.isfinite(self.local_ridge()), self.local_ridge(), 0.0)[:, None, None, None]
            k = np.arange(N_FEATURES, p)
            ridge[..., k, k] += kappa * n[..., None]
        coef = np.linalg.solve(gram + ridge, cross[..., None])[..., 0]              # (C, H, W, P)
        dof = n - act.sum(-1)
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
        return self.leave_out(r[None], f[None], floor_ratio, None if valid is None else np.asarray(valid)[None])

    def leave_out(self, r: np.ndarray, f: np.ndarray, floor_ratio: float, valid: np.ndarray | None = None,
                  at: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Mean f_at . beta_(-G) and std s_(-G) for the time `at` of a group G of training times
        (residuals r (G, C, H, W), features f (G, P, H, W), observed cells `valid` (G, C, H, W),
        default all), fitted on the times outside the group: the sums less `normal_sums` of G."""
        n, gram, cross, total_sq = normal_sums(r, f, valid)
        coef, s = self._fit(self.gram - gram, self.cross - cross, self.total_sq - total_sq, self.n - n, floor_ratio)
        return np.einsum("cphw,phw->chw", coef, f[at]), s


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



def local_features(f: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Features (..., P + C, H, W): the solar features f (..., P, H, W) followed by the bicubic
    fields B (..., C, H, W) of all variables, normalised units. Per-cell slopes on them
    (`ResidualStats.local`) let a cell's residual follow the large-scale state there (a valley
    wind that grows with the wind above it and turns with its direction)."""
    return np.concatenate([f, np.asarray(b, np.float64)], axis=-3)


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
    local_slope: bool = False, local: np.ndarray | None = None,
) -> ResidualStats:
    """Accumulate the least-squares sums over the training times, `batch` time steps in memory at a time,
    then choose per variable which features enter the fit by leave-one-out error.

    A variable gets the diurnal fit when the times carry clock times, there are at least
    MIN_DIURNAL_TIMES of them, and its latitude-weighted leave-one-out squared error
    sum_t <(r_t - f_t . beta_(-t))^2> is at least 1 % below that of the per-cell mean (a second pass).
    With `local_slope` the features end with the bicubic fields of all variables (`local_features`),
    and a third pass gives a variable the local slopes, with the ridge kappa of LOCAL_SHRINK that
    predicts left-out times best, when that error is again at least 1 % below the fit without them.
    `alignment` fits that block alignment (`load_aligned`, default (0, 0)); `diurnal` (C,) and
    `local` (C,) ridges (inf: off) impose the choices instead.
    """
    alignment = Alignment() if alignment is None else alignment
    times = list(times)
    tvals = time_values(ds, times)

    def residual_batches():
        for start in range(0, len(times), batch):
            idx = list(range(start, min(start + batch, len(times))))
            fine, agrids, lon = load_aligned(ds, [times[i] for i in idx], variables, grids, alignment)
            b, r, valid = normalised_residual(fine, norm, agrids)
            f = residual_features(None if tvals is None else tvals[idx], agrids.lat, lon, len(idx))
            yield r, (local_features(f, b) if local_slope else f), valid

    def loo_errors(candidates: list[ResidualStats]) -> np.ndarray:
        """(K, C) latitude-weighted leave-one-out squared errors of each candidate fit."""
        w = grids.aligned(alignment.row, alignment.col).weights[:, None]
        err = np.zeros((len(candidates), len(variables)))
        for r, f, valid in residual_batches():
            for rt, ft, vt in zip(r, f, valid):
                for k, cand in enumerate(candidates):
                    err[k] += ((rt - cand.leave_one_out(rt, ft, 0.0, vt)[0]) ** 2 * w * vt).mean((-2, -1))
        return err

    sums = None
    for r, f, valid in residual_batches():
        new = normal_sums(r, f, valid)
        sums = new if sums is None else tuple(a + b for a, b in zip(sums, new))
    off = np.zeros(len(variables), bool)
    stats = ResidualStats(*sums, off)
    if diurnal is not None:
        stats = replace(stats, diurnal=np.asarray(diurnal, bool))
    elif tvals is not None and has_clock_times(tvals) and len(times) >= MIN_DIURNAL_TIMES:
        err = loo_errors([stats, replace(stats, diurnal=~off)])
        stats = replace(stats, diurnal=err[1] < 0.99 * err[0])
    if not local_slope:
        return stats
    if local is not None:
        return replace(stats, local=np.asarray(local, np.float64))
    err = loo_errors([stats] + [replace(stats, local=np.full(len(variables), k)) for k in LOCAL_SHRINK])
    best = err[1:].argmin(0)
    chosen = np.asarray(LOCAL_SHRINK)[best]
    return replace(stats, local=np.where(err[1:].min(0) < 0.99 * err[0], chosen, np.inf))
