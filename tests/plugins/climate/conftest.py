"""Small synthetic gridded datasets, written by xarray like real files."""

from __future__ import annotations

import pytest
import xarray as xr

from tests.plugins.climate.helpers import make_fine, make_regional  # noqa: F401 (the fixtures use them)


@pytest.fixture
def fine_ds() -> xr.Dataset:
    return make_fine()


@pytest.fixture
def fine_nc(tmp_path, fine_ds):
    path = tmp_path / "fine.nc"
    fine_ds.to_netcdf(path, engine="h5netcdf")
    return path


@pytest.fixture
def fine_zarr(tmp_path, fine_ds):
    path = tmp_path / "fine.zarr"
    fine_ds.to_zarr(path, mode="w")
    return path


