"""Precision/recall of generated fields in zonal-spectrum and EOF space: smoothing, collapse, NaN, EOFs."""

import numpy as np
import pytest

from sciffusion.plugins.climate.distribution import EOFBasis, distribution_scores, variable_scores

LAT = np.linspace(87.5, -87.5, 36)
LON = np.deg2rad(np.arange(72) * 5.0)


def _fields(n: int, rng: np.random.Generator) -> np.ndarray:
    """Fields with a k^-1.5 zonal amplitude spectrum and random large-scale patterns, (n, 36, 72)."""
    k = np.arange(1, 37)
    amp = rng.normal(size=(n, 36, k.size)) * k**-1.5
    phase = rng.uniform(0, 2 * np.pi, (n, 36, k.size))
    waves = (amp[..., None] * np.cos(k[:, None] * LON + phase[..., None])).sum(2)
    big = rng.normal(size=(n, 3)) @ np.stack([np.cos(np.deg2rad(LAT))[:, None] * np.cos(m * LON) for m in (1, 2, 3)]).reshape(3, -1)
    return waves + 2.0 * big.reshape(n, 36, 72)


def _smooth(x: np.ndarray) -> np.ndarray:
    """Keep zonal wavenumbers <= 6: what an interpolant from a 6x coarser grid resolves."""
    f = np.fft.rfft(x, axis=-1)
    f[..., 7:] = 0
    return np.fft.irfft(f, n=x.shape[-1], axis=-1)


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    truth, train = _fields(8, rng), _fields(30, rng)
    gen = {
        "same law": _fields(4 * 8, rng).reshape(4, 8, 36, 72),
        "smoothed": _smooth(_fields(4 * 8, rng)).reshape(4, 8, 36, 72),
        "collapsed": np.broadcast_to(train.mean(0), (4, 8, 36, 72)) + 0.01 * rng.normal(size=(4, 8, 36, 72)),
        # members of one time nearly equal (a sharp conditional ensemble), times drawn from the law
        "sharp": _fields(8, rng)[None] + 0.01 * rng.normal(size=(4, 8, 36, 72)),
    }
    return variable_scores(truth, gen, train, LAT)


def test_matching_fields_score_like_the_training_times(scores):
    for space in ("zonal_spectrum", "eof"):
        s, floor = scores[space]["same law"], scores[space]["training times"]
        assert s["recall"] >= 0.75 and s["precision"] >= 0.75 and floor["recall"] >= 0.75, (space, s, floor)
    assert scores["k_precision_recall"] == 3 and scores["k_density_coverage"] == 5


def test_a_sharp_ensemble_is_scored_member_by_member(scores):
    # pooled, its k-NN balls would shrink to the tiny member spread and recall would read 0
    for space in ("zonal_spectrum", "eof"):
        assert scores[space]["sharp"]["recall"] >= 0.75 and scores[space]["sharp"]["recall_sd"] < 0.1, space


def test_smoothed_fields_leave_the_spectral_manifold(scores):
    assert scores["zonal_spectrum"]["smoothed"]["precision"] == 0.0
    assert scores["zonal_spectrum"]["smoothed"]["coverage"] == 0.0
    assert scores["eof"]["smoothed"]["precision"] >= 0.75   # the large scales are untouched


def test_a_collapsed_ensemble_loses_recall(scores):
    # every member is the training mean: it misses the variability of the true fields (recall), sits in
    # the middle of the EOF cloud (precision 1, crowded: density > 1) and has lost the small scales
    for space in ("zonal_spectrum", "eof"):
        assert scores[space]["collapsed"]["recall"] <= 0.25
    assert scores["eof"]["collapsed"]["precision"] == 1.0 and scores["eof"]["collapsed"]["density"] > 1.3
    assert scores["zonal_spectrum"]["collapsed"]["precision"] == 0.0


def test_eof_basis_recovers_a_two_pattern_field():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(2, 36, 72))
    coef = rng.normal(size=(12, 2))
    train = 5.0 + np.einsum("nk,kij->nij", coef, p)
    basis = EOFBasis(train, LAT, np.ones((36, 72), bool), n_eofs=4)
    assert basis.modes.shape == (36 * 72, 4)
    assert np.allclose(basis.modes.T @ basis.modes, np.eye(4), atol=1e-10)
    assert basis.explained == pytest.approx(1.0)
    c = basis.coefficients(train)
    assert np.allclose(c[:, 2:], 0, atol=1e-8)          # two patterns: two non-zero coefficients
    assert np.allclose(np.cov(c[:, :2].T), np.diag(np.diag(np.cov(c[:, :2].T))), atol=1e-8)   # uncorrelated


def test_nan_cells_are_left_out_and_short_holdouts_are_skipped():
    rng = np.random.default_rng(2)
    truth, train, gen = _fields(6, rng), _fields(10, rng), _fields(12, rng).reshape(2, 6, 36, 72)
    clean = variable_scores(truth, {"g": gen}, train, LAT)
    holed = truth.copy()
    holed[:, 0, :5] = np.nan      # a polar row: outside the spectral band, dropped from the EOF cells
    got = variable_scores(holed, {"g": gen}, train, LAT)
    assert got["zonal_spectrum"] == clean["zonal_spectrum"]
    assert all(np.isfinite(v) for v in got["eof"]["g"].values())
    assert (clean["k_precision_recall"], clean["k_density_coverage"]) == (3, 5)
    out = distribution_scores(truth[:1, None], {"g": gen[:, :1, None]}, train[:, None], LAT, ["x"])
    assert "skipped" in out
