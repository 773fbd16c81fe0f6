"""WeatherBench 2 metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from sciffusion.plugins.climate.metrics import (
    fair_crps,
    rmse,
    spectral_error,
    spread_skill,
    zonal_spectrum,
)

LAT = np.array([-45.0, 45.0])  # two rows with equal weights (1, 1)


def test_fair_crps_of_a_known_ensemble():
    # one cell per row; members (0, 1, 3) and truth 2:
    # skill = (2 + 1 + 1)/3 = 4/3; pair sum over k != l = 2 * (1 + 3 + 2) = 12; 12 / (2 * 3 * 2) = 1
    ens = np.zeros((3, 1, 2, 1))
    ens[:, 0, 0, 0] = [0.0, 1.0, 3.0]
    ens[:, 0, 1, 0] = [0.0, 1.0, 3.0]
    truth = np.full((1, 2, 1), 2.0)
    assert fair_crps(ens, truth, LAT) == pytest.approx(4 / 3 - 1)
    # a single member: the CRPS is the absolute error
    assert fair_crps(ens[:1], truth, LAT) == pytest.approx(2.0)


def test_fair_crps_matches_brute_force_with_lat_weights():
    rng = np.random.default_rng(0)
    lat = np.array([-60.0, 0.0, 60.0])
    ens, truth = rng.normal(size=(5, 2, 3, 4)), rng.normal(size=(2, 3, 4))
    k = 5
    skill = np.abs(ens - truth).mean(0)
    pairs = np.abs(ens[:, None] - ens[None]).sum((0, 1)) / (2 * k * (k - 1))
    from sciffusion.plugins.climate.grid import lat_weights

    w = lat_weights(lat)[None, :, None]
    assert fair_crps(ens, truth, lat) == pytest.approx(float(((skill - pairs) * w).mean()))


def test_fair_crps_is_unbiased_for_a_perfect_gaussian_ensemble():
    # E[fair CRPS] of members and truth from N(0, 1) equals the CRPS of N(0,1) at N(0,1) draws: 1/sqrt(pi)
    rng = np.random.default_rng(1)
    ens, truth = rng.normal(size=(3, 4000, 2, 10)), rng.normal(size=(4000, 2, 10))
    assert fair_crps(ens, truth, LAT) == pytest.approx(1 / np.sqrt(np.pi), rel=0.02)


def test_rmse_of_ensemble_mean_with_weights():
    lat = np.array([-30.0, 60.0])
    from sciffusion.plugins.climate.grid import lat_weights

    w = lat_weights(lat)
    ens = np.zeros((2, 1, 2, 1))
    ens[:, 0, 0, 0] = [1.0, 3.0]  # mean 2, error 2
    truth = np.zeros((1, 2, 1))
    assert rmse(ens, truth, lat) == pytest.approx(np.sqrt(w[0] * 4 / 2))


def test_spread_skill_is_one_for_a_perfect_ensemble():
    rng = np.random.default_rng(2)
    k = 4
    ens, truth = rng.normal(size=(k, 3000, 2, 8)), rng.normal(size=(3000, 2, 8))
    assert spread_skill(ens, truth, LAT) == pytest.approx(1.0, abs=0.02)
    assert spread_skill(0.5 * ens, truth, LAT) < 0.7
    assert np.isnan(spread_skill(ens[:1], truth, LAT))


def test_nan_truth_cells_are_left_out():
    ens = np.ones((2, 1, 2, 2))
    truth = np.array([[[1.0, np.nan], [1.0, np.nan]]])
    assert rmse(ens, truth, LAT) == 0.0 and fair_crps(ens, truth, LAT) == 0.0


def test_zonal_spectrum_of_a_wave():
    lon = np.arange(64) * 360 / 64
    lat = np.array([-10.0, 10.0])
    field = np.tile(2.0 * np.cos(5 * np.deg2rad(lon)), (2, 1))
    k, p = zonal_spectrum(field, lat)
    assert k[np.argmax(p)] == 5 and p[5] == pytest.approx(2.0)  # amplitude a has power a^2 / 2
    assert spectral_error(field, field, lat, 0) == 0.0


def test_block_stripes_flag_spread_stripes_that_the_truth_does_not_have():
    from sciffusion.plugins.climate.metrics import block_stripes, block_wavenumber_ratio

    rng = np.random.default_rng(0)
    rows = np.arange(48)
    striped = np.where(rows % 4 < 2, 2.0, 0.5)[:, None] * np.ones((48, 64))   # std by row within 4-row blocks
    draws = lambda std: rng.normal(size=(9, 40, 48, 64)) * std  # noqa: E731
    calibrated = draws(striped)           # truth and 8 members exchangeable: the error has the same stripes
    artefact = draws(striped)
    artefact[0] = draws(np.ones((48, 64)))[0]   # the truth without stripes
    good, bad = block_stripes(calibrated[1:], calibrated[0], 4), block_stripes(artefact[1:], artefact[0], 4)
    assert good["spread"] > 100 and good["error"] > 100 and good["mismatch"] < 0.1
    # the error (xbar - y)^2 keeps a striped var/K from the ensemble mean: ratios [1.59, 1.59, 0.15, 0.15]
    assert bad["spread"] > 100 and bad["error"] < bad["spread"] / 20 and 0.75 < bad["mismatch"] < 0.95
    assert 1.7 < good["spread_amplitude"] < 1.82   # variance profile (4, 4, 1/4, 1/4) / 2.125: ptp 1.76
    flat = block_stripes(draws(np.ones((48, 64)))[1:], draws(np.ones((48, 64)))[0], 4)
    assert flat["spread"] < 10 and flat["mismatch"] < 0.1
    assert block_wavenumber_ratio(np.tile([1.0, 0.0, 0.0, 0.0], 12), 4) > 1e6
