"""CF output: dims, coordinates, units and attributes survive a netCDF / zarr round trip; atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from sciffusion.plugins.climate.io import ERA5_CREDIT, open_fields
from sciffusion.plugins.climate.output import ensemble_dataset, write


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_round_trip_keeps_coords_units_and_attrs(tmp_path, fine_ds, suffix):
    src = fine_ds.copy()
    src.attrs["source"] = "ERA5 reanalysis"
    ds = open_fields(src, ["t2m", "tp"])
    ens = np.random.default_rng(0).normal(size=(3, ds.sizes["time"], 2, 16, 32)).astype(np.float32)
    out = ensemble_dataset(ens, ds, ["t2m", "tp"], source="sciffusion test", history="pytest run")
    path = write(out, tmp_path / f"down{suffix}")
    back = xr.open_zarr(path) if suffix == ".zarr" else xr.open_dataset(path)
    assert back["t2m"].dims == ("realization", "time", "latitude", "longitude")
    np.testing.assert_array_equal(back["t2m"].values, ens[:, :, 0])
    np.testing.assert_array_equal(back["latitude"].values, ds["latitude"].values)
    np.testing.assert_array_equal(back["longitude"].values, ds["longitude"].values)
    np.testing.assert_array_equal(back["time"].values, ds["time"].values)
    assert back["t2m"].attrs["units"] == "K" and back["tp"].attrs["long_name"] == "Total precipitation"
    assert back["latitude"].attrs["units"] == "degrees_north"
    assert back.attrs["Conventions"] == "CF-1.8"
    assert back.attrs["institution"] == "tests" and back.attrs["title"] == "synthetic test field"
    assert back.attrs["history"].endswith("pytest run")
    assert back.attrs["source"] == "sciffusion test; input: ERA5 reanalysis"
    assert back.attrs["credit"] == ERA5_CREDIT
    back.close()
    # writing again replaces the file; nothing temporary is left beside it
    write(out, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_shape_mismatch_and_bad_suffix(tmp_path, fine_ds):
    ds = open_fields(fine_ds, ["t2m"])
    with pytest.raises(ValueError, match="does not match the template"):
        ensemble_dataset(np.zeros((1, 2, 1, 4, 4)), ds, ["t2m"], source="x")
    with pytest.raises(ValueError, match="2 channels but 1 variable names"):
        ensemble_dataset(np.zeros((1, 8, 2, 16, 32)), ds, ["t2m"], source="x")
    good = ensemble_dataset(np.zeros((1, 8, 1, 16, 32)), ds, ["t2m"], source="x")
    assert "credit" not in good.attrs  # not ERA5: no ECMWF credit claimed
    with pytest.raises(ValueError, match=r"expected a \.nc or \.zarr path"):
        write(good, tmp_path / "out.csv")
