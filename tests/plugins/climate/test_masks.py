"""Mask families: shapes, area fractions, seeding, the shapes each family promises, and the no-observed-cell error."""

from __future__ import annotations

import numpy as np
import pytest

from sciffusion.plugins.climate import masks

LAT = -89.0 + 2.0 * np.arange(90)
LON = np.arange(180) * 2.0


@pytest.mark.parametrize("family", masks.FAMILIES)
@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5])
def test_shape_dtype_and_fraction(family, fraction):
    m = masks.draw(family, LAT, LON, fraction, np.random.default_rng(1), n=4)
    assert m.shape == (4, 90, 180) and m.dtype == bool
    f = masks.area_fraction(m, LAT)
    # boxes and swaths stop at the first piece that reaches the fraction: they overshoot by at most one piece
    tol = {"boxes": 0.07, "swaths": 0.1, "scattered": 0.02, "static": 0.002}[family]
    assert np.all(f >= fraction - (0.02 if family == "scattered" else 1e-9)), f
    assert np.all(f <= fraction + tol), f


@pytest.mark.parametrize("family", masks.FAMILIES)
def test_seeded(family):
    a = masks.draw(family, LAT, LON, 0.2, np.random.default_rng(3), n=2)
    b = masks.draw(family, LAT, LON, 0.2, np.random.default_rng(3), n=2)
    c = masks.draw(family, LAT, LON, 0.2, np.random.default_rng(4), n=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_area_fraction_counts_area_not_cells():
    m = np.zeros((90, 180), bool)
    m[-5:] = True                                  # the five rows nearest the north pole
    assert m.mean() == pytest.approx(5 / 90)
    assert masks.area_fraction(m, LAT) == pytest.approx((1 - np.sin(np.deg2rad(80))) / 2, rel=1e-9)


def test_families_look_like_their_names():
    rng = np.random.default_rng(0)
    static = masks.draw("static", LAT, LON, 0.3, rng, n=3)
    assert np.array_equal(static[0], static[1]) and np.array_equal(static[0], static[2])
    # static masks are smooth: few boundaries between neighbours; scattered ones have many
    edges = lambda m: np.mean(m[..., 1:] != m[..., :-1])  # noqa: E731
    scat = masks.draw("scattered", LAT, LON, 0.3, rng, n=3)
    assert edges(static) < 0.05 < 0.3 < edges(scat)


def test_boxes_have_many_sizes():
    m = masks.boxes(LAT, LON, 0.3, np.random.default_rng(2), n=1, min_size=2)[0]
    from scipy.ndimage import label

    lab, k = label(m)
    sizes = np.bincount(lab.ravel())[1:]
    assert k >= 5 and sizes.max() >= 20 * sizes.min()


def test_swath_is_a_great_circle_band():
    x = masks.unit_vectors(LAT, LON)
    sw = masks.swaths(LAT, LON, 0.02, np.random.default_rng(5), n=1, width_deg=(6, 6), arc_deg=(360, 360))[0]
    # all cells of one full band (width 6 degrees) lie close to a plane through the centre: fit that plane
    pts = x[sw]
    normal = np.linalg.svd(pts - 0.0, full_matrices=False)[2][-1]
    assert np.max(np.abs(np.degrees(np.arcsin(pts @ normal)))) <= 3.5   # the fitted plane is close to the true one
    # and the band is complete: cells within 2 degrees of that plane are all in it
    assert sw[np.abs(np.degrees(np.arcsin(x @ normal))) < 2].all()


def test_threshold_mask_hits_the_fraction_from_any_field():
    field = np.cos(np.deg2rad(LAT))[:, None] * np.ones(180)   # cells nearest the equator first
    m = masks.threshold_mask(field, LAT, 0.5)
    f = masks.area_fraction(m, LAT)
    assert 0.5 - 1e-9 <= f <= 0.5 + 0.02
    assert np.all(np.abs(LAT[m.any(1)]) < 31)


def test_no_observed_cell_is_an_error():
    m = np.zeros((3, 4, 5), bool)
    m[1] = True
    with pytest.raises(ValueError, match=r"no observed cell in field \(1,\)"):
        masks.check_observed(m)
    with pytest.raises(ValueError, match="fraction"):
        masks.draw("boxes", LAT, LON, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown mask family"):
        masks.draw("clouds", LAT, LON, 0.2, np.random.default_rng(0))


def test_distance_to_observed():
    m = np.zeros((90, 180), bool)
    m[40:50, 80:100] = True
    d = masks.distance_to_observed(m, LAT, LON)
    assert np.all(d[~m] == 0) and np.all(d[m] > 0)
    # the centre of the box is farther than its edge, and the edge is one cell (2 degrees) away
    assert d[45, 90] > d[40, 90]
    assert d[40, 90] == pytest.approx(masks.EARTH_RADIUS_KM * 2 * np.sin(np.deg2rad(2.0) / 2), rel=1e-6)
