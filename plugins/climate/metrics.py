"""WeatherBench 2 style scores, latitude-weighted (cell-area weights w_i, mean 1).

Shapes: truth (time, lat, lon); ensemble (member, time, lat, lon). The spatial mean is
<f> = mean_{i,j} w_i f_ij, and time means are plain means.

- RMSE of the ensemble mean:  sqrt( mean_t <(xbar - y)^2> )
- fair CRPS (Ferro 2014; WB2):  mean_t < 1/K sum_k |x_k - y| - 1/(2K(K-1)) sum_{k != l} |x_k - x_l| >
- spread/skill:  sqrt((K+1)/K) * sqrt(mean_t <var_k x (ddof=1)>) / RMSE  (1 for a perfect ensemble)
- zonal power spectrum: P(k) = <|FFT_lon(x)_k|^2 / n_lon^2> averaged over latitude with w_i and time.
"""

from __future__ import annotations

import numpy as np

from sciffusion.plugins.climate.grid import lat_weights


def _wmean(field: np.ndarray, w: np.ndarray) -> float:
    """Latitude-weighted mean over (..., lat, lon), ignoring NaN cells."""
    wb = np.broadcast_to(w[:, None], field.shape[-2:])
    wb = np.broadcast_to(wb, field.shape)
    ok = np.isfinite(field)
    return float(np.sum(np.where(ok, field * wb, 0.0)) / np.sum(np.where(ok, wb, 0.0)))


def rmse(ensemble: np.ndarray, truth: np.ndarray, lat: np.ndarray) -> float:
    """Latitude-weighted RMSE of the ensemble mean (MSE averaged over time, then sqrt)."""
    mean = ensemble.mean(axis=0)
    return float(np.sqrt(_wmean((mean - truth) ** 2, lat_weights(lat))))


def fair_crps(ensemble: np.ndarray, truth: np.ndarray, lat: np.ndarray) -> float:
    """Latitude-weighted fair CRPS of an ensemble; for K = 1 it is the MAE."""
    k = ensemble.shape[0]
    skill = np.abs(ensemble - truth[None]).mean(axis=0)
    if k > 1:
        srt = np.sort(ensemble, axis=0)
        # sum_{k<l} |x_l - x_k| = sum_i (2i - K + 1) x_(i) for sorted members (i from 0)
        coef = (2 * np.arange(k) - k + 1).reshape((k,) + (1,) * (ensemble.ndim - 1))
        pair_sum = (coef * srt).sum(axis=0)
        spread = pair_sum / (k * (k - 1))
    else:
        spread = 0.0
    return _wmean(skill - spread, lat_weights(lat))


def spread_skill(ensemble: np.ndarray, truth: np.ndarray, lat: np.ndarray) -> float:
    """sqrt((K+1)/K) * spread / skill over the cells where the truth is finite; NaN for one member."""
    k = ensemble.shape[0]
    if k < 2:
        return float("nan")
    w = lat_weights(lat)
    var = np.where(np.isfinite(truth), ensemble.var(axis=0, ddof=1), np.nan)
    spread = np.sqrt(_wmean(var, w))
    return float(np.sqrt((k + 1) / k) * spread / rmse(ensemble, truth, lat))


def zonal_spectrum(field: np.ndarray, lat: np.ndarray, lat_band: float = 60.0,
                   rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Zonal wavenumbers k = 0..n_lon/2 and the mean power P(k) over |lat| <= lat_band and leading dims.

    Only latitude rows without a missing cell are used (or the rows marked in `rows`)."""
    lat = np.asarray(lat)
    if rows is None:
        rows = np.isfinite(field).reshape(-1, *field.shape[-2:]).all(axis=(0, 2))
    sel = (np.abs(lat) <= lat_band) & rows
    if not sel.any():
        return np.arange(field.shape[-1] // 2 + 1), np.full(field.shape[-1] // 2 + 1, np.nan)
    spec = np.abs(np.fft.rfft(field[..., sel, :], axis=-1)) ** 2 / field.shape[-1] ** 2
    spec[..., 1:] *= 2.0
    w = lat_weights(lat)[sel]
    lead = tuple(range(spec.ndim - 2))
    p = np.tensordot(spec.mean(axis=lead) if lead else spec, w / w.sum(), axes=([0], [0]))
    return np.arange(p.size), p


def spectral_error(pred: np.ndarray, truth: np.ndarray, lat: np.ndarray, k_min: int) -> float:
    """Mean |log10 P_pred(k) / P_truth(k)| over zonal wavenumbers k > k_min (small scales)."""
    rows = np.isfinite(truth).reshape(-1, *truth.shape[-2:]).all(axis=(0, 2))
    k, p_true = zonal_spectrum(truth, lat, rows=rows)
    _, p_pred = zonal_spectrum(pred, lat, rows=rows)
    sel = k > k_min
    return float(np.mean(np.abs(np.log10(np.maximum(p_pred[sel], 1e-30) / np.maximum(p_true[sel], 1e-30)))))


def score_all(ensemble: np.ndarray, truth: np.ndarray, lat: np.ndarray, k_min: int | None) -> dict[str, float]:
    """RMSE, fair CRPS, spread/skill and (unless `k_min` is None) the small-scale spectral error.

    Cells where `truth` is NaN are left out of every score (e.g. to score only the gaps of a fill).
    """
    out = {
        "rmse": rmse(ensemble, truth, lat),
        "crps": fair_crps(ensemble, truth, lat),
        "spread_skill": spread_skill(ensemble, truth, lat),
    }
    if k_min is not None:
        out["spectral_error"] = spectral_error(ensemble, truth, lat, k_min)
    return out
