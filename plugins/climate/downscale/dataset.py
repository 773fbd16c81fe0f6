"""Training examples: strips of standardised residuals with their conditioning, from a bounded cache."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset, get_worker_info

from sciffusion.plugins.climate.downscale.config import DownscaleConfig, condition
from sciffusion.plugins.climate.downscale.grids import (
    Grids,
    alignments,
    cols_in_every_alignment,
    load_aligned,
    rows_in_every_alignment,
)
from sciffusion.plugins.climate.downscale.statistics import (
    ResidualStats,
    local_features,
    normalised_residual,
    residual_features,
    time_values,
)
from sciffusion.plugins.climate.normalise import Normaliser


def _loader_worker_scheduler():
    """Inside a DataLoader worker, dask computes in that process (its synchronous scheduler): a worker is
    forked, and the thread pool of dask's default scheduler does not survive a fork (a compute would wait
    forever). Elsewhere dask's own choice stands."""
    if get_worker_info() is None:
        return nullcontext()
    import dask

    return dask.config.set(scheduler="synchronous")


class ResidualStrips(Dataset):
    """Training examples (x0, cond, w): strips of `strip_height` latitude rows, full longitude on a
    global grid (on a regional one with several alignments, the W - factor columns every alignment
    keeps, from the west or the east edge).

    Items enumerate (time, alignment, first row, first column) with rows on a stride of 4; `stats` holds one
    `ResidualStats` per block alignment of `alignments(cfg)`, in that order. One prepared
    (time, alignment) is kept per cache slot (`cache` slots), so memory is bounded by the cache,
    not by the dataset. `w` (C, strip, lon) holds the latitude weights times the variable's loss
    weight, 0 where the truth is NaN. The statistics of a time leave out that time and its
    `cfg.leave_out` neighbours on each side (`left_out`). Loader workers (`num_workers`) each keep
    their own cache and read the fields with dask's synchronous scheduler.
    """

    def __init__(self, ds: xr.Dataset, cfg: DownscaleConfig, times: Sequence[int], norm: Normaliser,
                 stats: Sequence[ResidualStats], grids: Grids, cache: int = 32) -> None:
        self.ds, self.cfg, self.times, self.norm, self.grids = ds, cfg, list(times), norm, grids
        self.stats, self.alignments = list(stats), alignments(cfg)
        if len(self.stats) != len(self.alignments):
            raise ValueError(f"got residual statistics for {len(self.stats)} block alignments, the config has "
                             f"{len(self.alignments)} ({cfg.lat_alignments} in latitude x {cfg.alignments} in longitude)")
        h = cfg.strip_height
        n_rows = rows_in_every_alignment(len(grids.lat), cfg.factor, cfg.lat_alignments)
        if not 1 <= h <= n_rows:
            raise ValueError(f"strip_height {h} must be between 1 and {n_rows}")
        self.strip_width = cols_in_every_alignment(grids, cfg.alignments)
        self.views = []
        for k, al in enumerate(self.alignments):
            sub = grids.aligned(al.row, al.col)
            col_starts = sorted({0, len(sub.lon) - self.strip_width})
            self.views += [(k, start, c) for start in range(0, len(sub.lat) - h + 1, 4) for c in col_starts]
        self.variable_weights = cfg.variable_weights()[:, None, None]
        self._cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = cache

    def __len__(self) -> int:
        return len(self.times) * len(self.views)

    def left_out(self, ti: int) -> list[int]:
        """The training times (positions in `times`) left out of the statistics of the ti-th: it and
        its `leave_out` neighbours on each side, fewer where that would leave under 3 times."""
        w = min(self.cfg.leave_out, (len(self.times) - 3) // 2)
        return list(range(max(ti - w, 0), min(ti + w + 1, len(self.times))))

    def prepared(self, ti: int, k: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x0, cond, w) for the ti-th training time in the k-th block alignment, on all the rows
        of that alignment; w is the loss weight (C, H', W)."""
        key = (ti, k)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        group = self.left_out(ti)
        with _loader_worker_scheduler():
            fine, grids, lon = load_aligned(self.ds, [self.times[j] for j in group], self.cfg.variables, self.grids,
                                            self.alignments[k])
        b, r, valid = normalised_residual(fine, self.norm, grids)
        f = residual_features(time_values(self.ds, [self.times[j] for j in group]), grids.lat, lon, len(group))
        at = group.index(ti)
        m, s = self.stats[k].leave_out(r, local_features(f, b) if self.cfg.local_slope else f, self.cfg.std_floor,
                                       valid, at)
        b, r, valid, f = b[at], r[at], valid[at], f[at]
        x0 = np.where(valid, (r - m) / s, 0.0).astype(np.float32)   # missing cells: the mean, weight 0
        cond = condition(b, m, s, grids.lat, f[1:] if self.cfg.solar_channels else None)
        w = (self.variable_weights * (grids.weights[:, None] * valid)).astype(np.float32)
        self._cache[key] = (x0, cond, w)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return self._cache[key]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ti, vi = divmod(i, len(self.views))
        k, start, col = self.views[vi]
        x0, cond, w = self.prepared(ti, k)
        rows, cols = slice(start, start + self.cfg.strip_height), slice(col, col + self.strip_width)
        return (torch.from_numpy(x0[:, rows, cols]), torch.from_numpy(cond[:, rows, cols]),
                torch.from_numpy(w[:, rows, cols]))

