"""Kriging: the fitted covariance recovers a known one, predictions are the Gaussian conditional law in closed
form, observed cells come back exactly, and the predictive variance is 0 at observations and grows into a gap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from sciffusion.plugins.climate import masks
from sciffusion.plugins.climate.kriging import Covariance, Kriging, chordal_km, correlation

LAT = np.linspace(-85, 85, 18)
LON = np.arange(36) * 10.0


def _cov_matrix(cov: Covariance, lat, lon) -> np.ndarray:
    x = masks.unit_vectors(lat, lon).reshape(-1, 3)
    return cov(chordal_km(x[:, None], x[None])) + cov.nugget * np.eye(len(x))


def _draw(cov: Covariance, n: int, seed: int, lat=LAT, lon=LON) -> np.ndarray:
    chol = np.linalg.cholesky(_cov_matrix(cov, lat, lon))
    z = np.random.default_rng(seed).standard_normal((chol.shape[0], n))
    return (chol @ z).T.reshape(n, 1, len(lat), len(lon))


def _model(cov: Covariance, lat=LAT, lon=LON) -> Kriging:
    shape = (1, len(lat), len(lon))
    return Kriging(lat, lon, np.zeros(shape), np.ones(shape), (cov,))


@pytest.mark.parametrize("model", ["exponential", "matern32"])
def test_fit_recovers_a_known_covariance(model):
    true = Covariance(model, sill=2.0, range_km=1500.0, nugget=0.2)
    fields = 3.0 + _draw(true, 80, seed=1)
    fit = Kriging.fit(fields, LAT, LON, model=model, standardise=False, structures=1, points=648, max_km=6000.0,
                      bins=24)
    cov = fit.covariances[0]
    assert cov.model == model
    assert cov.sill == pytest.approx(true.sill, rel=0.25)
    assert cov.range_km == pytest.approx(true.range_km, rel=0.35)
    assert cov.sill + cov.nugget == pytest.approx(true.sill + true.nugget, rel=0.15)
    assert np.allclose(fit.mean, 3.0, atol=1.0)


def test_auto_picks_the_smoother_model_for_smooth_fields():
    true = Covariance("matern52", sill=1.0, range_km=2000.0, nugget=1e-3)
    fit = Kriging.fit(_draw(true, 60, seed=2), LAT, LON, model="auto", standardise=False, structures=1, points=648,
                      max_km=6000.0)
    assert fit.covariances[0].model != "exponential"


def test_two_structures_recover_a_nested_covariance():
    true = Covariance("matern32", sill=0.6, range_km=1000.0, nugget=0.05, sill2=1.0, range2_km=4000.0)
    fit = Kriging.fit(_draw(true, 80, seed=9), LAT, LON, model="matern32", standardise=False, structures=2, points=648,
                      max_km=8000.0, bins=32)
    cov = fit.covariances[0]
    h = np.array([1000.0, 2000.0, 4000.0, 8000.0])
    assert np.allclose(cov.semivariogram(h), true.semivariogram(h), rtol=0.15)
    assert cov.total == pytest.approx(true.total, rel=0.15) and cov.range2_km > cov.range_km


def test_mean_and_variance_are_the_gaussian_conditional_law():
    cov = Covariance("exponential", sill=1.0, range_km=1500.0, nugget=0.05, sill2=0.5, range2_km=5000.0)
    lat, lon = np.linspace(-80, 80, 9), np.arange(18) * 20.0
    truth = _draw(cov, 1, seed=3, lat=lat, lon=lon)
    miss = masks.draw("boxes", lat, lon, 0.3, np.random.default_rng(0), n=1, min_size=2)[0]
    gappy = np.where(miss, np.nan, truth)
    mean, var = _model(cov, lat, lon).predict(gappy, neighbours=10_000)   # every observed cell
    c = _cov_matrix(cov, lat, lon)
    o, m = ~miss.ravel(), miss.ravel()
    lam = np.linalg.solve(c[np.ix_(o, o)], c[np.ix_(o, m)])
    want_mean = lam.T @ truth.ravel()[o]
    want_var = np.diag(c[np.ix_(m, m)] - c[np.ix_(m, o)] @ lam)
    assert np.allclose(mean[0, 0][miss], want_mean, atol=1e-6)
    assert np.allclose(var[0, 0][miss], want_var, atol=1e-6)


def test_observed_cells_exact_and_variance_grows_into_the_gap():
    cov = Covariance("matern32", sill=1.0, range_km=3000.0, nugget=0.01)
    truth = _draw(cov, 2, seed=4).astype(np.float32)
    miss = np.zeros((2, 1, 18, 36), bool)
    miss[:, :, 4:14, 8:26] = True
    gappy = np.where(miss, np.nan, truth)
    model = _model(cov)
    mean, var = model.predict(gappy, neighbours=40)
    assert np.array_equal(mean[~miss], truth[~miss].astype(np.float64)) and np.all(var[~miss] == 0)
    ens = model.sample(gappy, members=3, rng=np.random.default_rng(0), neighbours=40)
    assert ens.dtype == np.float32 and np.array_equal(ens[:, ~miss], np.broadcast_to(truth[~miss], (3, miss.size - miss.sum())))
    d = masks.distance_to_observed(miss[0, 0], LAT, LON)
    rho = spearmanr(d[miss[0, 0]], var[0, 0][miss[0, 0]]).statistic
    assert rho > 0.9
    assert var[0, 0][miss[0, 0]].max() <= cov.sill + cov.nugget + 1e-9


def test_marginal_draws_follow_the_predictive_law():
    cov = Covariance("exponential", sill=1.0, range_km=2000.0, nugget=0.1)
    truth = _draw(cov, 1, seed=5)
    miss = masks.draw("scattered", LAT, LON, 0.3, np.random.default_rng(1), n=1)[0]
    gappy = np.where(miss, np.nan, truth)
    model = _model(cov)
    mean, var = model.predict(gappy)
    ens = model.sample(gappy, members=4000, rng=np.random.default_rng(2))
    z = (ens[:, 0, 0][:, miss] - mean[0, 0][miss]) / np.sqrt(var[0, 0][miss])
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01


def test_standardised_fit_and_nonnegative_channels():
    rng = np.random.default_rng(6)
    cov = Covariance("exponential", sill=1.0, range_km=2000.0, nugget=0.1)
    scale = 1 + 4 * np.cos(np.deg2rad(LAT))[:, None] * np.ones(36)      # variance depends on latitude
    train = np.concatenate([10 + scale * _draw(cov, 40, seed=7), np.abs(_draw(cov, 40, seed=8))], axis=1)
    train[:, 1, :3] = 0.0                                                   # cells that never change
    fit = Kriging.fit(train, LAT, LON, model="exponential", nonneg=[False, True], structures=1, points=648,
                      max_km=6000.0)
    assert fit.covariances[0].sill + fit.covariances[0].nugget == pytest.approx(1.0, rel=0.15)
    assert np.all(fit.scale[1, :3] > 0)
    test = train[:2].copy()
    test[:, :, 5:12, 10:20] = np.nan
    ens = fit.sample(test, members=5, rng=rng)
    assert np.isfinite(ens).all() and ens[:, :, 1].min() >= 0


def test_bad_input():
    cov = Covariance("exponential", 1.0, 1000.0, 0.0)
    gappy = np.full((1, 1, 18, 36), np.nan)
    with pytest.raises(ValueError, match="no observed cell"):
        _model(cov).predict(gappy)
    with pytest.raises(ValueError, match="unknown covariance model"):
        correlation("spherical", np.ones(2))
    with pytest.raises(ValueError, match="structures"):
        Kriging.fit(np.zeros((4, 1, 18, 36)), LAT, LON, structures=3)
    with pytest.raises(ValueError, match="three training times"):
        Kriging.fit(np.zeros((2, 1, 18, 36)), LAT, LON)
