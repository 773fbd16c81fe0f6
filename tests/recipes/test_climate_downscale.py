"""`python -m recipes.climate_downscale` end to end on a small netCDF reference."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from recipes.climate_downscale import main
from sciffusion.plugins.climate.downscale import Downscaler
from sciffusion.plugins.climate.grid import coarsen, coarsen_dataset
from sciffusion.plugins.climate.io import open_fields
from tests.plugins.climate.helpers import make_fine, make_regional

SMALL = ["--train-steps", "3", "--widths", "8,8,8", "--batch-size", "4", "--holdout", "2",
         "--members", "3", "--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    ref = tmp / "fine.nc"
    make_fine(n_time=8, n_lat=16, n_lon=32).to_netcdf(ref, engine="h5netcdf")
    out = tmp / "out"
    assert main(["--reference", str(ref), "--train", *SMALL, "--out", str(out)]) == 0
    return tmp, ref, out


@pytest.mark.slow
def test_downscale_writes_outputs_and_scores_held_out_times(trained):
    _, ref, out = trained
    for name in ("downscaled.nc", "metrics.json", "maps.png", "spectra.png", "downscale.pt"):
        assert (out / name).exists(), name
    cfg = Downscaler.load(out / "downscale.pt").cfg
    assert cfg.alignments == 4 and cfg.lat_alignments == 4  # by default every block alignment of the factor
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["held_out_times"] == [str(t) for t in xr.open_dataset(ref)["time"].values[-2:]]
    assert not set(metrics["train_times"]) & set(metrics["held_out_times"])
    for v in ("t2m", "u10", "tp"):
        rows = metrics["scores"][v]
        assert set(rows) == {"bilinear", "bicubic", "statistical", "stat+conserve", "sciffusion"}
        for s in rows.values():
            assert np.isfinite(s["rmse"]) and np.isfinite(s["crps"])
    dist = metrics["distribution"]["t2m"]   # k-NN scores of member fields vs true fields
    assert set(dist["eof"]) == set(dist["zonal_spectrum"]) == {*rows, "training times"}
    # a deterministic baseline's fair CRPS is its MAE, which is below its RMSE
    assert rows["bicubic"]["crps"] <= rows["bicubic"]["rmse"]
    ds = xr.open_dataset(out / "downscaled.nc")
    assert ds["t2m"].dims == ("realization", "time", "latitude", "longitude")
    assert ds.sizes["realization"] == 3 and ds.sizes["time"] == 2
    assert ds["t2m"].attrs["units"] == "K" and ds.attrs["Conventions"] == "CF-1.8"
    truth = open_fields(ref).isel(time=slice(-2, None))
    for v in ("t2m", "u10", "tp"):  # every member coarsens back to the coarse input (--conserve, the default)
        want = coarsen(truth[v].values.astype(np.float64), 4, truth["latitude"].values)
        got = coarsen(ds[v].values.astype(np.float64), 4, ds["latitude"].values)
        np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-5, atol=1e-6 * np.abs(want).max())
    truth.close()
    assert "recipes" in ds.attrs["history"] or "climate_downscale" in ds.attrs["history"] or ds.attrs["history"]
    ds.close()


@pytest.mark.slow
def test_no_conserve_gives_the_raw_members(trained):
    tmp, ref, out = trained
    assert main(["--reference", str(ref), "--checkpoint", str(out / "downscale.pt"), "--no-conserve", *SMALL,
                 "--out", str(tmp / "raw")]) == 0
    metrics = json.loads((tmp / "raw" / "metrics.json").read_text())
    assert metrics["config"]["conserve"] is False and "stat+conserve" not in metrics["scores"]["t2m"]
    raw, kept = (xr.open_dataset(d / "downscaled.nc")["t2m"].values for d in (tmp / "raw", out))
    assert np.abs(raw - kept).max() > 1e-3  # the same draws, without the block-mean correction


@pytest.mark.slow
def test_infill_mode_and_coarse_input(trained):
    tmp, ref, out = trained
    out2 = tmp / "infill"
    assert main(["--reference", str(ref), "--checkpoint", str(out / "downscale.pt"), "--mode", "infill", "--infill-method", "repaint",
                 *SMALL, "--out", str(out2)]) == 0
    metrics = json.loads((out2 / "metrics.json").read_text())
    assert metrics["mode"] == "infill" and "spectral_error" not in metrics["scores"]["t2m"]["sciffusion"]
    coarse = tmp / "coarse.nc"
    coarsen_dataset(open_fields(ref).isel(time=slice(0, 2)), 4).to_netcdf(coarse, engine="h5netcdf")
    out3 = tmp / "from_coarse"
    assert main(["--input", str(coarse), "--checkpoint", str(out / "downscale.pt"), "--members", "2",
                 "--steps", "2", "--quiet", "--out", str(out3)]) == 0
    ds = xr.open_dataset(out3 / "downscaled.nc")
    assert ds.sizes["latitude"] == 16 and ds.sizes["realization"] == 2
    ds.close()


def test_bad_inputs_exit_with_clear_messages(trained, capsys):
    tmp, ref, out = trained
    ck = ["--checkpoint", str(out / "downscale.pt")]
    assert main(["--reference", str(ref), "--factor", "5", *ck, *SMALL, "--out", str(tmp / "x")]) == 2
    assert "factor 5 does not divide the latitude size 16" in capsys.readouterr().err
    assert main(["--reference", str(ref), "--variables", "t2m,msl", *ck, *SMALL, "--out", str(tmp / "x")]) == 2
    assert "['msl'] not found; available variables: ['t2m', 'tp', 'u10']" in capsys.readouterr().err
    assert main(["--reference", str(ref), "--variables", "t2m", *ck, *SMALL, "--out", str(tmp / "x")]) == 2
    assert "trained on variables ['t2m', 'u10', 'tp']" in capsys.readouterr().err
    other = tmp / "other.nc"
    make_fine(n_time=8, n_lat=20, n_lon=32).to_netcdf(other, engine="h5netcdf")
    assert main(["--reference", str(other), *ck, *SMALL, "--out", str(tmp / "x")]) == 2
    assert "grid does not match the checkpoint: latitude has 20 points" in capsys.readouterr().err
    assert main(["--reference", str(ref), "--checkpoint", str(tmp / "none.pt"), *SMALL, "--out", str(tmp / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_training_options_reach_the_checkpoint(trained, capsys):
    tmp, ref, _ = trained
    out = tmp / "options"
    assert main(["--reference", str(ref), "--train", "--solar-channels", "--loss-weights", "t2m=2,tp=0.5",
                 "--alignments", "2", "--lat-alignments", "3", *SMALL, "--out", str(out)]) == 0
    cfg = Downscaler.load(out / "downscale.pt").cfg
    assert cfg.solar_channels and cfg.loss_weights == (2.0, 1.0, 0.5) and cfg.alignments == 2 and cfg.lat_alignments == 3
    assert main(["--reference", str(ref), "--train", "--alignments", "8", *SMALL, "--out", str(tmp / "x")]) == 2
    assert "alignments=8 must be between 1 and the factor 4" in capsys.readouterr().err
    assert main(["--reference", str(ref), "--train", "--lat-alignments", "0", *SMALL, "--out", str(tmp / "x")]) == 2
    assert "lat_alignments=0 must be between 1 and the factor 4" in capsys.readouterr().err
    assert main(["--reference", str(ref), "--train", "--loss-weights", "msl=2", *SMALL, "--out", str(tmp / "x")]) == 2
    assert "names ['msl'], which are not among the variables ['t2m', 'u10', 'tp']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--loss-weights", "t2m=high"])
    assert "'t2m=high' is not NAME=NUMBER" in capsys.readouterr().err


@pytest.mark.slow
def test_help_runs_as_a_module():
    res = subprocess.run([sys.executable, "-m", "recipes.climate_downscale", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--reference" in res.stdout and "--mode" in res.stdout


@pytest.mark.slow
def test_a_regional_grid_of_any_size_trains_and_downscales(tmp_path, capsys, device):
    """Also: the strips are prepared in a loader worker, and the run uses the given device."""
    ref = tmp_path / "box.nc"
    make_regional(n_time=8, n_lat=15, n_lon=21).to_netcdf(ref, engine="h5netcdf")
    out = tmp_path / "out"
    args = ["--reference", str(ref), "--train", "--factor", "3", "--train-steps", "2", "--widths", "8,8,8", "--batch-size", "4",
            "--holdout", "2", "--members", "2", "--steps", "2", "--out", str(out), "--device", str(device),
            "--loader-workers", "1"]
    assert main(args) == 0
    log = capsys.readouterr().out
    assert f"device: {device}" in log
    assert "domain: 15 x 21 cells" in log and "regional: longitude does not close the circle" in log
    ds = xr.open_dataset(out / "downscaled.nc")
    assert ds["t2m"].shape == (2, 2, 15, 21) and np.isfinite(ds["t2m"].values).all()
    ds.close()
    assert not Downscaler.load(out / "downscale.pt").model.cfg.periodic


@pytest.mark.slow
def test_grid_problems_are_reported_before_training(tmp_path, capsys):
    ref = tmp_path / "box.nc"
    make_regional(n_time=8, n_lat=15, n_lon=21).to_netcdf(ref, engine="h5netcdf")
    base = ["--reference", str(ref), "--train", *SMALL, "--out", str(tmp_path / "x")]
    assert main([*base, "--factor", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {ref}: factor 4 does not divide the latitude size 15; pass --crop to drop the last 3 "
                   "latitude cell(s), or choose a factor of 15")
    assert main([*base[:-1], str(tmp_path / "cropped"), "--factor", "4", "--crop"]) == 0     # 12 x 20 cells
    capsys.readouterr()
    assert main([*base, "--factor", "8", "--crop"]) == 2
    assert "smaller than the network's receptive field: latitude has 8 cells, the model needs at least 16" in capsys.readouterr().err
    assert main([*base, "--variables", "t2m,z500"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {ref}: variable(s) ['z500'] not found; available variables: ['t2m', 'u10']"
    assert not (tmp_path / "x" / "train").exists()  # nothing was trained for the failures


@pytest.mark.slow
def test_gappy_regional_data_missing_cells_stay_missing_and_empty_times_are_skipped(tmp_path, capsys):
    ds = make_regional(n_time=9, n_lat=15, n_lon=21)
    for v in ("t2m", "u10"):
        ds[v][:, 2:7, 4:9] = np.nan          # always missing: whole coarse blocks and parts of others
        ds[v][3] = np.nan                    # a missing time slice
    ref = tmp_path / "gappy.nc"
    ds.to_netcdf(ref, engine="h5netcdf")
    out = tmp_path / "out"
    assert main(["--reference", str(ref), "--train", "--factor", "3", "--train-steps", "2", "--widths", "8,8,8",
                 "--batch-size", "4", "--holdout", "2", "--members", "2", "--steps", "2", "--out", str(out)]) == 0
    assert "skipped 1 time(s) whose field is entirely missing: 2020-01-01T18:00:00" in capsys.readouterr().out
    got = xr.open_dataset(out / "downscaled.nc")
    truth = open_fields(ref).isel(time=slice(-2, None))
    for v in ("t2m", "u10"):
        gap = np.isnan(truth[v].values)
        assert gap.sum() == 2 * 25 and np.isnan(got[v].values[:, gap]).all() and np.isfinite(got[v].values[:, ~gap]).all()
    got.close()
    scores = json.loads((out / "metrics.json").read_text())["scores"]
    assert all(np.isfinite(s["crps"]) and np.isfinite(s["spectral_error"]) for v in scores.values() for s in v.values())
    assert Downscaler.load(out / "downscale.pt").missing[:, 8:13, 4:9].all()   # rows 2..6 of 15, latitude flipped
    assert main(["--reference", str(ref), "--checkpoint", str(out / "downscale.pt"), "--factor", "3", "--coarse-gaps",
                 "report", *SMALL, "--out", str(tmp_path / "r")]) == 2
    assert "coarse input: variable 't2m' has 2 missing cells" in capsys.readouterr().err
