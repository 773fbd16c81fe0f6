"""Slice profiles and noise of the degradation family: each does what it claims."""

from __future__ import annotations

import numpy as np
import pytest

from sciffusion.plugins.mri.degrade import (
    FWHM_TO_SIGMA,
    SliceProfile,
    add_noise,
    degrade,
    degrade_profile,
    profile_matrix,
)


def _moments(w: np.ndarray, c: float) -> tuple[float, float, float]:
    k = np.arange(w.size)
    return float(w.sum()), float((w * k).sum() - c), float((w * (k - c) ** 2).sum())


def test_box_profile_is_the_block_mean():
    x = np.random.default_rng(0).random((16, 12, 20)).astype(np.float32)
    lr = degrade_profile(x, (2, 3, 4), SliceProfile("box"))
    np.testing.assert_allclose(lr, x.reshape(8, 2, 4, 3, 5, 4).mean((1, 3, 5)), atol=1e-6)


@pytest.mark.parametrize("f, fwhm", [(2, 1.0), (4, 1.0), (4, 0.6), (3, 1.5)])
def test_gaussian_profile_has_the_requested_fwhm(f, fwhm):
    # Integrating a Gaussian over unit voxels adds the variance of a unit box: sigma^2 + 1/12.
    w = profile_matrix(80, f, SliceProfile("gaussian", fwhm=fwhm))[8]
    total, mean, var = _moments(w, 8 * f + (f - 1) / 2)
    assert total == pytest.approx(1.0) and mean == pytest.approx(0.0, abs=1e-9)
    assert var == pytest.approx((fwhm * f * FWHM_TO_SIGMA) ** 2 + 1 / 12, rel=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", "box", "box_gaussian"])
@pytest.mark.parametrize("width", [0.6, 1.0, 1.4])
def test_profile_weights_match_brute_force_quadrature(kind, width):
    # p(x) on a fine grid (box (x) Gaussian by numerical convolution), integrated over each voxel
    from scipy.special import ndtr

    f, s, wd = 4, 0.5 * 4 * FWHM_TO_SIGMA, width * 4
    x = np.linspace(-12, 12, 240001)
    dx = x[1] - x[0]
    box = (np.abs(x) <= wd / 2) / wd
    gauss = np.exp(-0.5 * (x / s) ** 2) / (s * np.sqrt(2 * np.pi))
    p = {"gaussian": gauss, "box": box,
         "box_gaussian": (ndtr((x + wd / 2) / s) - ndtr((x - wd / 2) / s)) / wd}[kind]
    prof = SliceProfile(kind, fwhm=0.5, width=width)
    w = profile_matrix(80, f, prof)[8]
    c = 8 * f + (f - 1) / 2
    for k in range(int(c) - 6, int(c) + 8):
        sel = (x >= k - 0.5 - c) & (x < k + 0.5 - c)
        assert w[k] == pytest.approx(p[sel].sum() * dx, abs=2e-4), k
    assert _moments(w, c)[:2] == pytest.approx((1.0, 0.0), abs=1e-9)


def test_thin_box_leaves_a_gap():
    # slice thickness 0.6 x spacing at f = 4: a 2.4-voxel box centred at 33.5 covers [32.3, 34.7]
    w = profile_matrix(80, 4, SliceProfile("box", width=0.6))[8]
    np.testing.assert_allclose(w[31:37], np.array([0, 0.2, 1, 1, 0.2, 0]) / 2.4, atol=1e-12)


def test_gaussian_profile_is_close_to_the_training_degradation():
    x = np.random.default_rng(1).random((32, 32, 32)).astype(np.float32)
    a, b = degrade(x, (2, 2, 2)), degrade_profile(x, (2, 2, 2))
    assert np.abs(a - b).mean() < 0.05 * x.std()


@pytest.mark.parametrize("kind", ["gaussian", "rician"])
def test_noise_has_the_requested_snr(kind):
    y = np.full((48, 48, 48), 100.0, np.float32)
    n = add_noise(y, 20.0, kind, seed=1)
    assert n.std() == pytest.approx(100.0 / 20.0, rel=0.02)
    # Rician: E|A + sigma z| ~ sqrt(A^2 + sigma^2) for A >> sigma; Gaussian is unbiased
    want = np.sqrt(100.0**2 + 25.0) if kind == "rician" else 100.0
    assert n.mean() == pytest.approx(want, abs=0.05)
    assert np.array_equal(add_noise(y, None), y)
    np.testing.assert_array_equal(add_noise(y, 20.0, kind, seed=1), n)  # seeded


def test_rician_noise_floor_is_rayleigh():
    z = np.zeros((40, 40, 40), np.float32)
    n = add_noise(z, 10.0, "rician", seed=0, signal=50.0)  # sigma = 5
    assert n.min() >= 0 and n.mean() == pytest.approx(5.0 * np.sqrt(np.pi / 2), rel=0.02)


def test_bad_profiles_and_noise():
    with pytest.raises(ValueError, match="unknown slice profile"):
        SliceProfile("sinc")
    with pytest.raises(ValueError, match="must be > 0"):
        SliceProfile("gaussian", fwhm=0)
    with pytest.raises(ValueError, match="unknown noise"):
        add_noise(np.ones((4, 4, 4)), 10, "poisson")
