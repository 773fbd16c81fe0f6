"""The regional ERA5 cut: odd sizes, a static block of NaN cells and a missing time; train ->
downscale -> score on it end to end (tiny settings)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from recipes.climate_downscale import main
from sciffusion.plugins.climate.domain import Domain
from sciffusion.plugins.climate.io import open_fields
from sciffusion.plugins.climate.sample_data import MISSING_TIME, regional_sample


def test_the_regional_cut_has_odd_sizes_a_static_gap_and_a_missing_time(tmp_path):
    ds = regional_sample(tmp_path / "box.nc", n_time=12)
    assert dict(ds.sizes) == {"time": 12, "latitude": 33, "longitude": 45}
    assert all(n % 2 for n in (33, 45))
    gap = np.isnan(ds["t2m"].values)
    assert gap[MISSING_TIME].all() and gap[0].sum() == 6 * 8 and (gap[0] == gap[11]).all()
    back = open_fields(tmp_path / "box.nc")
    assert not Domain.of(back).periodic and back.attrs["credit"].startswith("ERA5")


@pytest.mark.slow
def test_train_downscale_score_on_the_regional_cut(tmp_path, capsys):
    regional_sample(tmp_path / "box.nc", n_time=12)
    out = tmp_path / "out"
    assert main(["--reference", str(tmp_path / "box.nc"), "--train", "--factor", "3", "--variables", "t2m,msl",
                 "--train-steps", "2", "--widths", "8,8,8", "--batch-size", "4", "--holdout", "2", "--members", "2",
                 "--steps", "2", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "regional" in log and "skipped 1 time(s) whose field is entirely missing" in log
    with xr.open_dataset(out / "downscaled.nc") as got, xr.open_dataset(tmp_path / "box.nc") as ref:
        truth = ref["t2m"].values[-2:]
        assert np.array_equal(np.isnan(got["t2m"].values[0]), np.isnan(truth))
    scores = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(scores["scores"]["t2m"]["sciffusion"]["crps"]) and "mismatch" in scores["block_stripes"]["t2m"]
