"""Baselines for downscaling on a fixed grid.

- bilinear / bicubic interpolation of the coarse field (one deterministic member; CRPS = MAE);
- `StatisticalDownscaler`: bicubic plus the per-cell mean residual learned on training times,
  with per-cell Gaussian noise of the residual's standard deviation as its ensemble,

      x_k = B(c) + m + s * z_k,   m = mean_t r_t,  s = std_t r_t,  r_t = x_t - B(c_t),  z_k ~ N(0, I).

All arrays are physical values (time, channel, lat, lon); precipitation members are clipped at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sciffusion.plugins.climate.grid import interpolate


def interpolate_coarse(coarse: np.ndarray, lat_c, lon_c, lat_f, lon_f, method: str) -> np.ndarray:
    """Bilinear or bicubic upsampling of (..., lat_c, lon_c) to the fine grid."""
    return interpolate(coarse, lat_c, lon_c, lat_f, lon_f, method=method)


@dataclass
class StatisticalDownscaler:
    """Bicubic + per-cell mean residual, with per-cell Gaussian noise (std of the residual).

    `mean` and `std` are (channel, lat, lon) arrays fitted on the training times only.
    `nonneg` marks channels clipped at zero (precipitation).
    """

    mean: np.ndarray
    std: np.ndarray
    nonneg: tuple[bool, ...]

    @classmethod
    def fit(
        cls, fine: np.ndarray, bicubic: np.ndarray, nonneg: Sequence[bool] | None = None
    ) -> StatisticalDownscaler:
        """Fit m = mean_t (x_t - B(c_t)) and s = std_t (ddof=1) on (time, channel, lat, lon) arrays."""
        if fine.shape[0] < 2:
            raise ValueError("the statistical downscaler needs at least two training times")
        resid = (fine - bicubic).astype(np.float64)
        mean = np.nanmean(resid, axis=0)
        std = np.nanstd(resid, axis=0, ddof=1)
        nonneg = tuple(nonneg) if nonneg is not None else (False,) * fine.shape[1]
        return cls(mean.astype(np.float32), std.astype(np.float32), nonneg)

    @classmethod
    def fit_streaming(cls, batches, nonneg: Sequence[bool] | None = None) -> StatisticalDownscaler:
        """Same fit from an iterable of (fine, bicubic) batches, holding one batch at a time.

        m = S / n and s^2 = (Q - n m^2) / (n - 1) from running sums S = sum_t r_t, Q = sum_t r_t^2 over
        the times where the cell is observed (n per cell; NaN cells of `fine` are left out). A cell
        observed fewer than twice has NaN statistics, so its members are NaN.
        """
        n, total, total_sq, times = 0, 0.0, 0.0, 0
        for fine, bicubic in batches:
            r = (np.asarray(fine, np.float64) - bicubic)
            ok = np.isfinite(r)
            r = np.where(ok, r, 0.0)
            n, total, total_sq, times = n + ok.sum(0), total + r.sum(0), total_sq + (r**2).sum(0), times + r.shape[0]
        if times < 2:
            raise ValueError("the statistical downscaler needs at least two training times")
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n >= 2, total / np.maximum(n, 1), np.nan)
            std = np.sqrt(np.maximum(total_sq - n * mean**2, 0) / (n - 1))
        nonneg = tuple(nonneg) if nonneg is not None else (False,) * mean.shape[0]
        return cls(mean.astype(np.float32), std.astype(np.float32), nonneg)

    def predict(self, bicubic: np.ndarray, members: int, rng: np.random.Generator) -> np.ndarray:
        """Ensemble (member, time, channel, lat, lon) = B(c) + m + s z."""
        z = rng.standard_normal((members, *bicubic.shape)).astype(np.float32)
        out = bicubic[None] + self.mean + self.std * z
        for c, clip in enumerate(self.nonneg):
            if clip:
                out[:, :, c] = np.clip(out[:, :, c], 0, None)
        return out
