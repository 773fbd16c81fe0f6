"""Gap filling: complete fields with missing cells (NaN) by inpainting with the downscaling model.

For a field y with observed cells O (mask M = 1 on O):

1. the coarse field is the area-weighted mean over the observed cells of each block,
   ``C_O(y)_IJ = sum_{ij in IJ, O} w_i y_ij / sum_{ij in IJ, O} w_i``; blocks with no observed cell
   are filled from their neighbours (repeated 4-neighbour averaging, periodic in longitude on a
   global grid);
2. the core sampler draws the standardised residual with `known`/`mask` (replacement
   inpainting), so the observed cells are imposed at every step and returned exactly.
"""

from __future__ import annotations

import numpy as np

from sciffusion.plugins.climate.downscale import Downscaler
from sciffusion.plugins.climate.grid import coarsen_observed, fill_by_neighbours

__all__ = ["coarsen_observed", "fill_by_neighbours", "fill_gaps"]


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
