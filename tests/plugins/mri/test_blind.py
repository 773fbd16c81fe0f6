"""The blind degradation family: draws follow the family, each step does what it claims, items are pure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciffusion.plugins.mri.blind import (
    BlindFamily,
    augment_contrast,
    blind_pair,
    draw_acquisition,
    synth_image,
)
from sciffusion.plugins.mri.data import BlindPatchDataset, training_region
from sciffusion.plugins.mri.degrade import PROFILES, SliceProfile, degrade_profile, upsample
from tests.plugins.mri.helpers import phantom, tiny_config

OFF = dict(p_noise=0.0, p_bias=0.0, p_gamma=0.0, scale_range=(1.0, 1.0), p_affine=0.0, p_elastic=0.0)


def test_acquisition_draws_follow_the_family():
    fam = BlindFamily()
    rng = np.random.default_rng(0)
    draws = [draw_acquisition(fam, rng) for _ in range(3000)]
    kinds = np.array([d.profiles[0].kind for d in draws])
    for kind, p in zip(("gaussian", "box", "box_gaussian"), fam.profile_probs):
        assert (kinds == kind).mean() == pytest.approx(p, abs=0.03)
    fwhm = np.array([d.profiles[0].fwhm for d in draws if d.profiles[0].kind == "gaussian"])
    assert fwhm.min() >= 0.5 and fwhm.max() <= 1.5 and fwhm.mean() == pytest.approx(1.0, abs=0.03)
    width = np.array([d.profiles[0].width for d in draws if d.profiles[0].kind == "box"])
    assert width.min() >= 0.7 and width.max() <= 1.3 and (width < 1).any() and (width > 1).any()
    noisy = [d for d in draws if d.noise is not None]
    assert len(noisy) / len(draws) == pytest.approx(fam.p_noise, abs=0.03)
    snr = np.array([d.snr for d in noisy])
    assert snr.min() >= 8 and snr.max() <= 80
    assert np.median(snr) == pytest.approx(np.sqrt(8 * 80), rel=0.1)  # log-uniform
    assert {d.noise for d in noisy} == {"gaussian", "rician"}


def test_blind_pair_without_randomness_is_block_mean_then_cubic():
    fam = BlindFamily(profile_probs=(0, 1, 0), width_range=(1.0, 1.0), **OFF)
    block = phantom((24, 24, 24))
    y, cubic, acq = blind_pair(block, (2, 2, 2), (4, 4, 4), fam, np.random.default_rng(0), signal=100.0)
    assert acq.noise is None and acq.profiles[0].kind == "box"
    lr = block.reshape(12, 2, 12, 2, 12, 2).mean((1, 3, 5))
    np.testing.assert_allclose(y, block[4:-4, 4:-4, 4:-4])
    np.testing.assert_allclose(cubic, upsample(lr, (2, 2, 2), 3)[4:-4, 4:-4, 4:-4], atol=1e-4)


def test_blind_pair_noise_reaches_the_low_res_input_only():
    fam = BlindFamily(profile_probs=(0, 1, 0), width_range=(1.0, 1.0), **{**OFF, "p_noise": 1.0},
                      snr_range=(10.0, 10.0))
    block = np.full((32, 32, 32), 100.0, np.float32)
    y, cubic, acq = blind_pair(block, (2, 2, 2), (4, 4, 4), fam, np.random.default_rng(1), signal=100.0)
    assert acq.snr == pytest.approx(10.0) and np.all(y == 100.0)
    lr_noise = (cubic - 100.0).std()
    assert 2.0 < lr_noise < 10.0  # sigma = 10 at low res, smoothed by the interpolation


def test_contrast_changes_are_smooth_positive_and_bounded():
    fam = BlindFamily(p_bias=1.0, p_gamma=0.0, scale_range=(1.0, 1.0))
    y = torch.full((1, 32, 32, 32), 0.5)
    out = augment_contrast(y, fam, np.random.default_rng(3))[0].numpy()
    ratio = out / 0.5
    assert ratio.min() > 0 and ratio.std() > 1e-3  # a field, not a constant
    assert np.abs(np.diff(ratio, axis=0)).max() < 0.1 * ratio.max()  # smooth
    assert 0.4 < ratio.min() and ratio.max() < 2.5  # a plausible coil shading
    fam = BlindFamily(p_bias=0.0, p_gamma=0.0, scale_range=(2.0, 2.0))
    assert float(augment_contrast(y, fam, np.random.default_rng(3)).mean()) == pytest.approx(1.0)


def test_synth_image_gives_each_tissue_its_own_intensity():
    maps = np.zeros((3, 12, 12, 12), np.float32)
    maps[0, :4], maps[1, 4:8], maps[2, 8:] = 1, 1, 1
    a, b = synth_image(maps, np.random.default_rng(0)), synth_image(maps, np.random.default_rng(1))
    for img, seed in ((a, 0), (b, 1)):
        mu = np.random.default_rng(seed).uniform(0.0, 1.0, 3)  # the draw synth_image makes first
        means = np.array([img[:4].mean(), img[4:8].mean(), img[8:].mean()])
        np.testing.assert_allclose(means / means.max(), mu / mu.max(), rtol=0.02)
    assert not np.allclose(a, b)
    assert np.percentile(a, 99.5) == pytest.approx(1.0, abs=0.02)
    assert a[:4].std() / a[:4].mean() == pytest.approx(0.05, rel=0.3)  # within-tissue texture


def test_blind_dataset_items_are_pure_and_vary():
    cfg = tiny_config((1, 1, 4))
    vol = phantom((40, 40, 72))
    region = training_region(vol.shape, axis=1, holdout=(30, 40), guard=0)
    ds = BlindPatchDataset([vol], cfg, BlindFamily(), regions=[region], length=10, seed=0)
    x0, cond = ds[2]
    assert x0.shape == cond.shape == (4, 16, 16, 8)
    torch.testing.assert_close(ds[2][0], x0)
    assert not torch.allclose(ds[3][1], cond)
    assert ds.block == (24, 24, 64) and ds.margin == (4, 4, 16)


def test_degrade_profile_per_axis_profiles():
    from sciffusion.plugins.mri.degrade import SliceProfile

    x = np.random.default_rng(0).random((8, 8, 16)).astype(np.float32)
    out = degrade_profile(x, (1, 1, 4), (SliceProfile("gaussian"), SliceProfile("gaussian"), SliceProfile("box")))
    np.testing.assert_allclose(out, x.reshape(8, 8, 4, 4).mean(3), atol=1e-6)


@pytest.mark.parametrize("profile", [SliceProfile("gaussian", fwhm=0.7), SliceProfile("box", width=1.2),
                                     SliceProfile("box_gaussian", width=0.9, fwhm=0.4)])
def test_adaptation_pairs_use_the_scans_profile_when_known(profile):
    """Told the scan's profile, every adaptation pair is degraded by exactly it, without noise;
    not told, the profiles vary over the blind family."""
    from sciffusion.plugins.mri.adapt import adapt_family

    rng = np.random.default_rng(0)
    draws = [draw_acquisition(adapt_family(profile), rng) for _ in range(20)]
    assert all(d.profiles == (profile,) * 3 and d.noise is None for d in draws)
    blind = {draw_acquisition(adapt_family(None), rng).profiles[0] for _ in range(20)}
    assert len(blind) == 20 and {p.kind for p in blind} == set(PROFILES)
