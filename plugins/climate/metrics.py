"""WeatherBench 2 style scores, latitude-weighted (cell-area weights w_i, mean 1).

Shapes: truth (time, lat, lon); ensemble (member, time, lat, lon). The spatial mean is
``<f> = mean_{i,j} w_i f_ij``, and time means are plain means.

- RMSE of the ensemble mean:  ``sqrt( mean_t <(xbar - y)^2> )``
- fair CRPS (Ferro 2014; WB2):  ``mean_t < 1/K sum_k |x_k - y| - 1/(2K(K-1)) sum_{k != l} |x_k - x_l| >``
- spread/skill:  ``sqrt((K+1)/K) * sqrt(mean_t <var_k x (ddof=1)>) / RMSE``  (1 for a perfect ensemble)
- zonal power spectrum: ``P(k) = <|FFT_lon(x)_k|^2 / n_lon^2>`` averaged over latitude with w_i and time.
"""

from __future__ import annotations

import warnings

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
    """Zonal wavenumbers k = 0..n_lon/2 and the mean power P(k) over ``|lat| <= lat_band`` and leading dims.

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
    """Mean ``|log10 P_pred(k) / P_truth(k)|`` over zonal wavenumbers k > k_min (small scales)."""
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


def block_wavenumber_ratio(profile: np.ndarray, factor: int) -> float:
    """Power of a 1-D profile (n,) at the coarse-block wavenumber k_b = n / factor over the mean power
    of its neighbours k_b +- 1, k_b +- 2 (the mean removed first). About 1 for a profile without
    structure tied to the blocks; large when the profile repeats every `factor` cells."""
    p = np.abs(np.fft.rfft(profile - profile.mean())) ** 2
    kb = len(profile) // factor
    nbrs = [k for k in (kb - 2, kb - 1, kb + 1, kb + 2) if 0 < k < len(p)]
    return float(p[kb] / max(np.mean(p[nbrs]), 1e-300)) if kb < len(p) and nbrs else float("nan")


def block_profile(field: np.ndarray, factor: int) -> np.ndarray:
    """Mean of a (..., H, W) field by row position within the coarse blocks (factor,), normalised
    to mean 1; NaN cells are left out."""
    rows = np.nanmean(np.moveaxis(field, -2, 0).reshape(field.shape[-2], -1), axis=1)
    prof = np.nanmean(rows.reshape(-1, factor), axis=0)
    return prof / prof.mean()


def block_stripes(ensemble: np.ndarray, truth: np.ndarray, factor: int) -> dict[str, float]:
    """Block-aligned stripes in the ensemble spread, against the same structure in its error.

    Spread var_k(x) and squared error of the ensemble mean (xbar - y)^2 over the cells where the
    truth is present, each as a latitude profile (mean over time and longitude):

    - `spread`, `error`: `block_wavenumber_ratio` of the profile (about 1 without block structure);
    - `spread_amplitude`, `error_amplitude`: (max - min) of `block_profile` (mean 1);
    - `mismatch`: max over the row positions p of ``|spread_profile(p) / error_profile(p) - 1|``: about 0
      when the spread varies within the blocks as much as the error does (a calibrated ensemble),
      large for stripes the truth does not have.
    """
    ok = np.isfinite(truth)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        var = np.where(ok, ensemble.var(axis=0, ddof=1), np.nan)
        err = np.where(ok, (ensemble.mean(axis=0) - truth) ** 2, np.nan)
        out = {}
        for name, field in (("spread", var), ("error", err)):
            prof = np.nanmean(np.moveaxis(field, -2, 0).reshape(field.shape[-2], -1), axis=1)
            out[name] = block_wavenumber_ratio(np.where(np.isfinite(prof), prof, np.nanmean(prof)), factor)
            out[f"{name}_profile"] = block_profile(field, factor)
    ratio = out.pop("spread_profile") / out.pop("error_profile")
    out["spread_amplitude"] = float(np.ptp(block_profile(var, factor)))
    out["error_amplitude"] = float(np.ptp(block_profile(err, factor)))
    out["mismatch"] = float(np.max(np.abs(ratio - 1)))
    return out
