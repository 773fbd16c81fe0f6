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


def untrained_bundle(variables=("t2m", "u10", "tp"), n_lat: int = 16, n_lon: int = 32, factor: int = 4,
                     prediction: str = "v", seed: int = 0):
    """A `Downscaler` with statistics drawn at random and an untrained network (widths 8), on the
    grid of `make_fine`, with its normaliser fitted on three times; nothing is trained."""
    from sciffusion.plugins.climate.downscale import DownscaleConfig, Downscaler, Grids
    from sciffusion.plugins.climate.io import open_fields
    from sciffusion.plugins.climate.normalise import fit_normaliser
    from sciffusion.plugins.climate.solar import N_FEATURES

    rng = np.random.default_rng(seed)
    ds = open_fields(make_fine(n_time=4, n_lat=n_lat, n_lon=n_lon), list(variables))
    grids = Grids(ds["latitude"].values, ds["longitude"].values, factor)
    cfg = DownscaleConfig(variables=tuple(variables), factor=factor, widths=(8, 8, 8), strip_height=8, prediction=prediction)
    c = len(variables)
    coef = rng.normal(0, 0.1, (c, N_FEATURES, n_lat, n_lon))
    std = rng.uniform(0.5, 1.5, (c, n_lat, n_lon))
    return Downscaler(cfg, fit_normaliser(ds, list(variables), [0, 1, 2]), grids, coef, std, np.zeros(c, bool)), ds
