"""The domain of a downscaling problem: global or regional, and whether the model can take it.

Everything here runs before any training or sampling, so a grid the model cannot take fails in
the first second with one line naming the file and the coordinate:

- longitude is periodic only when the coordinates close the circle (`grid.is_global_longitude`);
  a regional domain is padded without wrapping (edge values repeated), never east onto west;
- the factor must divide both axes: a pole-inclusive grid loses its last pole row, and with
  `crop=True` the last rows / columns that do not fill a coarse block are dropped;
- each axis needs at least `min_cells` fine cells: two coarse cells (interpolation needs two
  points) and 2^L cells for an L-level UNet (its deepest level keeps two cells per axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from sciffusion.plugins.climate.grid import is_global_longitude, trim_to_factor


@dataclass(frozen=True)
class Domain:
    """Size and kind of a (time, latitude, longitude) grid."""

    n_lat: int
    n_lon: int
    lat_range: tuple[float, float]
    lon_range: tuple[float, float]
    periodic: bool

    @classmethod
    def of(cls, ds: xr.Dataset) -> Domain:
        lat, lon = np.asarray(ds["latitude"].values, float), np.asarray(ds["longitude"].values, float)
        return cls(lat.size, lon.size, (float(lat.min()), float(lat.max())), (float(lon.min()), float(lon.max())),
                   is_global_longitude(lon))

    def describe(self) -> str:
        """One line for the log: the grid and which longitude treatment was detected."""
        kind = ("global: longitude spans the globe, periodic (the network wraps east onto west)" if self.periodic
                else "regional: longitude does not close the circle, edges padded without wrapping")
        return (f"{self.n_lat} x {self.n_lon} cells, latitude {self.lat_range[0]:g}..{self.lat_range[1]:g}, "
                f"longitude {self.lon_range[0]:g}..{self.lon_range[1]:g}; {kind}")


def min_cells(factor: int, n_levels: int) -> int:
    """Fewest fine cells per axis a model of `n_levels` UNet levels and this factor can take:
    max(2 factor, 2^n_levels)."""
    return max(2 * factor, 2**n_levels)


def fit_to_factor(ds: xr.Dataset, factor: int, crop: bool, source: str) -> tuple[xr.Dataset, list[str]]:
    """Make `factor` divide the grid, or raise naming the file and the coordinate.

    A pole-inclusive latitude axis (n = k factor + 1 ending at a pole) loses the pole row. Any
    other remainder is an error unless `crop`, which drops the last n mod factor rows or columns.
    Returns the dataset and what was changed (lines for the log)."""
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    notes = []
    ds, note = trim_to_factor(ds, factor)
    if note:
        notes.append(note)
    for name in ("latitude", "longitude"):
        n = ds.sizes[name]
        extra = n % factor
        if not extra:
            continue
        if not crop:
            raise ValueError(f"{source}: factor {factor} does not divide the {name} size {n}; pass --crop to drop "
                             f"the last {extra} {name} cell(s), or choose a factor of {n}")
        ds = ds.isel({name: slice(0, n - extra)})
        notes.append(f"--crop: dropped the last {extra} {name} cell(s) so {factor} divides {n - extra}")
    return ds, notes


def check_size(ds: xr.Dataset, factor: int, n_levels: int, source: str) -> None:
    """Raise when an axis has fewer than `min_cells` cells (see the module docstring)."""
    need = min_cells(factor, n_levels)
    for name in ("latitude", "longitude"):
        n = ds.sizes[name]
        if n < need:
            raise ValueError(f"{source}: the grid is smaller than the network's receptive field: {name} has {n} "
                             f"cells, the model needs at least {need} (2 coarse cells of factor {factor} and "
                             f"{2**n_levels} for its {n_levels} UNet levels)")
