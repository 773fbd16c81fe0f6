"""Data consistency of super-resolved volumes: closed forms, noise handling, and the path through `super_resolve`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciffusion.plugins.mri.conditioning import Conditioning
from sciffusion.plugins.mri.consistency import fit_consistency, wiener_gains
from sciffusion.plugins.mri.degrade import SliceProfile, degrade_profile, upsample
from sciffusion.plugins.mri.infer import super_resolve
from sciffusion.plugins.mri.model import SRDenoiser

from .helpers import phantom, tiny_config

BOX = SliceProfile("box", width=1.0)
GAUSS = SliceProfile("gaussian", fwhm=1.0)


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(ref.max() ** 2 / np.mean((x.astype(np.float64) - ref) ** 2)))


@pytest.mark.parametrize("scale", [(2, 2, 2), (1, 1, 4)])
def test_box_profile_without_noise_is_the_block_mean_correction(scale):
    """Box of width 1 has `A A^T = I / f`: the correction is `y + nearest(l - blockmean(y))`, exactly."""
    rng = np.random.default_rng(0)
    ref = phantom((16, 16, 16))
    lr = degrade_profile(ref, scale, BOX)
    y_hat = ref + rng.normal(0, 5, ref.shape).astype(np.float32)
    out = fit_consistency(y_hat, lr, scale, BOX, 0.0)(y_hat, lr)
    block_residual = lr - degrade_profile(y_hat, scale, BOX)
    expected = y_hat + upsample(block_residual, scale, order=0)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    np.testing.assert_allclose(degrade_profile(out, scale, BOX), lr, atol=1e-4)


def test_gains_are_the_wiener_ratio_of_each_band():
    """A residual of power `P_b` in band `b` gets `max(P_b - s^2, 0) / P_b`."""
    lam = np.arange(1, 1025, dtype=np.float64).reshape(1, 1, -1)  # 1024 components, ranks = lam - 1
    power = np.where(lam > 512, 4.0, 1.5)  # the best-measured half above the noise, the rest near it
    gains, which = wiener_gains(np.sqrt(power), lam, sigma=1.0)
    assert gains[0] == pytest.approx(0.5 / 1.5)  # bin 0: the smaller half of lambda
    assert np.allclose(gains[1:], 3.0 / 4.0)
    assert which.max() == len(gains) - 1 == 4  # 1024 / 2^4 = 64 components in the last bin
    assert wiener_gains(np.sqrt(power), lam, sigma=0.0)[0] == pytest.approx(np.ones(5))


def test_a_perfect_estimate_is_not_pulled_towards_the_noise():
    """`y_hat = y` and `l = A y + n`: the residual is noise only, so the correction stays small."""
    rng = np.random.default_rng(1)
    ref = phantom((32, 32, 32))
    sigma = 4.0
    lr = degrade_profile(ref, (2, 2, 2), GAUSS) + rng.normal(0, sigma, (16, 16, 16)).astype(np.float32)
    fitted = fit_consistency(ref, lr, (2, 2, 2), GAUSS, sigma)
    out = fitted(ref, lr)
    assert fitted.gains.max() < 0.3
    assert np.sqrt(np.mean((out - ref) ** 2)) < 0.15 * sigma


def test_a_blurred_estimate_is_sharpened_towards_the_truth():
    """Cubic interpolation of a noise-free Gaussian-profile scan gains over 1 dB from the correction."""
    ref = phantom((32, 32, 32))
    lr = degrade_profile(ref, (2, 2, 2), GAUSS)
    cubic = upsample(lr, (2, 2, 2), 3)
    out = fit_consistency(cubic, lr, (2, 2, 2), GAUSS, 0.0)(cubic, lr)
    assert _psnr(out, ref) > _psnr(cubic, ref) + 1.0


def test_wrong_shapes_and_noise_are_refused():
    with pytest.raises(ValueError, match="scan shape"):
        fit_consistency(np.zeros((16, 16, 16)), np.zeros((8, 8, 7)), (2, 2, 2), BOX, 0.0)
    with pytest.raises(ValueError, match="noise sigma"):
        fit_consistency(np.zeros((16, 16, 16)), np.zeros((8, 8, 8)), (2, 2, 2), BOX, float("nan"))


def _tiny_model() -> SRDenoiser:
    torch.manual_seed(0)
    return SRDenoiser(tiny_config()).eval()


def test_super_resolve_makes_every_output_consistent_when_the_profile_is_known():
    model = _tiny_model()
    lr = degrade_profile(phantom((32, 32, 32)), (2, 2, 2), BOX)
    told = Conditioning(0.0, BOX)
    r = super_resolve(model, lr, samples=2, steps=2, keep_samples=True, conditioning=told)
    # told "no noise", the step still assumes the clean scan's estimated floor (`consistency_sigma`)
    sigma = r.consistency["noise_sigma"]
    assert 0 < sigma < 0.01 * lr.max()

    def misfit(y):
        return float(np.sqrt(np.mean((degrade_profile(y, (2, 2, 2), BOX) - lr) ** 2)))

    raw = super_resolve(model, lr, samples=2, steps=2, conditioning=told, consistency=False)
    assert raw.consistency is None
    assert misfit(raw.mean) > 5 * sigma  # an untrained network is far from the scan
    for y in (r.mean, r.sample_mean, r.posterior_mean, *r.samples):
        assert misfit(y) < 1.5 * sigma  # ... and agrees with it up to the noise after the step


def test_super_resolve_leaves_outputs_alone_without_a_profile():
    model = _tiny_model()
    lr = degrade_profile(phantom((32, 32, 32)), (2, 2, 2), BOX)
    blind = super_resolve(model, lr, samples=2, steps=2, conditioning=Conditioning("auto", None))
    off = super_resolve(model, lr, samples=2, steps=2, conditioning=Conditioning("auto", BOX), consistency=False)
    assert blind.consistency is None
    np.testing.assert_array_equal(blind.mean, off.mean)
