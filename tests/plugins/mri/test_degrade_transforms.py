"""Degradation, interpolation baselines, intensity transforms (CT windows on a real CT slice)."""

from __future__ import annotations

import numpy as np
import pytest

from sciffusion.plugins.mri.degrade import degrade, parse_scale, upsample
from sciffusion.plugins.mri.io import load_volume
from sciffusion.plugins.mri.transforms import PercentileScaler, foreground_mask, hu_window, to_ras


@pytest.mark.parametrize("text, expected", [(2, (2, 2, 2)), ("2", (2, 2, 2)), ("1,1,4", (1, 1, 4)),
                                            ("2x2x1", (2, 2, 1)), ((1, 1, 4), (1, 1, 4))])
def test_parse_scale(text, expected):
    assert parse_scale(text) == expected


@pytest.mark.parametrize("bad", ["1.5", "0", "1,1,1", "2,2", "9", "a,b,c", "-2", "1,1,4.5"])
def test_parse_scale_rejects(bad):
    with pytest.raises(ValueError, match=r"--scale: .*(does not divide sensibly|expected an integer)"):
        parse_scale(bad, "--scale")


@pytest.mark.parametrize("scale", [(2, 2, 2), (1, 1, 4), (3, 1, 2)])
def test_degrade_samples_linear_ramp_at_low_res_centres(scale):
    # A Gaussian slice profile preserves a linear function, so the low-res value equals the ramp at
    # the coarse voxel centre f j + (f - 1)/2 (away from the edges).
    g = np.meshgrid(*[np.arange(24, dtype=np.float64)] * 3, indexing="ij")
    w = np.array([0.3, -0.7, 1.1])
    hr = sum(wi * gi for wi, gi in zip(w, g)).astype(np.float32)
    lr = degrade(hr, scale)
    assert lr.shape == tuple(24 // f for f in scale)
    centres = np.meshgrid(*[np.arange(24 // f) * f + (f - 1) / 2 for f in scale], indexing="ij")
    want = sum(wi * ci for wi, ci in zip(w, centres))
    inner = tuple(slice(2, -2) for _ in range(3))
    np.testing.assert_allclose(lr[inner], want[inner], atol=1e-3)


@pytest.mark.parametrize("order", [1, 3])
def test_upsample_reproduces_linear_functions_on_the_fine_grid(order):
    scale = (2, 1, 4)
    shape = (24, 6, 20)
    c = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    lr = (0.5 * c[0] - 2.0 * c[1] + 0.25 * c[2]).astype(np.float32)
    up = upsample(lr, scale, order)
    assert up.shape == (48, 6, 80)
    fine = np.meshgrid(*[(np.arange(n * f) + 0.5) / f - 0.5 for n, f in zip(shape, scale)], indexing="ij")
    want = 0.5 * fine[0] - 2.0 * fine[1] + 0.25 * fine[2]
    inner = (slice(16, -16), slice(None), slice(32, -32))  # the spline's edge effect decays as 0.27^d
    np.testing.assert_allclose(up[inner], want[inner], atol=2e-4)


def test_cubic_beats_trilinear_on_a_smooth_phantom():
    from tests.plugins.mri.helpers import phantom

    hr = phantom((48, 48, 48))
    lr = degrade(hr, (2, 2, 2))
    e1 = np.abs(upsample(lr, (2, 2, 2), 1) - hr).mean()
    e3 = np.abs(upsample(lr, (2, 2, 2), 3) - hr).mean()
    assert e3 < e1


def test_percentile_scaler_inverse():
    x = np.random.default_rng(0).gamma(2.0, 50.0, (20, 20, 20)).astype(np.float32)
    s = PercentileScaler.fit(x, 0.5, 99.5)
    np.testing.assert_allclose(s.inverse(s(x)), x, rtol=1e-5, atol=1e-3)
    assert np.percentile(s(x), 0.5) == pytest.approx(0.0, abs=1e-6)


def test_hu_window_on_real_ct_slice(ct_small):
    from monai.transforms import LoadImage

    img = LoadImage(reader="PydicomReader", image_only=True)(ct_small)  # 2-D slice in HU
    hu = img.as_tensor().numpy()
    assert hu.min() == -896.0 and hu.max() == 1167.0
    brain = hu_window(hu, "brain")  # level 40, width 80 -> [0, 80] HU maps to [0, 1]
    assert brain.min() == 0.0 and brain.max() == 1.0
    inside = (hu > 0) & (hu < 80)
    np.testing.assert_allclose(brain[inside], hu[inside] / 80.0, atol=1e-6)
    bone = hu_window(hu, (600.0, 2800.0))
    np.testing.assert_allclose(bone, np.clip((hu + 800.0) / 2800.0, 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="unknown CT window"):
        hu_window(hu, "liverish")


def test_foreground_mask_and_ras(nifti):
    vol = load_volume(nifti[0])
    m = foreground_mask(vol.data)
    assert m[16, 16, 16] and not m[0, 0, 0]
    data, aff = to_ras(vol.data, vol.affine)
    # same world position for the voxel of maximum intensity
    i = np.unravel_index(np.argmax(vol.data), vol.data.shape)
    j = np.unravel_index(np.argmax(data), data.shape)
    np.testing.assert_allclose(vol.affine @ (*i, 1), aff @ (*j, 1), atol=1e-6)
