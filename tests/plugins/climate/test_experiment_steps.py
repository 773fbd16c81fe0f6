"""The named steps of `experiment.run`, each on its own: options, the reference and its time
split, the held-out check, the methods' predictions and the score table."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sciffusion.plugins.climate.experiment import (
    ExperimentConfig,
    HeldOut,
    Reference,
    check_held_out_unseen,
    check_options,
    coarse_fields,
    fit_statistical,
    load_reference,
    predictions,
    score_table,
    split_times,
)
from sciffusion.plugins.climate.io import load_times
from tests.plugins.climate.helpers import make_regional, untrained_bundle

VARS = ("t2m", "u10", "tp")


@pytest.fixture(scope="module")
def setup():
    bundle, ds = untrained_bundle(VARS)
    ref = Reference(ds, VARS, "synthetic", [0, 1, 2], [3])
    truth = load_times(ds, [3], VARS)
    truth[:, :2, 4:6, 8:10] = np.nan    # missing cells of the truth (not a whole coarse block)
    return bundle, ref, truth, fit_statistical(ref, bundle.grids)


def test_split_times_and_options():
    assert split_times(24, 6) == (list(range(18)), list(range(18, 24)))
    with pytest.raises(ValueError, match="holdout=3 must leave at least 3 of the 5 times for training"):
        split_times(5, 3)
    with pytest.raises(ValueError, match="holdout=0"):
        split_times(5, 0)
    check_options(ExperimentConfig())
    with pytest.raises(ValueError, match="mode must be 'downscale' or 'infill', got 'sr'"):
        check_options(ExperimentConfig(mode="sr"))
    with pytest.raises(ValueError, match="members and steps must be >= 1"):
        check_options(ExperimentConfig(steps=0))
    with pytest.raises(ValueError, match="--loader-workers must be >= 0, got -1"):
        check_options(ExperimentConfig(loader_workers=-1))


def test_load_reference_skips_empty_times_and_holds_out_the_last(tmp_path, capsys):
    ds = make_regional(n_time=9, n_lat=15, n_lon=21)
    ds["u10"][4] = np.nan
    ds.to_netcdf(tmp_path / "box.nc", engine="h5netcdf")
    ref = load_reference(ExperimentConfig(reference=str(tmp_path / "box.nc"), factor=3, holdout=2, widths=(8, 8, 8)))
    assert ref.variables == ("t2m", "u10") and ref.fields.sizes["time"] == 8
    assert ref.train_idx == list(range(6)) and ref.test_idx == [6, 7]
    np.testing.assert_array_equal(ref.times(ref.test_idx), ds["time"].values[-2:])
    assert "skipped 1 time(s) whose field is entirely missing: 2020-01-02T00:00:00" in capsys.readouterr().out


def test_a_model_trained_on_held_out_times_is_refused(setup):
    bundle, ref, _, _ = setup
    check_held_out_unseen(bundle, ref)
    seen = replace(bundle.cfg, train_times=(str(ref.times([3])[0]),))
    bundle_seen = type(bundle)(seen, bundle.norm, bundle.grids, bundle.coef, bundle.std, bundle.diurnal, bundle.model)
    with pytest.raises(ValueError, match="the checkpoint was trained on held-out times"):
        check_held_out_unseen(bundle_seen, ref)


def test_downscale_predictions_are_missing_where_the_truth_is_and_conserve_on_request(setup):
    bundle, _, truth, stat = setup
    coarse = bundle.fill_coarse(coarse_fields(truth, bundle.grids, fill=False))
    ens = np.repeat(bundle.grids.up(coarse)[None], 2, axis=0).astype(np.float32)
    held = HeldOut(truth, coarse, truth, ens, k_min=4)
    cfg = ExperimentConfig(members=2)
    preds = predictions(cfg, bundle, stat, held, np.random.default_rng(0))
    assert set(preds) == {"bilinear", "bicubic", "statistical", "stat+conserve", "sciffusion"}
    gap = np.isnan(truth)
    assert preds["sciffusion"] is ens   # masked by downscale_held_out already
    for name in ("bilinear", "bicubic", "statistical", "stat+conserve"):
        assert np.isnan(preds[name][:, gap]).all() and np.isfinite(preds[name][:, ~gap]).all(), name
    kept = np.nan_to_num(preds["stat+conserve"][:, :, 2].astype(np.float64))   # tp has no gap
    np.testing.assert_allclose(bundle.grids.coarsen(kept), np.broadcast_to(coarse[:, 2], kept[:, :, ::4, ::4].shape),
                               rtol=1e-4, atol=1e-9)
    assert "stat+conserve" not in predictions(replace(cfg, conserve=False), bundle, stat, held, np.random.default_rng(0))


def test_infill_predictions_equal_the_truth_outside_the_gaps(setup):
    bundle, _, truth, stat = setup
    full = np.nan_to_num(truth, nan=280.0)
    miss = np.zeros((1, *truth.shape[-2:]), bool)
    miss[:, 2:9, 5:20] = True
    gappy = np.where(miss[:, None], np.nan, full)
    held = HeldOut(full, coarse_fields(gappy, bundle.grids), np.where(miss[:, None], full, np.nan),
                   np.repeat(full[None], 2, axis=0), miss=miss)
    preds = predictions(ExperimentConfig(members=2, mode="infill"), bundle, stat, held, np.random.default_rng(0))
    assert "stat+conserve" not in preds
    for name, p in preds.items():
        np.testing.assert_array_equal(p[:, :, :, ~miss[0]], np.broadcast_to(full[:, :, ~miss[0]], p[:, :, :, ~miss[0]].shape), name)


def test_score_table_scores_each_method_and_relates_crps_to_the_statistical_downscalers(setup):
    bundle, _, truth, _ = setup
    shift = np.array([0.1, 0.3])[:, None, None, None, None]   # fair CRPS = E|X - y| - E|X - X'| / 2 = 0.2 - 0.1
    ens = truth[None] + shift
    held = HeldOut(truth, np.zeros(1), truth, ens, k_min=None)
    table = score_table({"statistical": truth[None] + 10 * shift, "sciffusion": ens}, held, VARS, bundle.grids.lat)
    for v in VARS:
        np.testing.assert_allclose(table[v]["sciffusion"]["crps"], 0.1, rtol=1e-4)
        np.testing.assert_allclose(table[v]["sciffusion"]["rmse"], 0.2, rtol=1e-4)
        np.testing.assert_allclose(table[v]["statistical"]["crps"], 1.0, rtol=1e-4)
        np.testing.assert_allclose(table[v]["sciffusion"]["crps_vs_statistical"], -0.9, rtol=1e-4)
        assert "spectral_error" not in table[v]["statistical"]
