"""Gap scoring: only the removed cells count, observed cells are checked bit for bit, the Gaussian CRPS is its
closed form, and spread/RMSE per distance bin are the weighted moments they claim to be."""

from __future__ import annotations

import numpy as np
import pytest

from sciffusion.plugins.climate.gap_eval import (
    baseline_fills,
    gaussian_crps,
    score_gaps,
    spread_by_distance,
)
from sciffusion.plugins.climate.metrics import fair_crps

LAT = np.linspace(-84, 84, 8)
LON = np.arange(16) * 22.5


def _truth(seed=0, shape=(3, 2, 8, 16)):
    return np.random.default_rng(seed).normal(0, 1, shape)


def test_only_gaps_are_scored_and_observed_cells_are_checked():
    truth = _truth()
    miss = np.zeros((3, 8, 16), bool)
    miss[:, 2:5, 3:9] = True
    off_obs = truth + np.where(miss[:, None], 0.0, 5.0)        # wrong only where observed
    off_gap = truth + np.where(miss[:, None], 0.5, 0.0)        # wrong by 0.5 in the gaps
    table = score_gaps({"a": off_obs[None], "b": off_gap[None], "c": truth[None]}, truth, miss, LAT, ["x", "y"])
    for v in ("x", "y"):
        assert table[v]["a"]["rmse"] == 0 and table[v]["a"]["crps"] == 0 and table[v]["a"]["observed_exact"] == 0
        assert table[v]["b"]["rmse"] == pytest.approx(0.5) and table[v]["b"]["crps"] == pytest.approx(0.5)
        assert table[v]["b"]["observed_exact"] == 1 and table[v]["c"]["observed_exact"] == 1


def test_gaussian_crps_closed_form():
    truth = np.zeros((1, 8, 16))
    # CRPS(N(0, 1), 0) = 2 phi(0) - 1 / sqrt(pi)
    assert gaussian_crps(truth, np.ones_like(truth), truth, LAT) == pytest.approx(
        2 / np.sqrt(2 * np.pi) - 1 / np.sqrt(np.pi), rel=1e-12)
    # sigma = 0: the absolute error
    assert gaussian_crps(truth + 2.0, np.zeros_like(truth), truth, LAT) == pytest.approx(2.0)
    # many draws' fair CRPS agrees
    rng = np.random.default_rng(1)
    mean, var, y = rng.normal(size=(1, 8, 16)), rng.uniform(0.5, 2, (1, 8, 16)), rng.normal(size=(1, 8, 16))
    ens = mean + np.sqrt(var) * rng.standard_normal((4000, 1, 8, 16))
    assert fair_crps(ens, y, LAT) == pytest.approx(gaussian_crps(mean, var, y, LAT), rel=0.02)


def test_spread_by_distance_bins():
    truth = np.zeros((1, 8, 16))
    dist = np.tile(np.arange(16) * 100.0, (1, 8, 1))            # 0, 100, ... 1500 km along longitude
    s = 1 + dist / 500
    ens = np.stack([s + 1.0, -s + 1.0])                          # mean 1 (error 1), var (ddof=1) 2 s^2
    x, spread, rmse, _ = spread_by_distance(ens, truth, dist, LAT, np.array([-50.0, 50.0, 250.0, 2000.0]))
    assert np.allclose(x, [0, 150, 1125])
    assert spread[0] == pytest.approx(np.sqrt(1.5 * 2 * 1.0))   # (K+1)/K = 3/2, s = 1 at 0 km
    assert np.allclose(rmse, 1.0)
    assert spread[0] < spread[1] < spread[2]


def test_baselines_fill_a_constant_field_with_the_constant():
    field = np.full((2, 1, 8, 16), 7.0)
    gappy = field.copy()
    gappy[:, :, 2:6, 4:12] = np.nan
    from sciffusion.plugins.climate.baselines import StatisticalDownscaler

    stat = StatisticalDownscaler(np.zeros((1, 8, 16), np.float32), np.ones((1, 8, 16), np.float32), (False,))
    fills = baseline_fills(gappy, LAT, LON, 4, stat, 3, np.random.default_rng(0))
    assert set(fills) == {"bilinear", "bicubic", "statistical"}
    assert np.allclose(fills["bilinear"], 7.0) and np.allclose(fills["bicubic"], 7.0)
    assert fills["statistical"].shape == (3, 2, 1, 8, 16)
