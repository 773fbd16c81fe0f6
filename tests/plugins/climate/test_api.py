"""`downscale(ds, model)`: xarray in and out, lazy on dask, reproducible whatever the chunking."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from sciffusion.plugins import core_sampler
from sciffusion.plugins.climate.api import downscale, load_model, time_seed
from sciffusion.plugins.climate.downscale import DownscaleConfig, train
from sciffusion.plugins.climate.grid import coarsen_dataset
from sciffusion.plugins.climate.io import open_fields
from tests.plugins.climate.helpers import make_fine

VARS = ("t2m", "u10", "tp")


@pytest.fixture(scope="module")
def model_and_coarse(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    ds = open_fields(make_fine(n_time=8, n_lat=16, n_lon=32), list(VARS))
    cfg = DownscaleConfig(variables=VARS, widths=(8, 8, 8), strip_height=8, source="synthetic")
    path = train(ds, cfg, list(range(6)), tmp / "run", steps=2, batch_size=4, checkpoint_every=2).save(tmp / "m.pt")
    coarse = coarsen_dataset(ds, 4).astype(np.float32)
    coarse["time"].encoding = {"units": "hours since 2000-01-01", "calendar": "proleptic_gregorian"}
    store = tmp / "coarse.zarr"
    coarse.to_zarr(store, mode="w")
    return path, store, tmp


def test_downscale_is_lazy_and_carries_cf_metadata(model_and_coarse):
    path, store, _ = model_and_coarse
    src = xr.open_zarr(store).chunk({"time": 3})
    out = downscale(src, path, members=2, steps=2)
    assert all(out[v].chunks == ((2,), (3, 3, 2), (16,), (32,)) for v in VARS)   # nothing computed yet
    assert out["t2m"].dims == ("realization", "time", "latitude", "longitude")
    assert out["t2m"].attrs["units"] == "K" and out["latitude"].attrs["units"] == "degrees_north"
    assert out.attrs["title"] == "synthetic test field" and out.attrs["Conventions"] == "CF-1.8"
    assert "downscale(members=2" in out.attrs["history"] and f"sampler={core_sampler()}," in out.attrs["history"]
    assert out["time"].encoding["units"] == "hours since 2000-01-01" and out["t2m"].encoding["dtype"] == np.float32
    values = out.compute()
    assert np.isfinite(values["t2m"].values).all() and values["tp"].values.min() >= 0
    # every member coarsens back to its coarse input
    back = coarsen_dataset(values.isel(realization=1).drop_vars("realization"), 4)
    np.testing.assert_allclose(back["t2m"].values, src["t2m"].values, rtol=1e-5)


def test_the_same_seed_gives_the_same_output_with_any_chunking(model_and_coarse, tmp_path):
    path, store, _ = model_and_coarse
    src = xr.open_zarr(store)
    a = downscale(src.chunk({"time": 3}), path, members=2, steps=2, seed=5).compute()
    b = downscale(src.chunk({"time": 1}), path, members=2, steps=2, seed=5).compute(scheduler="threads", num_workers=2)
    for v in VARS:
        np.testing.assert_array_equal(a[v].values, b[v].values)
    downscale(src.isel(time=slice(4, 8)).chunk({"time": 2}), path, members=2, steps=2, seed=5).to_zarr(tmp_path / "o.zarr")
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "o.zarr")["t2m"].values, a["t2m"].values[:, 4:])
    c = downscale(src, path, members=2, steps=2, seed=6).compute()
    assert not np.array_equal(a["t2m"].values, c["t2m"].values)
    assert time_seed(5, src["time"].values[0]) != time_seed(5, src["time"].values[1]) != time_seed(6, src["time"].values[1])
    assert load_model(path) is load_model(str(path))   # one load per process


def test_descending_latitude_comes_back_descending(model_and_coarse):
    path, store, _ = model_and_coarse
    src = xr.open_zarr(store).isel(latitude=slice(None, None, -1)).isel(time=[0])
    out = downscale(src, path, members=1, steps=1)
    assert out["latitude"].values[0] > out["latitude"].values[-1] and out.sizes["latitude"] == 16
    with pytest.raises(ValueError, match="grid does not match the checkpoint's coarse grid"):
        downscale(src.isel(latitude=slice(0, 2)), path)
