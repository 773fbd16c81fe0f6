"""Gap filling: complete fields with missing cells (NaN) by inpainting with the downscaling model.

For a field y with observed cells O (mask M = 1 on O):
1. the coarse field is the area-weighted mean over the observed cells of each block,
   C_O(y)_IJ = sum_{ij in IJ, O} w_i y_ij / sum_{ij in IJ, O} w_i; blocks with no observed cell
   are filled from their neighbours (repeated 4-neighbour averaging, periodic in longitude on a
   global grid);
2. the core sampler draws the standardised residual with `known`/`mask` (replacement
   inpainting), so the observed cells are imposed at every step and returned exactly.
"""

from __future__ import annotations

import warnings

import numpy as np

from sciffusion.plugins.climate.downscale import Downscaler
from sciffusion.plugins.climate.grid import coarsen


def coarsen_observed(fields: np.ndarray, lat: np.ndarray, factor: int, periodic: bool = True,
                     fill: bool = True) -> np.ndarray:
    """NaN-aware area-weighted block mean of (..., H, W); all-missing blocks are filled by neighbours
    (`fill`) or left NaN."""
    valid = np.isfinite(fields)
    num = coarsen(np.where(valid, fields, 0.0), factor, lat)
    den = coarsen(valid.astype(fields.dtype), factor, lat)
    with np.errstate(invalid="ignore", divide="ignore"):
        coarse = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return fill_by_neighbours(coarse, periodic=periodic) if fill else coarse


def fill_by_neighbours(x: np.ndarray, max_iter: int | None = None, periodic: bool = True) -> np.ndarray:
    """Replace NaN cells by the mean of their finite 4-neighbours until none is left; longitude
    wraps round when `periodic` (a global grid), else the edge columns have one neighbour."""
    x = x.copy()
    h, w = x.shape[-2:]
    for _ in range(max_iter or (h + w)):
        nan = np.isnan(x)
        if not nan.any():
            return x
        pad = np.concatenate([x[..., :1, :] * np.nan, x, x[..., -1:, :] * np.nan], axis=-2)
        west, east = np.roll(x, 1, -1), np.roll(x, -1, -1)
        if not periodic:
            west[..., 0], east[..., -1] = np.nan, np.nan
        nbrs = np.stack([pad[..., :-2, :], pad[..., 2:, :], west, east])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods stay NaN this round
            fill = np.nanmean(nbrs, axis=0)
        x = np.where(nan, fill, x)
    if np.isnan(x).any():
        raise ValueError("cannot fill gaps: a whole field is missing")
    return x


def fill_gaps(bundle: Downscaler, fields: np.ndarray, members: int = 8, steps: int = 10, seed: int = 0,
              batch_size: int = 8, device: str | None = None, times: np.ndarray | None = None) -> np.ndarray:
    """Ensemble (member, T, C, H, W) that equals `fields` where finite and is sampled in the gaps.

    `times` (T,) datetime64 UTC, needed when the model's residual mean follows the time of day."""
    valid = np.isfinite(fields)
    empty = ~valid.any(axis=(-2, -1))
    if empty.any():
        t, c = np.argwhere(empty)[0]
        raise ValueError(f"variable '{bundle.cfg.variables[c]}' is all-NaN at time index {t}: nothing to fill from")
    with np.errstate(all="ignore"):
        coarse = coarsen_observed(fields.astype(np.float64), bundle.grids.lat, bundle.grids.factor, bundle.grids.periodic)
    known = np.where(valid, fields, 0.0)
    return bundle.sample(coarse, members=members, steps=steps, seed=seed, batch_size=batch_size,
                         device=device, known=known, mask=valid, times=times)
