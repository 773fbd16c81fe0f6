"""Lazy opening, coordinate normalisation and every bad-input path of plugins.climate.io."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from sciffusion.plugins.climate.downscale import (
    DownscaleConfig,
    Grids,
    ResidualStrips,
    fit_residual_stats,
)
from sciffusion.plugins.climate.io import check_grid, load_times, open_fields
from sciffusion.plugins.climate.normalise import fit_normaliser
from tests.plugins.climate.helpers import make_fine


@pytest.mark.parametrize("kind", ["nc", "zarr", "dataset"])
def test_open_normalises_coords_lazily(kind, fine_ds, fine_nc, fine_zarr):
    src = {"nc": fine_nc, "zarr": fine_zarr, "dataset": fine_ds}[kind]
    ds = open_fields(src, ["t2m", "tp"])
    assert list(ds.data_vars) == ["t2m", "tp"]
    assert ds["t2m"].dims == ("time", "latitude", "longitude")
    assert ds["t2m"].chunks is not None  # still dask: nothing loaded
    lat, lon = ds["latitude"].values, ds["longitude"].values
    assert np.all(np.diff(lat) > 0) and np.all(np.diff(lon) > 0)
    assert lon.min() >= 0 and lon.max() < 360
    # values follow their coordinates through the flip and the roll
    src_ds = make_fine()
    want = src_ds["t2m"].sel(lat=lat[2], lon=lon[5] - 360 if lon[5] >= 180 else lon[5]).values
    np.testing.assert_allclose(ds["t2m"].isel(latitude=2, longitude=5).values, want)
    assert ds["t2m"].attrs["units"] == "K"
    assert ds["latitude"].attrs["units"] == "degrees_north"


def test_lon_convention_minus180(fine_ds):
    ds = open_fields(fine_ds, ["t2m"], lon_convention="-180_180")
    lon = ds["longitude"].values
    assert lon.min() >= -180 and lon.max() < 180 and np.all(np.diff(lon) > 0)
    with pytest.raises(ValueError, match="lon_convention"):
        open_fields(fine_ds, ["t2m"], lon_convention="east")


def test_integer_time_axis_with_units_is_decoded():
    ds = make_fine(n_time=3).rename(time="time_index")
    ds = ds.assign_coords(time_index=np.array([10, 17, 24]))
    ds.attrs["time_units"] = "hours since 1940-01-01 00:00 (proleptic_gregorian)"
    out = open_fields(ds, ["t2m"])
    assert str(out["time"].values[1]).startswith("1940-01-01T17")


def test_missing_latitude_and_longitude_are_named(fine_ds):
    with pytest.raises(ValueError, match="no latitude coordinate"):
        open_fields(fine_ds.rename(lat="y"), ["t2m"])
    with pytest.raises(ValueError, match="no longitude coordinate"):
        open_fields(fine_ds.rename(lon="x"), ["t2m"])


def test_missing_variable_lists_what_exists(fine_nc):
    with pytest.raises(KeyError, match=r"\['msl'\] not found; available variables: \['t2m', 'tp', 'u10'\]"):
        open_fields(fine_nc, ["t2m", "msl"])


def test_non_monotonic_and_duplicated_coords(fine_ds):
    lat = fine_ds["lat"].values.copy()
    lat[[3, 4]] = lat[[4, 3]]
    with pytest.raises(ValueError, match="coordinate 'latitude' is not monotonic"):
        open_fields(fine_ds.assign_coords(lat=lat), ["t2m"])
    lon = fine_ds["lon"].values.copy()
    lon[7] = lon[6]
    with pytest.raises(ValueError, match="coordinate 'longitude' has duplicated values"):
        open_fields(fine_ds.assign_coords(lon=lon), ["t2m"])
    time = fine_ds["time"].values.copy()
    time[2] = time[1]
    with pytest.raises(ValueError, match="coordinate 'time' has duplicated values"):
        open_fields(fine_ds.assign_coords(time=time), ["t2m"])


def test_out_of_range_latitude_and_extra_dims(fine_ds):
    with pytest.raises(ValueError, match="latitude outside"):
        open_fields(fine_ds.assign_coords(lat=fine_ds["lat"] * 2), ["t2m"])
    deep = fine_ds.expand_dims(level=[850, 500])
    with pytest.raises(ValueError, match=r"variable 't2m' has extra dimension\(s\) \['level'\]"):
        open_fields(deep, ["t2m"])


def test_all_nan_field_is_named(fine_ds):
    bad = fine_ds.copy(deep=True)
    bad["u10"][3] = np.nan
    ds = open_fields(bad, ["t2m", "u10"])
    load_times(ds, [0, 1], ["t2m", "u10"])  # other times are fine
    with pytest.raises(ValueError, match="variable 'u10' is all-NaN at time 2020-01-01T18"):
        load_times(ds, [2, 3], ["t2m", "u10"])


def test_grid_mismatch_is_reported(fine_ds):
    ds = open_fields(fine_ds, ["t2m"])
    check_grid(ds, ds["latitude"].values, ds["longitude"].values)
    with pytest.raises(ValueError, match="grid does not match the checkpoint: latitude has 16 points"):
        check_grid(ds, np.linspace(-89, 89, 20), ds["longitude"].values)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_fields(tmp_path / "nope.nc")
    (tmp_path / "x.csv").write_text("1")
    with pytest.raises(ValueError, match="expected a netCDF file"):
        open_fields(tmp_path / "x.csv")


def _counting_dataset(n_time: int, n_lat: int, n_lon: int, calls: list) -> xr.Dataset:
    """A dask-backed dataset whose blocks record when they are computed (nothing exists up front)."""

    def block(block_info=None):
        info = block_info[None]
        calls.append(info["chunk-location"][0])
        t0 = info["array-location"][0][0]
        shape = info["chunk-shape"]
        return (280.0 + t0 + np.random.default_rng(t0).normal(0, 1, shape)).astype(np.float32)

    arr = da.map_blocks(block, dtype=np.float32, chunks=((1,) * n_time, (n_lat,), (n_lon,)))
    lat = np.linspace(89, -89, n_lat)
    lon = np.arange(n_lon) * 360.0 / n_lon
    return xr.Dataset({"t2m": (("time", "lat", "lon"), arr)},
                      coords={"time": np.arange(n_time), "lat": lat, "lon": lon})


def test_only_needed_chunks_are_computed():
    calls: list[int] = []
    n_time, n_lat, n_lon = 20000, 64, 128  # 655 MB if it were ever materialised
    ds = open_fields(_counting_dataset(n_time, n_lat, n_lon, calls), ["t2m"])
    assert calls == [] and ds["t2m"].nbytes > 600e6
    x = load_times(ds, [5, 6, 7, 8], ["t2m"])
    assert x.shape == (4, 1, n_lat, n_lon)
    assert sorted(calls) == [5, 6, 7, 8]
    # training pieces touch the training times only, one batch / one time at a time
    calls.clear()
    train = list(range(100, 106))
    norm = fit_normaliser(ds, ["t2m"], train)
    grids = Grids(ds["latitude"].values, ds["longitude"].values, 4)
    stats = fit_residual_stats(ds, ["t2m"], train, norm, grids, batch=2)
    assert set(calls) == set(train)
    calls.clear()
    cfg = DownscaleConfig(variables=("t2m",), strip_height=16)
    strips = ResidualStrips(ds, cfg, train, norm, [stats], grids, cache=2)
    x0, cond, w = strips[len(strips.views) * 3 + 1]
    assert x0.shape == (1, 16, n_lon) and cond.shape == (4, 16, n_lon) and w.shape == (1, 16, n_lon)
    assert calls == [103]
