"""The local slopes of the residual statistics: a per-cell ridge regression of the residual on the
bicubic fields of all variables, its leave-one-out refit, its choice per variable, sampling with
it, and the rule that turns it on for small training sets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sciffusion.plugins.climate import experiment as ex
from sciffusion.plugins.climate.downscale import (
    RIDGE,
    DownscaleConfig,
    Downscaler,
    Grids,
    ResidualStats,
    build,
    fit_residual_stats,
    normal_sums,
)
from sciffusion.plugins.climate.downscale.sampling import prepare
from sciffusion.plugins.climate.downscale.statistics import local_features, residual_features
from sciffusion.plugins.climate.io import open_fields
from sciffusion.plugins.climate.normalise import fit_normaliser
from sciffusion.plugins.climate.solar import solar_features
from tests.plugins.climate.helpers import make_fine, make_regional, untrained_bundle


def _brute_force(x: np.ndarray, y: np.ndarray, solar: bool, kappa: float) -> np.ndarray:
    """Ridge least squares of y (n,) on x (n, 3 + C) = [1, insolation, sin h, B_1, ..., B_C]:
    RIDGE n on the solar terms (when used), kappa n on each B_k."""
    p = x.shape[1]
    use = list(range(p)) if solar else [0, *range(3, p)]
    xs = x[:, use]
    n = len(y)
    ridge = np.zeros((len(use), len(use)))
    ridge[np.arange(1, len(use)), np.arange(1, len(use))] = RIDGE * n
    for i, k in enumerate(use):
        if k >= 3:
            ridge[i, i] += kappa * n
    beta = np.zeros(p)
    beta[use] = np.linalg.solve(xs.T @ xs + ridge, xs.T @ y)
    return beta


@pytest.mark.parametrize("solar", [False, True])
def test_local_slope_is_a_per_cell_ridge_regression_on_b_and_its_leave_one_out_refit(solar):
    rng = np.random.default_rng(4)
    n_t = 12
    times = np.datetime64("2021-06-01T00") + np.arange(n_t) * np.timedelta64(5, "h")
    f = solar_features(times, np.array([-30.0, 40.0]), np.array([10.0, 100.0, 250.0]))
    b = rng.normal(size=(n_t, 2, 2, 3))
    slope = rng.normal(size=(2, 2, 2, 3))
    r = 0.3 + np.einsum("ckhw,tkhw->tchw", slope, b) + 0.2 * rng.normal(size=b.shape)
    fl = local_features(f, b)                                    # (T, 3 + C, H, W)
    assert fl.shape == (n_t, 5, 2, 3)
    np.testing.assert_array_equal(fl[:, 4], b[:, 1])
    kappa = np.array([0.5, 2.0])
    stats = ResidualStats(*normal_sums(r, fl), diurnal=np.array([solar, solar]), local=kappa)
    coef, s = stats.coefficients(0.0)
    m_loo, s_loo = stats.leave_one_out(r[5], fl[5], 0.0)
    keep = np.arange(n_t) != 5
    for c in range(2):
        for i in range(2):
            for j in range(3):
                x = fl[:, :, i, j]
                want = _brute_force(x, r[:, c, i, j], solar, kappa[c])
                np.testing.assert_allclose(coef[c, :, i, j], want, rtol=1e-8, atol=1e-10)
                dof = n_t - (5 if solar else 3)
                np.testing.assert_allclose(s[c, i, j], np.sqrt(((r[:, c, i, j] - x @ want) ** 2).sum() / dof), rtol=1e-8)
                refit = _brute_force(x[keep], r[keep, c, i, j], solar, kappa[c])
                np.testing.assert_allclose(m_loo[c, i, j], x[5] @ refit, rtol=1e-8, atol=1e-10)
                rest = r[keep, c, i, j] - x[keep] @ refit
                np.testing.assert_allclose(s_loo[c, i, j], np.sqrt((rest**2).sum() / (dof - 1)), rtol=1e-8)
    # a larger kappa shrinks the slopes toward 0
    loose = ResidualStats(*normal_sums(r, fl), diurnal=np.array([solar, solar]), local=np.array([0.0, 0.0]))
    assert np.abs(coef[1, 3:]).mean() < np.abs(loose.coefficients(0.0)[0][1, 3:]).mean()


def test_without_the_local_slope_the_statistics_are_those_of_the_solar_features_alone():
    rng = np.random.default_rng(5)
    f = residual_features(None, np.zeros(3), np.zeros(4), 7)
    r, b = rng.normal(size=(7, 2, 3, 4)), rng.normal(size=(7, 2, 3, 4))
    plain = ResidualStats(*normal_sums(r, f), diurnal=np.array([False, False]))
    off = ResidualStats(*normal_sums(r, local_features(f, b)), diurnal=np.array([False, False]),
                        local=np.array([np.inf, np.inf]))
    (c0, s0), (c1, s1) = plain.coefficients(0.0), off.coefficients(0.0)
    np.testing.assert_allclose(c1[:, :3], c0, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(c1[:, 3:], 0.0)
    np.testing.assert_allclose(s1, s0, rtol=1e-12)
    np.testing.assert_allclose(off.leave_one_out(r[2], local_features(f, b)[2], 0.0)[0],
                               plain.leave_one_out(r[2], f[2], 0.0)[0], rtol=1e-12, atol=1e-12)


def test_fit_gives_the_local_slope_only_to_a_variable_whose_residual_follows_its_bicubic_value():
    ds = make_fine(n_time=14, n_lat=16, n_lon=32, seed=6)
    ds["t2m"] = 280 + ds["u10"]                    # a static pattern and white noise: nothing to follow
    gusty = np.random.default_rng(1).random((16, 32)) < 0.3
    swing = 4 * np.sin(0.9 * np.arange(14))[:, None, None] * np.cos(np.deg2rad(ds["lat"].values))[None, :, None]
    ds["u10"] = (ds["u10"] + swing) * (1 + 1.5 * gusty)     # some cells see 2.5 times the wind around them
    ds = open_fields(ds, ["t2m", "u10"])
    grids = Grids(ds["latitude"].values, ds["longitude"].values, 4)
    train = list(range(12))
    norm = fit_normaliser(ds, ["t2m", "u10"], train)
    stats = fit_residual_stats(ds, ["t2m", "u10"], train, norm, grids, local_slope=True)
    assert np.isinf(stats.local[0]) and np.isfinite(stats.local[1])
    assert stats.gram.shape[-1] == 5
    plain = fit_residual_stats(ds, ["t2m", "u10"], train, norm, grids)
    assert plain.local is None and plain.gram.shape[-1] == 3
    imposed = fit_residual_stats(ds, ["t2m", "u10"], train, norm, grids, local_slope=True, local=np.array([1.0, np.inf]))
    assert imposed.local.tolist() == [1.0, np.inf]


def test_sampling_adds_the_local_slopes_times_b_to_the_residual_mean_and_the_checkpoint_keeps_it(tmp_path):
    bundle, ds = untrained_bundle(("t2m", "u10", "tp"))
    c, _, h, w = bundle.coef.shape
    coef = np.concatenate([bundle.coef, np.random.default_rng(0).normal(size=(c, c, h, w)).astype(np.float32)], axis=1)
    local = Downscaler(bundle.cfg, bundle.norm, bundle.grids, coef, bundle.std, bundle.diurnal, bundle.model)
    truth = np.stack([ds[v].values[2:4] for v in ("t2m", "u10", "tp")], axis=1).astype(np.float64)
    coarse = bundle.grids.coarsen(truth)
    prep, plain = prepare(local, coarse, None, "infill"), prepare(bundle, coarse, None, "infill")
    np.testing.assert_allclose(prep.m, plain.m + np.einsum("ckhw,tkhw->tchw", coef[:, 3:], prep.b), rtol=1e-5, atol=1e-5)
    again = Downscaler.load(local.save(tmp_path / "local.pt"))
    np.testing.assert_allclose(again.coef, coef, atol=2e-3)   # stored as float16


def test_small_training_sets_get_the_local_slopes_and_a_leave_out_of_one_by_default(capsys):
    cfg = ex.ExperimentConfig()
    assert ex.small_training_set(cfg, ex.SMALL_CELL_TIMES - 1)
    assert not ex.small_training_set(cfg, 18 * 181 * 360)     # the ERA5 sample: 18 times of 181 x 360 cells
    assert "large training set" in capsys.readouterr().out
    ds = open_fields(make_regional(n_time=8), ["t2m", "u10"])
    small = ex.model_config(cfg, ds, ("t2m", "u10"), list(range(6)), "synthetic")
    assert small.local_slope and small.leave_out == 1
    chosen = ex.model_config(replace(cfg, local_slope=False, leave_out=0), ds, ("t2m", "u10"), list(range(6)), "synthetic")
    assert not chosen.local_slope and chosen.leave_out == 0
    from sciffusion.plugins.climate.cli import parse_args

    assert parse_args(["--no-local-slope"]).local_slope is False and parse_args([]).local_slope is None
    assert parse_args(["--leave-out", "2"]).leave_out == 2 and parse_args([]).leave_out is None


def test_leaving_out_a_group_of_times_refits_on_the_others():
    rng = np.random.default_rng(7)
    r, b = rng.normal(size=(9, 2, 3, 4)), rng.normal(size=(9, 2, 3, 4))
    f = local_features(residual_features(None, np.zeros(3), np.zeros(4), 9), b)
    stats = ResidualStats(*normal_sums(r, f), diurnal=np.array([False, False]), local=np.array([1.0, np.inf]))
    m, s = stats.leave_out(r[3:6], f[3:6], 0.0, at=1)
    keep = [0, 1, 2, 6, 7, 8]
    rest = ResidualStats(*normal_sums(r[keep], f[keep]), diurnal=stats.diurnal, local=stats.local)
    coef, s_rest = rest.coefficients(0.0)
    np.testing.assert_allclose(m, np.einsum("cphw,phw->chw", coef, f[4]), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(s, s_rest, rtol=1e-8)


def test_strips_leave_out_a_time_with_its_neighbours_but_keep_three_times():
    ds = open_fields(make_regional(n_time=8), ["t2m", "u10"])
    cfg = DownscaleConfig(variables=("t2m", "u10"), factor=3, widths=(8, 8, 8), strip_height=8, leave_out=1)
    _, data = build(ds, cfg, list(range(6)))
    assert data.left_out(0) == [0, 1] and data.left_out(3) == [2, 3, 4] and data.left_out(5) == [4, 5]
    _, wide = build(ds, replace(cfg, leave_out=5), list(range(6)))
    assert wide.left_out(3) == [2, 3, 4]       # (6 - 3) // 2 = 1 on each side at most
    x0, cond, _ = data.prepared(3)
    assert np.isfinite(x0).all() and np.isfinite(cond).all()
