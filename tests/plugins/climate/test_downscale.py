"""Training pairs, leave-one-out statistics, the model bundle, sampling and gap filling."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sciffusion.plugins.climate.baselines import StatisticalDownscaler
from sciffusion.plugins.climate.downscale import (
    RIDGE,
    Alignment,
    DownscaleConfig,
    Downscaler,
    Grids,
    ResidualStats,
    ResidualStrips,
    build,
    fit_residual_stats,
    normal_sums,
    residual_features,
    train,
)
from sciffusion.plugins.climate.infill import coarsen_observed, fill_by_neighbours, fill_gaps
from sciffusion.plugins.climate.io import load_times, open_fields
from sciffusion.plugins.climate.normalise import fit_normaliser
from sciffusion.plugins.climate.solar import solar_features
from tests.plugins.climate.helpers import make_fine

VARS = ("t2m", "u10", "tp")


def test_intercept_only_statistics_are_the_per_cell_mean_and_std_with_leave_one_out():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(6, 2, 3, 4))
    f = residual_features(None, np.zeros(3), np.zeros(4), 6)
    stats = ResidualStats(*normal_sums(r, f), diurnal=np.array([False, False]))
    coef, s = stats.coefficients(0.0)
    np.testing.assert_allclose(coef[:, 0], r.mean(0))
    np.testing.assert_array_equal(coef[:, 1:], 0.0)
    np.testing.assert_allclose(s, r.std(0, ddof=1))
    m2, s2 = stats.leave_one_out(r[2], f[2], 0.0)
    rest = np.delete(r, 2, axis=0)
    np.testing.assert_allclose(m2, rest.mean(0))
    np.testing.assert_allclose(s2, rest.std(0, ddof=1))
    _, floored = stats.coefficients(10.0)
    np.testing.assert_allclose(floored, 10 * s.mean(axis=(-2, -1), keepdims=True) * np.ones_like(s))


def test_diurnal_fit_matches_per_cell_least_squares_and_its_leave_one_out_refit():
    rng = np.random.default_rng(1)
    times = np.datetime64("2021-06-01T00") + np.arange(20) * np.timedelta64(5, "h")
    lat, lon = np.array([-40.0, 10.0, 60.0]), np.array([0.0, 90.0, 200.0, 300.0])
    f = solar_features(times, lat, lon)
    beta = rng.normal(size=(2, 3, 3, 4))
    r = np.einsum("cphw,tphw->tchw", beta, f) + 0.05 * rng.normal(size=(20, 2, 3, 4))
    stats = ResidualStats(*normal_sums(r, f), diurnal=np.array([True, False]))
    coef, s = stats.coefficients(0.0)
    m_loo, s_loo = stats.leave_one_out(r[7], f[7], 0.0)
    for i in range(3):
        for j in range(4):
            x = f[:, :, i, j]
            ridge = np.diag([0.0, 1.0, 1.0]) * RIDGE
            want = np.linalg.solve(x.T @ x + 20 * ridge, x.T @ r[:, 0, i, j])
            np.testing.assert_allclose(coef[0, :, i, j], want, rtol=1e-8, atol=1e-10)
            resid = r[:, 0, i, j] - x @ want
            np.testing.assert_allclose(s[0, i, j], np.sqrt((resid**2).sum() / 17), rtol=1e-8)
            keep = np.arange(20) != 7
            refit = np.linalg.solve(x[keep].T @ x[keep] + 19 * ridge, x[keep].T @ r[keep, 0, i, j])
            np.testing.assert_allclose(m_loo[0, i, j], x[7] @ refit, rtol=1e-8, atol=1e-10)
            rest = r[keep, 0, i, j] - x[keep] @ refit
            np.testing.assert_allclose(s_loo[0, i, j], np.sqrt((rest**2).sum() / 16), rtol=1e-8)
            np.testing.assert_allclose(m_loo[1, i, j], np.delete(r[:, 1, i, j], 7).mean(), rtol=1e-10)
    signal = np.einsum("phw,tphw->thw", beta[0], f)
    assert np.abs(np.einsum("phw,tphw->thw", coef[0], f) - signal).mean() < 0.03  # the diurnal cycle is recovered (noise 0.05)


def test_solar_features_follow_the_sun():
    noon = solar_features(np.array(["2021-03-20T12:00"], "datetime64[m]"), np.array([0.0, 60.0]), np.array([0.0, 180.0]))[0]
    np.testing.assert_allclose(noon[0], 1.0)
    assert abs(noon[1, 0, 0] - 1) < 1e-3 and noon[1, 0, 1] == 0.0  # sun overhead at (0, 0); night at 180 E
    assert abs(noon[1, 1, 0] - 0.5) < 0.02 and abs(noon[2, 0, 0]) < 1e-12  # cos 60 deg; noon: sin(h) = 0
    with pytest.raises(TypeError, match="datetime64"):
        solar_features(np.arange(3.0), np.zeros(1), np.zeros(1))


def test_fit_chooses_the_diurnal_mean_only_where_it_predicts_left_out_times_better():
    ds = make_fine(n_time=16, n_lat=16, n_lon=32, seed=3)
    insolation = solar_features(ds["time"].values, ds["lat"].values, ds["lon"].values)[:, 1]
    land = np.random.default_rng(0).random((16, 32)) < 0.4
    ds["t2m"] = ds["t2m"] + 6.0 * land * insolation  # land cells warm up under the sun: a sub-grid signal
    ds = open_fields(ds, ["t2m", "u10"])
    grids = Grids(ds["latitude"].values, ds["longitude"].values, 4)
    norm = fit_normaliser(ds, ["t2m", "u10"], list(range(14)))
    stats = fit_residual_stats(ds, ["t2m", "u10"], list(range(14)), norm, grids)
    assert stats.diurnal.tolist() == [True, False]
    few = fit_residual_stats(ds, ["t2m", "u10"], list(range(6)), norm, grids)
    assert not few.diurnal.any()  # too few times to fit three coefficients per cell


def test_statistical_downscaler_fits_mean_and_std():
    rng = np.random.default_rng(1)
    fine = rng.normal(size=(50, 2, 4, 8)).astype(np.float32)
    bic = np.zeros_like(fine)
    stat = StatisticalDownscaler.fit(fine, bic, [False, True])
    np.testing.assert_allclose(stat.mean, fine.mean(0), rtol=1e-5, atol=1e-6)
    streamed = StatisticalDownscaler.fit_streaming(((fine[i : i + 7], bic[i : i + 7]) for i in range(0, 50, 7)), [False, True])
    np.testing.assert_allclose(streamed.mean, stat.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(streamed.std, stat.std, rtol=1e-5, atol=1e-6)
    ens = stat.predict(bic[:3], 200, np.random.default_rng(0))
    assert ens.shape == (200, 3, 2, 4, 8) and ens[:, :, 1].min() >= 0
    assert abs(ens[:, :, 0].std() / fine[:, 0].std() - 1) < 0.1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ds = open_fields(make_fine(n_time=8, n_lat=16, n_lon=32), list(VARS))
    cfg = DownscaleConfig(variables=VARS, widths=(8, 8, 8), strip_height=8, source="synthetic")
    out = tmp_path_factory.mktemp("run")
    bundle = train(ds, cfg, list(range(6)), out, steps=4, batch_size=4, checkpoint_every=2)
    return ds, bundle, out


def test_training_writes_trainer_checkpoints_and_training_pairs_are_standardised(tiny):
    ds, bundle, out = tiny
    assert sorted(p.name for p in out.glob("ckpt_*.pt"))  # the core Trainer checkpointed
    _, data = build(ds, bundle.cfg, list(range(6)))
    x0, cond, w = data[0]
    assert x0.shape == (3, 8, 32) and cond.shape == (10, 8, 32) and w.shape == (3, 8, 32)
    np.testing.assert_array_equal(w[0], w[2])  # equal variable weights by default
    allx = np.stack([data.prepared(i)[0] for i in range(6)])
    assert abs(allx[:, :2].mean()) < 0.2 and 0.6 < allx[:, :2].std() < 1.6


def test_bundle_round_trip_and_grid_checks(tiny, tmp_path):
    ds, bundle, _ = tiny
    path = bundle.save(tmp_path / "b.pt")
    again = Downscaler.load(path)
    assert again.cfg == bundle.cfg and again.norm == bundle.norm
    for (k, a), (_, b) in zip(bundle.model.state_dict().items(), again.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    again.check_input(ds)
    with pytest.raises(ValueError, match="grid does not match the checkpoint: latitude has 12 points"):
        again.check_input(ds.isel(latitude=slice(0, 12)))
    with pytest.raises(KeyError, match=r"\['tp'\] needed by the checkpoint not found"):
        again.check_input(ds[["t2m", "u10"]])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"^checkpoint \S*bad\.pt is not a torch file") as err:
        Downscaler.load(tmp_path / "bad.pt")
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    with pytest.raises(ValueError, match=r"^checkpoint \S*none\.pt does not exist$"):
        Downscaler.load(tmp_path / "none.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a climate downscaling checkpoint"):
        Downscaler.load(tmp_path / "other.pt")


def test_sampling_is_seeded_and_physical(tiny):
    ds, bundle, _ = tiny
    truth = load_times(ds, [6, 7], VARS)
    coarse = bundle.grids.coarsen(truth.astype(np.float64))
    a = bundle.sample(coarse, members=3, steps=3, seed=1, batch_size=4)
    b = bundle.sample(coarse, members=3, steps=3, seed=1, batch_size=4)
    assert a.shape == (3, 2, 3, 16, 32) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert a[:, :, 2].min() >= 0  # precipitation
    assert np.abs(a[:, :, 0].mean() - truth[:, 0].mean()) < 5.0  # temperature in kelvin, not normalised
    # every member coarsens back to its input (conserve, the default); the raw sampler output does not
    for c in range(len(VARS)):  # float32 members: relative to each variable's scale
        np.testing.assert_allclose(bundle.grids.coarsen(a[:, :, c].astype(np.float64)), np.broadcast_to(coarse[:, c], (3, *coarse[:, c].shape)),
                                   rtol=1e-5, atol=1e-6 * np.abs(coarse[:, c]).max())
    raw = bundle.sample(coarse, members=3, steps=3, seed=1, batch_size=4, conserve=False)
    assert np.abs(bundle.grids.coarsen(raw[:, :, 0].astype(np.float64)) - coarse[:, 0]).max() > 1e-2
    # (the raw precipitation is capped per cell, so only the other variables are the same draw corrected)
    np.testing.assert_allclose(bundle.match_coarse(raw[0], coarse)[:, :2], a[0, :, :2], rtol=1e-5, atol=1e-6)


def test_gap_filling_keeps_observed_cells(tiny):
    ds, bundle, _ = tiny
    truth = load_times(ds, [6, 7], VARS)
    gappy = truth.copy()
    gappy[:, :, 4:10, 8:20] = np.nan
    ens = fill_gaps(bundle, gappy, members=2, steps=3, seed=0)
    obs = np.isfinite(gappy)
    assert np.isfinite(ens).all()
    np.testing.assert_array_equal(ens[:, obs], np.broadcast_to(truth[obs], (2, obs.sum())))
    gappy[1, 0] = np.nan
    with pytest.raises(ValueError, match="variable 't2m' is all-NaN at time index 1"):
        fill_gaps(bundle, gappy, members=1, steps=2)


def test_coarsen_observed_fills_empty_blocks():
    lat = np.linspace(-82.5, 82.5, 8)
    x = np.arange(8 * 16, dtype=float).reshape(8, 16)
    x[:4, :4] = np.nan  # a whole coarse block missing
    c = coarsen_observed(x, lat, 4)
    assert np.isfinite(c).all() and c.shape == (2, 4)
    y = np.array([[1.0, np.nan, 3.0]])
    np.testing.assert_allclose(fill_by_neighbours(y), [[1.0, 2.0, 3.0]])


def test_diurnal_model_needs_times_and_old_checkpoints_load_as_intercept_only(tiny, tmp_path):
    ds, bundle, _ = tiny
    diurnal = Downscaler(bundle.cfg, bundle.norm, bundle.grids, bundle.coef, bundle.std,
                         np.array([True, False, False]), bundle.model)
    coarse = bundle.grids.coarsen(load_times(ds, [6], VARS).astype(np.float64))
    with pytest.raises(ValueError, match=r"residual mean of \['t2m'\] follows the time of day: pass times="):
        diurnal.sample(coarse, members=1, steps=1)
    assert np.isfinite(diurnal.sample(coarse, members=1, steps=1, times=ds["time"].values[[6]])).all()
    state = torch.load(bundle.save(tmp_path / "new.pt"), weights_only=True)
    state["format"] = "sciffusion-climate-downscale/1"
    state["resid_mean"] = state.pop("resid_coef")[:, 0]
    del state["resid_diurnal"]
    torch.save(state, tmp_path / "v1.pt")
    old = Downscaler.load(tmp_path / "v1.pt")
    assert not old.diurnal.any() and np.array_equal(old.coef[:, 1:], np.zeros_like(old.coef[:, 1:]))
    np.testing.assert_allclose(old.coef[:, 0], bundle.coef[:, 0], rtol=1e-3, atol=1e-3)  # stored as float16


def test_solar_channels_condition_the_network_on_the_sun_and_need_times(tiny, tmp_path):
    ds, _, _ = tiny
    cfg = DownscaleConfig(variables=VARS, widths=(8, 8, 8), strip_height=8, source="synthetic", solar_channels=True)
    bundle = train(ds, cfg, list(range(6)), tmp_path / "run", steps=2, batch_size=4, checkpoint_every=2)
    assert bundle.model.cfg.cond_channels == 3 * len(VARS) + 1 + 2
    _, data = build(ds, cfg, list(range(6)))
    cond = data.prepared(2)[1]
    sun = solar_features(ds["time"].values[[2]], bundle.grids.lat, bundle.grids.lon)[0]
    np.testing.assert_allclose(cond[-2:], sun[1:], atol=1e-6)  # insolation, sin(hour angle) last
    coarse = bundle.grids.coarsen(load_times(ds, [6], VARS).astype(np.float64))
    with pytest.raises(ValueError, match="solar channels follows the time of day: pass times="):
        bundle.sample(coarse, members=1, steps=1)
    again = Downscaler.load(bundle.save(tmp_path / "solar.pt"))
    assert again.cfg.solar_channels and again.cfg == bundle.cfg
    np.testing.assert_allclose(again.sample(coarse, members=2, steps=2, times=ds["time"].values[[6]]),
                               bundle.sample(coarse, members=2, steps=2, times=ds["time"].values[[6]]),
                               atol=0.01)  # the residual statistics are stored as float16


def test_loss_weights_scale_each_variable_and_are_checked(tiny):
    ds, bundle, _ = tiny
    cfg = DownscaleConfig(variables=VARS, widths=(8, 8, 8), strip_height=8, loss_weights=(2.0, 0.5, 0.5))
    w = build(ds, cfg, list(range(6)))[1][0][2].numpy()
    w_equal = build(ds, bundle.cfg, list(range(6)))[1][0][2].numpy()
    np.testing.assert_allclose(w[0], 2.0 * w_equal[0], rtol=1e-6)   # weights / their mean: 2 / 1 and 0.5 / 1
    np.testing.assert_allclose(w[1], 0.5 * w_equal[1], rtol=1e-6)
    for bad in [(1.0, 2.0), (1.0, 0.0, 1.0)]:
        with pytest.raises(ValueError, match="one positive number per variable"):
            build(ds, replace(cfg, loss_weights=bad), list(range(6)))


def test_block_alignment_a_is_alignment_zero_of_the_fields_rolled_west_by_a_cells():
    ds = open_fields(make_fine(n_time=8, n_lat=16, n_lon=32, seed=5), list(VARS))
    cfg = DownscaleConfig(variables=VARS, widths=(8, 8, 8), strip_height=8, alignments=3, solar_channels=True)
    _, data = build(ds, cfg, list(range(6)))
    n_starts = len(data.views) // 3
    assert len(data) == 6 * 3 * n_starts and data.alignments == [Alignment(0, a) for a in range(3)]
    rolled = ds.copy(data={v: np.roll(ds[v].values, -2, axis=-1) for v in ds.data_vars})
    # without clock times the residual statistics are per-cell: alignment 2 must equal the rolled fields' alignment 0
    plain = replace(cfg, solar_channels=False)
    _, shifted = build(ds.assign_coords(time=np.arange(8)), plain, list(range(6)))
    _, reference = build(rolled.assign_coords(time=np.arange(8)), replace(plain, alignments=1), list(range(6)))
    for got, want in zip(shifted.prepared(4, 2), reference.prepared(4, 0)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(shifted.prepared(4, 2)[0] - shifted.prepared(4, 0)[0]).max() > 0.1  # a different view
    # with clock times the solar channels follow the cells' true longitudes
    x0, cond, _ = data.prepared(4, 2)
    want = solar_features(ds["time"].values[[4]], data.grids.lat, np.roll(data.grids.lon, -2))[0, 1:]
    np.testing.assert_allclose(cond[-2:], want, atol=1e-6)
    assert data.stats[2].diurnal.tolist() == data.stats[0].diurnal.tolist()  # the choice of alignment 0 is imposed
    i = (4 * 3 + 2) * n_starts + 1  # item order: (time, alignment, first row)
    np.testing.assert_array_equal(data[i][0].numpy(), x0[:, 4:12])
    with pytest.raises(ValueError, match="alignments=5 must be between 1 and the factor 4"):
        build(ds, replace(cfg, alignments=5), list(range(6)))


def test_latitude_alignment_b_is_alignment_zero_of_the_rows_b_to_h_minus_factor_plus_b():
    ds = open_fields(make_fine(n_time=8, n_lat=16, n_lon=32, seed=6), list(VARS)).assign_coords(time=np.arange(8))
    cfg = DownscaleConfig(variables=VARS, widths=(8, 8, 8), strip_height=8, alignments=2, lat_alignments=3)
    _, data = build(ds, cfg, list(range(6)))
    assert data.alignments == [Alignment(b, a) for b in range(3) for a in range(2)]
    # alignment 0 keeps the 16 rows (3 strips of 8 on a stride of 4), the others rows b..b+11 (2 strips)
    assert data.views == [(0, 0, 0), (0, 4, 0), (0, 8, 0), (1, 0, 0), (1, 4, 0), (1, 8, 0)] + [(k, s, 0) for k in range(2, 6) for s in (0, 4)]
    assert len(data) == 6 * 14
    # alignment (2, 1): the fields' rows 2..13, rolled west by one cell, with their own blocks and statistics
    rows = ds.isel(latitude=slice(2, 14))
    rolled = rows.copy(data={v: np.roll(rows[v].values, -1, axis=-1) for v in rows.data_vars})
    grids = Grids(rolled["latitude"].values, rolled["longitude"].values, 4)
    stats = fit_residual_stats(rolled, VARS, list(range(6)), data.norm, grids)
    reference = ResidualStrips(rolled, replace(cfg, alignments=1, lat_alignments=1), list(range(6)), data.norm, [stats], grids)
    for got, want in zip(data.prepared(4, 5), reference.prepared(4, 0)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert data.prepared(4, 5)[0].shape == (len(VARS), 12, 32)
    np.testing.assert_array_equal(data[4 * 14 + 13][0].numpy(), data.prepared(4, 5)[0][:, 4:12])  # the last item of time 4
    with pytest.raises(ValueError, match="lat_alignments=5 must be between 1 and the factor 4"):
        build(ds, replace(cfg, lat_alignments=5), list(range(6)))
    with pytest.raises(ValueError, match="strip_height 16 must be between 1 and 12"):
        build(ds, replace(cfg, strip_height=16), list(range(6)))


def test_masked_statistics_are_the_per_cell_fit_over_the_observed_times():
    rng = np.random.default_rng(4)
    times = np.datetime64("2021-06-01T00") + np.arange(14) * np.timedelta64(5, "h")
    lat, lon = np.array([-40.0, 10.0, 60.0]), np.array([0.0, 90.0, 200.0, 300.0])
    f = solar_features(times, lat, lon)
    r = rng.normal(size=(14, 2, 3, 4))
    valid = rng.random(r.shape) > 0.3
    valid[:, :, 0, 0] = False                     # a cell never observed
    stats = ResidualStats(*normal_sums(np.where(valid, r, np.nan), f, valid), diurnal=np.array([True, False]))
    coef, s = stats.coefficients(0.0)
    m_loo, _ = stats.leave_one_out(r[5], f[5], 0.0, valid[5])
    for i, j in [(1, 2), (2, 3)]:
        v0, v1 = valid[:, 0, i, j], valid[:, 1, i, j]
        x = f[v0, :, i, j]
        want = np.linalg.solve(x.T @ x + v0.sum() * np.diag([0.0, RIDGE, RIDGE]), x.T @ r[v0, 0, i, j])
        np.testing.assert_allclose(coef[0, :, i, j], want, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(coef[1, 0, i, j], r[v1, 1, i, j].mean(), rtol=1e-10)
        np.testing.assert_allclose(s[1, i, j], r[v1, 1, i, j].std(ddof=1), rtol=1e-8)
        keep = v1 & (np.arange(14) != 5)
        np.testing.assert_allclose(m_loo[1, i, j], r[keep, 1, i, j].mean(), rtol=1e-10)
    assert np.all(coef[:, :, 0, 0] == 0) and np.all(stats.n[:, 0, 0] == 0)
    stat = StatisticalDownscaler.fit_streaming([(np.where(valid, r, np.nan), np.zeros_like(r))])
    np.testing.assert_allclose(stat.mean[1, 1, 2], r[valid[:, 1, 1, 2], 1, 1, 2].mean(), rtol=1e-5)
    assert np.isnan(stat.mean[:, 0, 0]).all() and np.isnan(stat.predict(np.zeros((1, 2, 3, 4)), 2, rng)[:, :, :, 0, 0]).all()


def test_missing_coarse_cells_are_infilled_or_reported(tiny):
    ds, bundle, _ = tiny
    coarse = bundle.grids.coarsen(load_times(ds, [6, 7], VARS).astype(np.float64))
    coarse[1, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="coarse input: variable 'u10' has 1 missing cells \\(first at time index 1\\)"):
        bundle.sample(coarse, members=1, steps=1, coarse_gaps="report")
    ens = bundle.sample(coarse, members=2, steps=2, coarse_gaps="infill")
    assert np.isfinite(ens).all()
    missing = np.zeros((3, 16, 32), bool)
    missing[:, :2, :3] = True
    masked = Downscaler(bundle.cfg, bundle.norm, bundle.grids, bundle.coef, bundle.std, bundle.diurnal, bundle.model, missing)
    again = masked.sample(coarse, members=2, steps=2)
    assert np.isnan(again[:, :, missing]).all() and np.isfinite(again[:, :, ~missing]).all()
