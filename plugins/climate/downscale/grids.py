"""Where the coarse blocks lie: the fine and coarse grids of a problem and the block alignments.

An alignment (row b, column a) places the coarse blocks b rows into the grid and, on a global
grid, rolls the fields west by a cells (on a regional grid it keeps the columns from a on), so the
fixed blocks group other cells. Latitude does not wrap: the b rows before the first block and the
last factor - b rows are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import xarray as xr

from sciffusion.plugins.climate.downscale.config import DownscaleConfig
from sciffusion.plugins.climate.grid import (
    block_mean_correction,
    check_factor,
    coarse_coords,
    coarsen,
    interpolate,
    is_global_longitude,
    lat_weights,
)
from sciffusion.plugins.climate.io import load_times


class Grids:
    """Fine and coarse coordinates of a downscaling problem, with the interpolation B.

    `periodic` is detected from the longitudes (`grid.is_global_longitude`): a global grid wraps
    in longitude (interpolation, block-mean correction, the network's padding), a regional one
    does not."""

    def __init__(self, lat: np.ndarray, lon: np.ndarray, factor: int) -> None:
        check_factor(len(lat), len(lon), factor)
        self.lat, self.lon, self.factor = np.array(lat, float), np.array(lon, float), factor
        self.lat_c, self.lon_c = coarse_coords(self.lat, self.lon, factor)
        self.weights = lat_weights(self.lat)
        self.periodic = is_global_longitude(self.lon)

    def coarsen(self, x):
        return coarsen(x, self.factor, self.lat)

    def up(self, xc, method: str = "bicubic"):
        return interpolate(xc, self.lat_c, self.lon_c, self.lat, self.lon, method, periodic=self.periodic)

    @cached_property
    def block_mean_correction(self) -> tuple[np.ndarray, np.ndarray]:
        """`grid.block_mean_correction` of this grid, for `match_block_means`."""
        return block_mean_correction(self.lat, self.lon, self.factor, self.periodic)

    def rows(self, offset: int) -> slice:
        """Fine rows whose blocks start `offset` rows into the grid: all rows for 0, else
        offset .. H - factor + offset (the partial blocks at both ends are dropped)."""
        return slice(0, len(self.lat)) if offset == 0 else slice(offset, len(self.lat) - self.factor + offset)

    def cols(self, offset: int) -> slice:
        """Fine columns whose blocks start `offset` columns into a regional grid, as `rows`; all
        columns on a global grid, which is rolled instead (`load_aligned`)."""
        if self.periodic or offset == 0:
            return slice(0, len(self.lon))
        return slice(offset, len(self.lon) - self.factor + offset)

    def aligned(self, offset: int, col: int = 0) -> Grids:
        """The grids of the fine rows `rows(offset)` and columns `cols(col)`, with their own coarse blocks."""
        if offset == 0 and (col == 0 or self.periodic):
            return self
        return Grids(self.lat[self.rows(offset)], self.lon[self.cols(col)], self.factor)


@dataclass(frozen=True)
class Alignment:
    """A placement of the coarse blocks on the fine grid: blocks start `row` rows into the grid
    (`Grids.rows`) and the fields are rolled west by `col` cells."""

    row: int = 0
    col: int = 0


def load_aligned(ds: xr.Dataset, times: Sequence[int], variables: Sequence[str], grids: Grids,
                 alignment: Alignment) -> tuple[np.ndarray, Grids, np.ndarray]:
    """Fields (T, C, H', W') of `times` in block alignment `alignment`, the grids they are on, and
    the longitudes (W',) of their columns: rows `grids.rows(row)` are kept and, on a global grid,
    the fields rolled west by `col` cells (column j holds longitude j + col); on a regional grid the
    columns `grids.cols(col)` are kept instead. Either way the coarse blocks of `Grids.coarsen`
    group another set of cells."""
    fine = load_times(ds, times, variables)[..., grids.rows(alignment.row), grids.cols(alignment.col)]
    agrids = grids.aligned(alignment.row, alignment.col)
    if not grids.periodic:
        return fine, agrids, agrids.lon
    return np.roll(fine, -alignment.col, axis=-1), agrids, np.roll(grids.lon, -alignment.col)


def rows_in_every_alignment(n_lat: int, factor: int, lat_alignments: int) -> int:
    """Fine rows that every latitude alignment keeps (`Grids.rows`): all, or H - factor when L > 1."""
    return n_lat - (factor if lat_alignments > 1 else 0)


def cols_in_every_alignment(grids: Grids, lon_alignments: int) -> int:
    """Fine columns that every longitude alignment keeps (`Grids.cols`): all on a global grid or
    with one alignment, else W - factor."""
    return len(grids.lon) - (grids.factor if lon_alignments > 1 and not grids.periodic else 0)


def alignments(cfg: DownscaleConfig) -> list[Alignment]:
    """The block alignments a model trains on, (row, col) in row-major order, (0, 0) first."""
    return [Alignment(b, a) for b in range(cfg.lat_alignments) for a in range(cfg.alignments)]

