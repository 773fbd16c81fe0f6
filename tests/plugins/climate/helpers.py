"""Small synthetic gridded datasets, written by xarray like real files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr


def make_fine(n_time: int = 8, n_lat: int = 16, n_lon: int = 32, seed: int = 0, names=("lat", "lon")) -> xr.Dataset:
    """A smooth global field plus small-scale noise; latitude decreasing, longitude in [-180, 180)."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(90 - 90 / n_lat, -90 + 90 / n_lat, n_lat)
    lon = np.arange(n_lon) * 360.0 / n_lon - 180.0
    time = pd.date_range("2020-01-01", periods=n_time, freq="6h")
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    t2m = 280 + 20 * np.cos(la)[None] + 3 * np.sin(3 * lo + np.arange(n_time)[:, None, None] * 0.3) + rng.normal(0, 1, (n_time, n_lat, n_lon))
    u10 = 5 * np.sin(2 * la)[None] + rng.normal(0, 2, (n_time, n_lat, n_lon))
    tp = np.clip(rng.gamma(0.3, 1e-3, (n_time, n_lat, n_lon)) - 2e-4, 0, None)
    dims = ("time", names[0], names[1])
    ds = xr.Dataset(
        {
            "t2m": (dims, t2m.astype(np.float32), {"units": "K", "long_name": "2 metre temperature"}),
            "u10": (dims, u10.astype(np.float32), {"units": "m s**-1", "long_name": "10 metre U wind component"}),
            "tp": (dims, tp.astype(np.float32), {"units": "m", "long_name": "Total precipitation"}),
        },
        coords={"time": time, names[0]: (names[0], lat, {"units": "degrees_north"}), names[1]: (names[1], lon, {"units": "degrees_east"})},
        attrs={"title": "synthetic test field", "institution": "tests"},
    )
    return ds


def make_regional(n_time: int = 8, n_lat: int = 15, n_lon: int = 21, dlat: float = 1.0, dlon: float = 1.5,
                  seed: int = 0) -> xr.Dataset:
    """A regional box (odd sizes, non-square cells, latitude decreasing) over 20 N..., 235 E...:
    the fields of `make_fine` on a grid that does not close the circle."""
    rng = np.random.default_rng(seed)
    lat = 20.0 + dlat * np.arange(n_lat)[::-1]
    lon = 235.0 + dlon * np.arange(n_lon)
    time = pd.date_range("2020-01-01", periods=n_time, freq="6h")
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    t2m = 280 + 20 * np.cos(la)[None] + 3 * np.sin(8 * lo + np.arange(n_time)[:, None, None] * 0.3) + rng.normal(0, 1, (n_time, n_lat, n_lon))
    u10 = 5 * np.sin(6 * la)[None] + rng.normal(0, 2, (n_time, n_lat, n_lon))
    dims = ("time", "lat", "lon")
    return xr.Dataset(
        {"t2m": (dims, t2m.astype(np.float32), {"units": "K"}), "u10": (dims, u10.astype(np.float32), {"units": "m s**-1"})},
        coords={"time": time, "lat": ("lat", lat, {"units": "degrees_north"}), "lon": ("lon", lon, {"units": "degrees_east"})},
        attrs={"title": "synthetic regional test field"},
    )
