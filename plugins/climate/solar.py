"""Solar geometry as regression features for the time-of-day dependence of sub-grid residuals.

For a time t (UTC) and a cell at latitude phi, longitude lam (radians):

    hour angle        h = 2 pi (hours_UTC / 24) + lam - pi        (0 at local solar noon)
    declination       delta = -23.44 deg * cos(2 pi (day_of_year + 10) / 365)
    cos zenith        mu = sin(phi) sin(delta) + cos(phi) cos(delta) cos(h)
    features          f = [1, max(mu, 0), sin(h)]

max(mu, 0) is the top-of-atmosphere insolation in units of the solar constant; sin(h) lets the
response lag or lead the sun (near-surface temperature peaks in the afternoon). A per-cell linear
fit r ~ f . beta then carries each cell's own diurnal cycle (coasts, deserts, mountains).
"""

from __future__ import annotations

import numpy as np

N_FEATURES = 3


def has_clock_times(times: np.ndarray) -> bool:
    """True when `times` are numpy datetimes (the features need a UTC time of day)."""
    return np.issubdtype(np.asarray(times).dtype, np.datetime64)


def solar_features(times: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Features f = [1, max(cos zenith, 0), sin(hour angle)] of shape (T, 3, H, W), float64.

    `times` (T,) numpy datetime64 in UTC; `lat` (H,), `lon` (W,) in degrees.
    """
    times = np.asarray(times)
    if not has_clock_times(times):
        raise TypeError(f"solar features need datetime64 times (UTC), got dtype {times.dtype}")
    day = times.astype("datetime64[D]")
    hours = (times - day).astype("timedelta64[s]").astype(np.float64) / 3600.0
    day_of_year = (day - times.astype("datetime64[Y]")).astype(np.float64)
    phi = np.deg2rad(np.asarray(lat, np.float64))[None, :, None]
    lam = np.deg2rad(np.asarray(lon, np.float64))[None, None, :]
    h = 2 * np.pi * hours[:, None, None] / 24.0 + lam - np.pi
    delta = np.deg2rad(-23.44) * np.cos(2 * np.pi * (day_of_year + 10) / 365.0)[:, None, None]
    mu = np.sin(phi) * np.sin(delta) + np.cos(phi) * np.cos(delta) * np.cos(h)
    one = np.ones_like(mu)
    return np.stack([one, np.maximum(mu, 0.0), np.broadcast_to(np.sin(h), mu.shape)], axis=1)
