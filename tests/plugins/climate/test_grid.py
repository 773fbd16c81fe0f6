"""Cell-area weights, area-weighted coarsening and periodic interpolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from sciffusion.plugins.climate.grid import (
    block_mean_correction,
    block_upper_bound,
    check_factor,
    coarse_coords,
    coarsen,
    coarsen_dataset,
    interp_matrix,
    interpolate,
    is_global_longitude,
    lat_weights,
    match_block_means,
    repeat_blocks,
    scale_to_block_means,
    trim_to_factor,
)


def test_lat_weights_mean_one_and_cell_areas():
    lat = np.arange(-89.5, 90, 1.0)  # cell-centred 1 degree grid: bounds +-0.5
    w = lat_weights(lat)
    assert w.mean() == pytest.approx(1.0)
    ratio = np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).mean()
    np.testing.assert_allclose(w, ratio, rtol=1e-4)  # sin difference ~ cos for thin cells
    # pole-inclusive grid: the pole cell is half a cell wide, [89.5, 90]
    lat2 = np.arange(-90, 90.5, 1.0)
    w2 = lat_weights(lat2)
    raw = np.sin(np.deg2rad(90)) - np.sin(np.deg2rad(89.5))
    assert w2[-1] / w2[90] == pytest.approx(raw / (np.sin(np.deg2rad(0.5)) - np.sin(np.deg2rad(-0.5))))


def test_coarsen_conserves_area_integral_and_constants():
    rng = np.random.default_rng(0)
    lat = np.linspace(-87.5, 87.5, 36)
    x = rng.normal(size=(3, 36, 72))
    xc = coarsen(x, 4, lat)
    lat_c, _ = coarse_coords(lat, np.arange(72) * 5.0, 4)
    w, wc = lat_weights(lat), lat_weights(lat_c)
    # area integral: sum_i w_i x_ij / n_fine == sum_I W_I X_IJ / n_coarse (block areas add up)
    fine_int = (w[:, None] * x).mean(axis=(-2, -1))
    blocks = w.reshape(-1, 4).sum(1)
    coarse_int = (blocks[:, None] * xc).sum(axis=(-2, -1)) / (36 * 72 / 4)
    np.testing.assert_allclose(fine_int, coarse_int, rtol=1e-10)
    assert wc.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(coarsen(np.full((36, 72), 3.0), 4, lat), 3.0)
    t = coarsen(torch.from_numpy(x), 4, lat)
    np.testing.assert_allclose(t.numpy(), xc, rtol=1e-12)


def test_coarsen_dataset_matches_array_and_keeps_attrs():
    lat = np.linspace(-87.5, 87.5, 36)
    lon = np.arange(72) * 5.0
    x = np.random.default_rng(1).normal(size=(2, 36, 72))
    ds = xr.Dataset({"t2m": (("time", "latitude", "longitude"), x, {"units": "K"})},
                    coords={"time": [0, 1], "latitude": lat, "longitude": lon}).chunk({"time": 1})
    out = coarsen_dataset(ds, 4)
    np.testing.assert_allclose(out["t2m"].values, coarsen(x, 4, lat))
    assert out["t2m"].attrs["units"] == "K"
    np.testing.assert_allclose(out["longitude"].values, lon.reshape(-1, 4).mean(1))


def test_factor_must_divide_the_grid():
    with pytest.raises(ValueError, match="factor 4 does not divide the latitude size 181"):
        check_factor(181, 360, 4)
    with pytest.raises(ValueError, match="factor 4 does not divide the longitude size 350"):
        check_factor(180, 350, 4)
    with pytest.raises(ValueError, match="positive integer"):
        check_factor(180, 360, 0)


def test_trim_drops_one_pole_row_only_when_that_fixes_it():
    lat = np.arange(-90, 90.5, 1.0)
    ds = xr.Dataset(coords={"latitude": lat, "longitude": np.arange(360.0)})
    out, msg = trim_to_factor(ds, 4)
    assert out.sizes["latitude"] == 180 and "latitude=90" in msg
    same, msg = trim_to_factor(ds.isel(latitude=slice(0, 179)), 4)
    assert msg is None and same.sizes["latitude"] == 179


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_interpolation_reproduces_constants_and_is_periodic(method):
    lat_c, lon_c = np.linspace(-80, 80, 9), np.arange(0, 360, 20.0)
    lat_f, lon_f = np.linspace(-85, 85, 35), np.arange(0, 360, 5.0)
    w = interp_matrix(lon_c, lon_f, method, periodic=360.0)
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(interpolate(np.full((9, 18), 2.5), lat_c, lon_c, lat_f, lon_f, method), 2.5)
    # a longitude wave is interpolated smoothly across the date line
    wave = np.cos(np.deg2rad(lon_c))[None].repeat(9, 0)
    out = interpolate(wave, lat_c, lon_c, lat_f, lon_f, method)
    err = np.abs(out - np.cos(np.deg2rad(lon_f))[None]).max()
    assert err < (0.07 if method == "bilinear" else 0.01)
    rolled = interpolate(np.roll(wave, 3, -1), lat_c, lon_c, lat_f, lon_f, method)
    np.testing.assert_allclose(rolled, np.roll(out, 12, -1), atol=1e-12)


def test_bicubic_exact_for_quadratics_inside_and_on_nodes():
    src = np.arange(10.0)
    dst = np.linspace(1, 8, 29)
    w = interp_matrix(src, dst, "bicubic")
    np.testing.assert_allclose(w @ (src**2), dst**2, atol=1e-9)
    np.testing.assert_allclose(interp_matrix(src, src, "bicubic"), np.eye(10), atol=1e-12)
    with pytest.raises(ValueError, match="method must be"):
        interp_matrix(src, dst, "nearest")


def test_block_upper_bound_is_reached_when_one_cell_holds_the_block():
    lat = np.linspace(-87.5, 87.5, 36)
    x = np.zeros((36, 72))
    x[5, 9] = 7.0  # all of block (1, 2)'s content in one cell
    bound = block_upper_bound(coarsen(x, 4, lat), 4, lat)
    assert bound[5, 9] == pytest.approx(7.0)
    rng = np.random.default_rng(0)
    y = rng.gamma(0.5, 1.0, (36, 72))
    assert np.all(y <= block_upper_bound(coarsen(y, 4, lat), 4, lat) + 1e-12)


def test_match_block_means_hits_the_coarse_field_with_a_smooth_correction():
    lat, lon = np.linspace(-87.5, 87.5, 36), np.arange(0.0, 360.0, 5.0)
    rng = np.random.default_rng(1)
    x, target = rng.normal(size=(3, 2, 36, 72)), rng.normal(size=(3, 2, 9, 18))
    correction = block_mean_correction(lat, lon, 4)
    y = match_block_means(x, target, 4, lat, correction)
    np.testing.assert_allclose(coarsen(y, 4, lat), target, atol=1e-10)
    np.testing.assert_allclose(match_block_means(y, target, 4, lat, correction), y, atol=1e-10)  # a projection
    # the correction is bicubic of a coarse field: little power beyond the coarse grid's zonal
    # wavenumbers (9 here), a quarter of that of the per-block constant that would also do
    def fine_share(d):
        power = np.abs(np.fft.rfft(d, axis=-1)) ** 2
        return power[..., 10:].sum() / power.sum()

    blocky = repeat_blocks(target - coarsen(x, 4, lat), 4)
    assert fine_share(y - x) < 0.06 and fine_share(y - x) < 0.3 * fine_share(blocky)
    # a block whose coarse value is missing asks for no change there
    gap = target.copy()
    gap[0, 0] = np.nan
    np.testing.assert_allclose(match_block_means(x, gap, 4, lat, correction)[0, 0], x[0, 0], atol=1e-12)


def test_scale_to_block_means_conserves_each_block_and_keeps_dry_cells_dry():
    lat = np.linspace(-87.5, 87.5, 36)
    rng = np.random.default_rng(2)
    x = rng.gamma(0.3, 1.0, (2, 36, 72)) * (rng.random((2, 36, 72)) < 0.5)
    target = rng.gamma(0.5, 1.0, (2, 9, 18))
    x[0, :4, :4] = 0.0  # a dry member block under a wet coarse cell takes the coarse value everywhere
    y = scale_to_block_means(x, target, 4, lat)
    np.testing.assert_allclose(coarsen(y, 4, lat), target, rtol=1e-12)
    assert y.min() >= 0 and np.all(y[1][x[1] == 0] == 0)
    np.testing.assert_allclose(y[0, :4, :4], target[0, 0, 0])
    ratio = (y / np.where(x > 0, x, np.nan))[1]  # one factor per block
    np.testing.assert_allclose(np.nanmax(ratio[:4, :4]), np.nanmin(ratio[:4, :4]))
    np.testing.assert_array_equal(repeat_blocks(np.arange(4.0).reshape(2, 2), 2),
                                  [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


def test_longitude_is_periodic_only_when_the_grid_spans_the_globe():
    assert is_global_longitude(np.arange(360.0)) and is_global_longitude(np.arange(-180, 180, 2.5))
    assert is_global_longitude(np.arange(0, 360, 1.25) + 0.625)
    assert not is_global_longitude(235 + 1.5 * np.arange(21))            # a regional box
    assert not is_global_longitude(np.arange(359.0))                     # one cell short of the circle
    assert not is_global_longitude(np.r_[np.arange(0, 180.0), np.arange(181, 361.0)])  # uneven spacing


def test_regional_interpolation_and_block_mean_correction_do_not_wrap():
    lat, lon = 20 + np.arange(15.0), 235 + 1.5 * np.arange(21)
    lat_c, lon_c = coarse_coords(lat, lon, 3)
    w = interp_matrix(lon_c, lon, "bicubic")
    assert np.all(w[0, -2:] == 0) and np.all(w[-1, :2] == 0)               # the west edge sees no east cell
    ramp = np.broadcast_to(lon_c, (5, 7))
    np.testing.assert_allclose(interpolate(ramp, lat_c, lon_c, lat, lon, periodic=False)[:, 4:-4],
                               np.broadcast_to(lon, (15, 21))[:, 4:-4], atol=1e-9)  # linear fields are kept inside
    m_lat, m_lon = block_mean_correction(lat, lon, 3)                     # non-periodic, detected
    d = np.random.default_rng(0).normal(size=(5, 7))
    np.testing.assert_allclose(coarsen(m_lat @ d @ m_lon.T, 3, lat), d, atol=1e-10)
    assert not np.allclose(block_mean_correction(lat, lon, 3, periodic=True)[1], m_lon)
