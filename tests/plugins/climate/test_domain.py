"""Any grid: the domain is detected, checked before training, and regional grids are never wrapped."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from sciffusion.plugins.climate.domain import Domain, check_size, fit_to_factor, min_cells
from sciffusion.plugins.climate.downscale import Alignment, DownscaleConfig, Grids, build
from sciffusion.plugins.climate.io import open_fields
from tests.plugins.climate.helpers import make_fine, make_regional


def test_domain_says_whether_longitude_is_periodic():
    glob, reg = open_fields(make_fine()), open_fields(make_regional())
    assert Domain.of(glob).periodic and "global" in Domain.of(glob).describe()
    d = Domain.of(reg)
    assert not d.periodic and d.describe().startswith("15 x 21 cells, latitude 20..34, longitude 235..265; regional")
    assert reg["latitude"].values[0] == 20 and reg["t2m"].values[0, 0, 0] == make_regional()["t2m"].values[0, -1, 0]


def test_factor_and_size_checks_name_the_file_and_coordinate():
    ds = open_fields(make_regional())
    with pytest.raises(ValueError, match=r"^f\.nc: factor 4 does not divide the latitude size 15; pass --crop to drop the last 3"):
        fit_to_factor(ds, 4, False, "f.nc")
    cropped, notes = fit_to_factor(ds, 4, True, "f.nc")
    assert dict(cropped.sizes)["latitude"] == 12 and dict(cropped.sizes)["longitude"] == 20 and len(notes) == 2
    assert fit_to_factor(ds, 3, False, "f.nc")[1] == []
    assert min_cells(3, 3) == 8 and min_cells(5, 3) == 10
    with pytest.raises(ValueError, match=r"f\.nc: the grid is smaller than the network's receptive field: latitude has 6"):
        check_size(ds.isel(latitude=slice(0, 6)), 3, 3, "f.nc")
    check_size(ds, 3, 3, "f.nc")


def test_curvilinear_grids_are_refused_with_a_clear_message():
    y, x = np.arange(4.0), np.arange(5.0)
    ds = xr.Dataset({"t2m": (("time", "y", "x"), np.zeros((2, 4, 5)))},
                    coords={"time": [0, 1], "lat": (("y", "x"), 40 + y[:, None] + 0 * x), "lon": (("y", "x"), 10 + x + 0 * y[:, None])})
    with pytest.raises(ValueError, match="coordinate 'lat' is 2-D with dims \\('y', 'x'\\): curvilinear grids are not supported"):
        open_fields(ds, ["t2m"])


def test_times_must_increase():
    ds = make_regional()
    with pytest.raises(ValueError, match="dataset: coordinate 'time' is not monotonic increasing"):
        open_fields(ds.isel(time=[0, 2, 1, 3]))


def test_regional_longitude_alignments_drop_columns_instead_of_rolling():
    ds = open_fields(make_regional(), ["t2m", "u10"]).assign_coords(time=np.arange(8))
    grids = Grids(ds["latitude"].values, ds["longitude"].values, 3)
    assert not grids.periodic and grids.cols(2) == slice(2, 20)
    cfg = DownscaleConfig(variables=("t2m", "u10"), factor=3, widths=(8, 8, 8), strip_height=12, alignments=3, lat_alignments=3)
    bundle, data = build(ds, cfg, list(range(6)))
    assert not bundle.model.cfg.periodic and data.strip_width == 18
    x0, cond, _ = data[len(data) - 1]
    assert x0.shape == (2, 12, 18) and cond.shape == (7, 12, 18)
    # alignment (1, 2): rows 1..12 and columns 2..19 of the fields, with their own blocks
    sub = ds.isel(latitude=slice(1, 13), longitude=slice(2, 20))
    k = data.alignments.index(Alignment(1, 2))
    ref = Grids(sub["latitude"].values, sub["longitude"].values, 3)
    np.testing.assert_allclose(data.prepared(0, k)[1][0], ref.up(ref.coarsen(bundle.norm.forward(
        sub[["t2m", "u10"]].to_array("c").transpose("time", "c", ...).values[:1].astype(np.float64))))[0, 0], rtol=1e-5, atol=1e-5)
