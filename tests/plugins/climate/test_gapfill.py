"""The trained gap-filling model: kriging plans, training strips, loss masking, sampling, checkpoints, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciffusion.plugins.climate import masks
from sciffusion.plugins.climate.gapfill import (
    GapFillConfig,
    GapFiller,
    condition,
    fill_gaps,
    residual_target,
)
from sciffusion.plugins.climate.gapfill_train import GapStrips, draw_pool, solve_pool, strip_example
from sciffusion.plugins.climate.grid import lat_weights
from sciffusion.plugins.climate.io import load_times, open_fields
from sciffusion.plugins.climate.kriging import Covariance, Kriging
from tests.plugins.climate.helpers import make_fine, untrained_bundle

VARS = ("t2m", "u10", "tp")


@pytest.fixture(scope="module")
def setup():
    ds = open_fields(make_fine(n_time=6), list(VARS))
    lat, lon = ds["latitude"].values, ds["longitude"].values
    train = load_times(ds, [0, 1, 2, 3], VARS).astype(np.float64)
    krig = Kriging.fit(train, lat, lon, model="exponential", nonneg=[v == "tp" for v in VARS], points=200)
    torch.manual_seed(0)
    cfg = GapFillConfig(variables=VARS, widths=(8, 8), strip_height=8, neighbours=8)
    return ds, lat, lon, train, krig, GapFiller(cfg, krig)


def test_plan_gives_the_kriging_mean_and_a_rolled_mask_the_rolled_kriging(setup):
    _ds, lat, lon, train, krig, _ = setup
    miss = masks.draw("boxes", lat, lon, 0.3, np.random.default_rng(1))[0]
    plan = krig.plan(miss, neighbours=8)
    field = np.where(miss, np.nan, train[:1])
    mean, _var = krig.predict(field, neighbours=8)
    z = ((train[0] - krig.mean) / krig.scale).reshape(3, -1)
    for c in range(3):
        got = krig.mean[c].ravel()[plan.missing] + krig.scale[c].ravel()[plan.missing] * plan.anomaly(c, z[c])
        np.testing.assert_allclose(got, mean[0, c].ravel()[plan.missing], rtol=1e-12)
    # the roll the training strips rely on: kriging z under a mask rolled by k = kriging rolled by k
    # (exact with every observed cell as a neighbour; with fewer, up to ties among equidistant neighbours)
    small = Kriging(lat[::2], lon[::2], np.zeros((1, 8, 16)), np.ones((1, 8, 16)),
                    (Covariance("exponential", 1.0, 2000.0, 0.01),))
    m = masks.draw("boxes", small.lat, small.lon, 0.3, np.random.default_rng(1))[0]
    zs = np.random.default_rng(2).standard_normal(m.size)
    k = 5
    plan = small.plan(m, neighbours=m.size)
    rolled = small.plan(np.roll(m, k, axis=1), neighbours=m.size)
    a = np.zeros(m.size)
    a[plan.missing] = plan.anomaly(0, zs)
    b = np.zeros(m.size)
    b[rolled.missing] = rolled.anomaly(0, np.roll(zs.reshape(m.shape), k, axis=1).ravel())
    np.testing.assert_allclose(np.roll(a.reshape(m.shape), k, axis=1), b.reshape(m.shape), atol=1e-8)


def test_strip_example_targets_the_standardised_kriging_residual_on_the_gaps_only(setup):
    _ds, lat, lon, train, krig, _model = setup
    miss = masks.draw("scattered", lat, lon, 0.4, np.random.default_rng(2))[0]
    plan = krig.plan(miss, neighbours=8)
    z = ((train[1] - krig.mean) / krig.scale).astype(np.float32)
    r, cond, w = strip_example(z, miss, plan, 4, 8, lat, lat_weights(lat), 0.05)
    assert r.shape == (3, 8, 32) and cond.shape == (10, 8, 32) and w.shape == (3, 8, 32)
    gap = miss[4:12]
    assert torch.all(w[:, ~gap] == 0) and torch.all(w[:, gap] > 0) and torch.all(r[:, ~gap] == 0)
    mu, sigma = cond[:3].numpy(), cond[3:6].numpy()
    np.testing.assert_array_equal(mu[:, ~gap], z[:, 4:12][:, ~gap])     # observed cells are the field itself
    assert np.all(sigma[:, ~gap] == 0) and np.all(sigma[:, gap] > 0)
    expect = (z[:, 4:12] - mu) / np.maximum(sigma, 0.05)
    np.testing.assert_allclose(r.numpy()[:, gap], expect[:, gap], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cond[6:9].numpy(), np.broadcast_to(gap, (3, *gap.shape)).astype(np.float32))


def test_loss_ignores_observed_cells(setup):
    from sciffusion.plugins.climate.downscale.training import weighted_loss

    *_, model = setup
    r = torch.randn(2, 3, 8, 32)
    cond = torch.randn(2, 10, 8, 32)
    w = (torch.rand(2, 3, 8, 32) < 0.3).float()
    other = torch.where(w > 0, r, torch.randn_like(r) * 100)   # only observed cells changed
    torch.manual_seed(3)
    a = weighted_loss(model.model, model.process(), (r, cond, w))
    torch.manual_seed(3)
    b = weighted_loss(model.model, model.process(), (other, cond, w))
    assert torch.equal(a, b)


def test_pool_dataset_and_cache(setup, tmp_path):
    _ds, lat, lon, train, krig, model = setup
    pool = draw_pool(lat, lon, 4, np.random.default_rng(0), fractions=(0.1, 0.3))
    assert pool.shape == (4, 16, 32)
    plans = solve_pool(krig, pool, 8, tmp_path / "pool.npz")
    again = solve_pool(krig, pool, 8, tmp_path / "pool.npz")   # read back from the cache
    for p, q in zip(plans, again, strict=True):
        np.testing.assert_array_equal(p.weights, q.weights)
    data = GapStrips(((train - krig.mean) / krig.scale), pool, plans, lat, model.cfg, length=10)
    r, cond, _w = data[3]
    r2, _, _ = data[3]
    assert torch.equal(r, r2) and r.shape == (3, 8, 32) and cond.shape == (10, 8, 32)


def test_sample_returns_observed_cells_bit_for_bit_and_spread_only_in_gaps(setup):
    ds, lat, lon, _train, _krig, model = setup
    truth = load_times(ds, [4, 5], VARS)
    miss = masks.draw("boxes", lat, lon, 0.25, np.random.default_rng(4), n=2)
    gappy = np.where(miss[:, None], np.nan, truth)
    ens = model.sample(gappy, members=3, steps=3, seed=0)
    assert ens.shape == (3, 2, 3, 16, 32) and ens.dtype == np.float32 and np.isfinite(ens).all()
    obs = np.broadcast_to(~miss[:, None], truth.shape)
    assert np.array_equal(ens[:, obs], np.broadcast_to(truth[obs], ens[:, obs].shape))
    assert np.all(ens[:, :, 2] >= 0)                                  # tp non-negative
    assert ens.std(axis=0)[np.broadcast_to(miss[:, None], truth.shape)].mean() > 0
    np.testing.assert_array_equal(model.sample(gappy, members=3, steps=3, seed=0), ens)   # seeded


def test_condition_and_residual_target_shapes():
    mu, sigma = np.zeros((2, 3, 4, 8)), np.ones((2, 3, 4, 8))
    miss = np.zeros((2, 3, 4, 8), bool)
    miss[..., 0] = True
    assert condition(mu, sigma, miss, np.linspace(-60, 60, 4)).shape == (2, 10, 4, 8)
    z = np.full((2, 3, 4, 8), 2.0)
    r = residual_target(z, mu, 0.5 * sigma, miss, 0.05)
    assert np.all(r[..., 0] == 4.0) and np.all(r[..., 1:] == 0)


def test_fill_gaps_xarray_keeps_nan_semantics_and_bad_inputs(setup, tmp_path):
    ds, _lat, _lon, _train, _krig, model = setup
    sub = ds.isel(time=[4, 5]).load()
    gappy = sub.copy(deep=True)
    gappy["t2m"][0, 2:6, 3:9] = np.nan
    gappy["u10"][1, 5:9, 10:20] = np.nan
    out = fill_gaps(gappy, model, members=2, steps=2)
    assert out["t2m"].dims == ("member", "time", "latitude", "longitude") and out.sizes["member"] == 2
    for v in VARS:
        known = np.isfinite(gappy[v].values)
        assert np.array_equal(out[v].values[:, known], np.broadcast_to(gappy[v].values[known], out[v].values[:, known].shape))
        assert np.isfinite(out[v].values).all()
    with pytest.raises(ValueError, match="no missing values"):
        fill_gaps(sub, model, members=1, steps=2)
    empty = gappy.copy(deep=True)
    empty["u10"][1] = np.nan
    with pytest.raises(ValueError, match=r"no observed cell|all-NaN"):
        fill_gaps(empty, model, members=1, steps=2)
    with pytest.raises(ValueError, match="no observed cell"):
        masks.check_observed(np.ones((1, 4, 4), bool))


def test_checkpoint_round_trip_and_kinds(setup, tmp_path):
    from sciffusion.plugins.climate.downscale import Downscaler
    from sciffusion.plugins.climate.gapfill import is_gapfill_checkpoint

    _ds, _lat, _lon, _train, krig, model = setup
    path = model.save(tmp_path / "gap.pt")
    back = GapFiller.load(path)
    assert back.cfg == model.cfg and is_gapfill_checkpoint(path)
    for k, v in model.model.state_dict().items():
        assert torch.equal(v, back.model.state_dict()[k])
    np.testing.assert_allclose(back.kriging.mean, krig.mean, rtol=1e-6)
    assert back.kriging.covariances == krig.covariances and back.kriging.nonneg == krig.nonneg
    with pytest.raises(ValueError, match="is a gap-filling checkpoint") as err:
        Downscaler.load(path)
    assert "\n" not in str(err.value)
    bundle, _ = untrained_bundle()
    down = bundle.save(tmp_path / "down.pt")
    with pytest.raises(ValueError, match="is a downscaling checkpoint") as err:
        GapFiller.load(down)
    assert "\n" not in str(err.value) and not is_gapfill_checkpoint(down)


def test_cli_infill_input_and_bad_inputs(setup, tmp_path, capsys):
    from sciffusion.plugins.climate.cli import main

    ds, _lat, _lon, _train, _krig, model = setup
    ckpt = model.save(tmp_path / "gap.pt")
    gappy = ds.isel(time=[4, 5]).load()
    gappy["t2m"][0, 2:6, 3:9] = np.nan
    src = tmp_path / "gappy.nc"
    gappy.to_netcdf(src, engine="h5netcdf")
    out = tmp_path / "filled.nc"
    assert main(["--mode", "infill", "--input", str(src), "--checkpoint", str(ckpt), "--members", "2", "--steps", "2",
                 "--quiet", "--out", str(out)]) == 0
    import xarray as xr

    with xr.open_dataset(out) as filled:
        known = np.isfinite(gappy["t2m"].values)
        assert np.array_equal(filled["t2m"].values[:, known][0], gappy["t2m"].values[known])
    full = tmp_path / "full.nc"
    ds.isel(time=[4]).to_netcdf(full, engine="h5netcdf")
    capsys.readouterr()
    out2 = tmp_path / "nothing.nc"
    assert main(["--mode", "infill", "--input", str(full), "--checkpoint", str(ckpt), "--quiet", "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "no missing values" in err and err.count("\n") == 1 and not out2.exists()
    bundle, _ = untrained_bundle()
    down = bundle.save(tmp_path / "down.pt")
    assert main(["--mode", "infill", "--input", str(src), "--checkpoint", str(down), "--quiet", "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "is a downscaling checkpoint" in err and err.count("\n") == 1
    assert main(["--input", str(src), "--checkpoint", str(ckpt), "--quiet", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "is a gap-filling checkpoint" in err and err.count("\n") == 1


def test_cli_infill_scoring_mode_with_the_model(setup, tmp_path):
    import json

    from sciffusion.plugins.climate.cli import main

    *_, model = setup
    ckpt = model.save(tmp_path / "gap.pt")
    ref = tmp_path / "ref.nc"
    make_fine(n_time=8).to_netcdf(ref, engine="h5netcdf")
    out = tmp_path / "scores"
    assert main(["--reference", str(ref), "--variables", ",".join(VARS), "--mode", "infill", "--checkpoint", str(ckpt),
                 "--gap-family", "swaths", "--members", "2", "--steps", "2", "--holdout", "2", "--quiet",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gap_family"] == "swaths" and len(metrics["held_out_times"]) == 2
    assert metrics["scores"]["t2m"]["sciffusion"]["observed_exact"] == 1.0
    assert set(metrics["scores"]["u10"]) == {"bilinear", "bicubic", "kriging", "sciffusion"}
    assert main(["--reference", str(ref), "--variables", ",".join(VARS), "--mode", "infill", "--checkpoint", str(ckpt),
                 "--gap-family", "dots", "--quiet", "--out", str(out)]) == 2
