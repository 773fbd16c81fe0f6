"""Regular latitude-longitude grids: cell-area weights, area-weighted coarsening, interpolation.

Arrays are (..., lat, lon) with latitude increasing. Longitude is periodic when the grid spans
the globe (`is_global_longitude`) and bounded otherwise (a regional domain). Interpolation is
written as two small matrices, `x_fine = W_lat @ x_coarse @ W_lon^T`, so it is exact about
coordinates, periodic in longitude only on a global grid, and runs unchanged on numpy arrays or
torch tensors.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import xarray as xr


def cell_bounds(lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper latitude edges of each cell: half-way to the neighbours, clipped to [-90, 90]."""
    lat = np.asarray(lat, dtype=np.float64)
    if lat.size == 1:
        return np.array([-90.0]), np.array([90.0])
    mid = 0.5 * (lat[1:] + lat[:-1])
    lower = np.concatenate([[lat[0] - (mid[0] - lat[0])], mid])
    upper = np.concatenate([mid, [lat[-1] + (lat[-1] - mid[-1])]])
    return np.clip(lower, -90, 90), np.clip(upper, -90, 90)


def lat_weights(lat: np.ndarray) -> np.ndarray:
    """Cell-area weights w_i = sin(phi_i^+) - sin(phi_i^-), normalised to mean 1 (WeatherBench 2)."""
    lower, upper = cell_bounds(lat)
    w = np.sin(np.deg2rad(upper)) - np.sin(np.deg2rad(lower))
    return w / w.mean()


def is_global_longitude(lon: np.ndarray) -> bool:
    """True when the longitudes close the circle: uniform spacing d (to 1 %) and n d = 360 to
    within half a cell, so the cell east of the last one is the first one.

    A regional domain (e.g. 235..279 E) is not periodic; its east and west edges never touch."""
    lon = np.asarray(lon, dtype=np.float64)
    if lon.size < 2:
        return False
    step = np.diff(lon)
    d = (lon[-1] - lon[0]) / (lon.size - 1)
    if d <= 0 or np.abs(step - d).max() > 0.01 * d:
        return False
    return bool(abs(lon.size * d - 360.0) < 0.5 * d)


def check_factor(n_lat: int, n_lon: int, factor: int) -> None:
    """Raise a `ValueError` naming the coordinate when `factor` does not divide the grid."""
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    for name, n in (("latitude", n_lat), ("longitude", n_lon)):
        if n % factor:
            raise ValueError(
                f"factor {factor} does not divide the {name} size {n} "
                f"(trim the grid, e.g. drop a pole row, or choose a factor of {n})"
            )


def trim_to_factor(ds: xr.Dataset, factor: int) -> tuple[xr.Dataset, str | None]:
    """Drop one pole row from a pole-inclusive grid (e.g. 181 = 180 + 1 rows) so `factor` divides it.

    Returns the dataset and a message saying what was dropped (None when nothing was).
    Any other mismatch is left for `check_factor` to report.
    """
    n = ds.sizes["latitude"]
    lat = ds["latitude"].values
    if n % factor == 1 and np.isclose(abs(lat[-1]), 90.0):
        return ds.isel(latitude=slice(0, n - 1)), f"dropped the pole row latitude={lat[-1]:g} so {factor} divides {n}"
    return ds, None


def coarsen(x, factor: int, lat: np.ndarray):
    """Area-weighted block mean: X_IJ = sum_{i in I, j in J} w_i x_ij / sum_{i in I, j in J} w_i.

    `x` is a numpy array or torch tensor (..., lat, lon). Latitude blocks are weighted by cell
    area, longitude blocks are plain means (equal areas along a latitude circle).
    """
    n_lat, n_lon = x.shape[-2], x.shape[-1]
    check_factor(n_lat, n_lon, factor)
    w = lat_weights(lat).reshape(n_lat // factor, factor)
    w = w / w.sum(axis=1, keepdims=True)
    shape = (*x.shape[:-2], n_lat // factor, factor, n_lon // factor, factor)
    if isinstance(x, torch.Tensor):
        wt = torch.as_tensor(w, dtype=x.dtype, device=x.device)
        return torch.einsum("...iajb,ia->...ij", x.reshape(shape), wt) / factor
    return np.einsum("...iajb,ia->...ij", np.asarray(x).reshape(shape), w.astype(np.asarray(x).dtype)) / factor


def block_upper_bound(coarse: np.ndarray, factor: int, lat: np.ndarray) -> np.ndarray:
    """Largest value a non-negative fine cell can take given its block mean X_IJ (fine grid).

    From X_IJ = sum w_i x_ij / (f sum_{i in I} w_i) and x >= 0:  x_ij <= X_IJ f sum_{i' in I} w_i' / w_i.
    """
    w = lat_weights(lat).reshape(-1, factor)
    ratio = (factor * w.sum(1, keepdims=True) / w).reshape(-1)
    return repeat_blocks(np.asarray(coarse), factor) * ratio[:, None]


def repeat_blocks(coarse: np.ndarray, factor: int) -> np.ndarray:
    """Each coarse value (..., h, w) copied to the f x f fine cells of its block (..., f h, f w)."""
    return np.repeat(np.repeat(coarse, factor, axis=-2), factor, axis=-1)


def coarsening_matrices(lat: np.ndarray, n_lon: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(A (h, H), L (w, W)) with C(x) = A x L^T, the area-weighted block mean of `coarsen`:
    A_Ii = w_i / sum_{i' in I} w_i' for i in block I, L_Jj = 1 / f for j in block J."""
    check_factor(len(lat), n_lon, factor)
    w = lat_weights(lat).reshape(-1, factor)
    w = w / w.sum(axis=1, keepdims=True)
    a = np.zeros((len(lat) // factor, len(lat)))
    for i, row in enumerate(w):
        a[i, i * factor:(i + 1) * factor] = row
    return a, np.kron(np.eye(n_lon // factor), np.full((1, factor), 1.0 / factor))


def block_mean_correction(lat: np.ndarray, lon: np.ndarray, factor: int,
                          periodic: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M_lat (H, h), M_lon (W, w)) with C(M_lat D M_lon^T) = D for any coarse D: the bicubic field B(E)
    whose block means are D. With C(x) = A x L^T and B(E) = W_lat E W_lon^T, E solves the small
    separable system (A W_lat) E (L W_lon)^T = D, so M_lat = W_lat (A W_lat)^-1, M_lon = W_lon (L W_lon)^-1.
    `periodic` (default: `is_global_longitude(lon)`) makes B wrap in longitude."""
    periodic = is_global_longitude(lon) if periodic is None else periodic
    lat_c, lon_c = coarse_coords(lat, lon, factor)
    w_lat = interp_matrix(lat_c, lat, "bicubic")
    w_lon = interp_matrix(lon_c, lon, "bicubic", periodic=360.0 if periodic else None)
    a, l_ = coarsening_matrices(lat, len(lon), factor)
    return w_lat @ np.linalg.inv(a @ w_lat), w_lon @ np.linalg.inv(l_ @ w_lon)


def match_block_means(fine: np.ndarray, coarse: np.ndarray, factor: int, lat: np.ndarray,
                      correction: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """x + B(E) for fine fields x (..., H, W), so that C(x + B(E)) = X (coarse (..., h, w)) exactly.

    `correction` is `block_mean_correction` of the grid (computed once per grid). B is bicubic
    interpolation, so the correction is smooth and adds little power at scales below the coarse
    cells. Blocks where X is NaN impose no change (their deficit is taken as 0).
    """
    m_lat, m_lon = correction
    deficit = np.nan_to_num(coarse - coarsen(fine, factor, lat), nan=0.0)
    return fine + m_lat @ deficit @ m_lon.T


def scale_to_block_means(fine: np.ndarray, coarse: np.ndarray, factor: int, lat: np.ndarray) -> np.ndarray:
    """Non-negative fine fields (..., H, W) rescaled per block so that C(x') = X (coarse >= 0):
    x' = x X_IJ / C(x)_IJ; a block with C(x) = 0 and X > 0 takes X in every cell. Zeros stay
    zero where the block has any mass, and blocks where X is NaN are left as they are."""
    fine = np.maximum(fine, 0.0)
    have = coarsen(fine, factor, lat)
    target = np.where(np.isnan(coarse), have, np.maximum(coarse, 0.0))
    ratio = np.divide(target, have, out=np.zeros_like(have, dtype=np.float64), where=have > 0)
    return np.where(repeat_blocks(have, factor) > 0, fine * repeat_blocks(ratio, factor), repeat_blocks(target, factor))


def coarse_coords(lat: np.ndarray, lon: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of the coarse cells: mean of the fine cell centres in each block."""
    check_factor(len(lat), len(lon), factor)
    return (np.asarray(lat, float).reshape(-1, factor).mean(1), np.asarray(lon, float).reshape(-1, factor).mean(1))


def coarsen_dataset(ds: xr.Dataset, factor: int) -> xr.Dataset:
    """Lazy area-weighted coarsening of every variable of a (time, latitude, longitude) dataset."""
    check_factor(ds.sizes["latitude"], ds.sizes["longitude"], factor)
    w = xr.DataArray(lat_weights(ds["latitude"].values), dims="latitude", coords={"latitude": ds["latitude"]})
    num = (ds * w).coarsen(latitude=factor, longitude=factor).sum()
    den = (w.coarsen(latitude=factor).sum()) * factor
    out = num / den
    lat_c, lon_c = coarse_coords(ds["latitude"].values, ds["longitude"].values, factor)
    out = out.assign_coords(latitude=lat_c, longitude=lon_c)
    for name in ds.data_vars:
        out[name].attrs = dict(ds[name].attrs)
    for name in ("latitude", "longitude"):
        out[name].attrs = dict(ds[name].attrs)
    out.attrs = dict(ds.attrs)
    return out


def _cubic_kernel(s: np.ndarray, a: float = -0.5) -> np.ndarray:
    s = np.abs(s)
    return np.where(
        s <= 1, (a + 2) * s**3 - (a + 3) * s**2 + 1, np.where(s < 2, a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a, 0.0)
    )


def interp_matrix(src: np.ndarray, dst: np.ndarray, method: str, periodic: float | None = None) -> np.ndarray:
    """Matrix W (len(dst), len(src)) with x(dst) = W x(src) for a uniform source axis.

    `method` is "bilinear" (linear per axis) or "bicubic" (Keys cubic convolution, a = -1/2).
    `periodic` is the period (360 for longitude) or None, in which case the edge value is repeated.
    """
    if method not in ("bilinear", "bicubic"):
        raise ValueError(f"method must be 'bilinear' or 'bicubic', got {method!r}")
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    n = src.size
    step = (src[-1] - src[0]) / (n - 1) if n > 1 else 1.0
    pos = (dst - src[0]) / step
    if periodic is not None:
        pos = np.mod(pos, periodic / step)
    base = np.floor(pos).astype(int)
    frac = pos - base
    offsets = np.array([0, 1]) if method == "bilinear" else np.array([-1, 0, 1, 2])
    idx = base[:, None] + offsets[None, :]
    dist = frac[:, None] - offsets[None, :]
    weight = np.clip(1 - np.abs(dist), 0, None) if method == "bilinear" else _cubic_kernel(dist)
    idx = np.mod(idx, n) if periodic is not None else np.clip(idx, 0, n - 1)
    mat = np.zeros((dst.size, n))
    np.add.at(mat, (np.repeat(np.arange(dst.size), idx.shape[1]), idx.ravel()), weight.ravel())
    return mat


def interpolate(x, lat_src, lon_src, lat_dst, lon_dst, method: str = "bicubic", periodic: bool = True):
    """Interpolate (..., lat_src, lon_src) to (..., lat_dst, lon_dst); periodic in longitude when
    `periodic` (a global grid), else the edge columns are repeated beyond the domain."""
    w_lat = interp_matrix(lat_src, lat_dst, method)
    w_lon = interp_matrix(lon_src, lon_dst, method, periodic=360.0 if periodic else None)
    if isinstance(x, torch.Tensor):
        a = torch.as_tensor(w_lat, dtype=x.dtype, device=x.device)
        b = torch.as_tensor(w_lon, dtype=x.dtype, device=x.device)
        return torch.matmul(torch.matmul(a, x), b.T)
    x = np.asarray(x)
    return np.matmul(np.matmul(w_lat.astype(x.dtype), x), w_lon.T.astype(x.dtype))


def coarsen_observed(fields: np.ndarray, lat: np.ndarray, factor: int, periodic: bool = True,
                     fill: bool = True) -> np.ndarray:
    """NaN-aware area-weighted block mean of (..., H, W); all-missing blocks are filled by neighbours
    (`fill`) or left NaN."""
    valid = np.isfinite(fields)
    num = coarsen(np.where(valid, fields, 0.0), factor, lat)
    den = coarsen(valid.astype(fields.dtype), factor, lat)
    with np.errstate(invalid="ignore", divide="ignore"):
        coarse = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return fill_by_neighbours(coarse, periodic=periodic) if fill else coarse


def fill_by_neighbours(x: np.ndarray, max_iter: int | None = None, periodic: bool = True) -> np.ndarray:
    """Replace NaN cells by the mean of their finite 4-neighbours until none is left; longitude
    wraps round when `periodic` (a global grid), else the edge columns have one neighbour."""
    x = x.copy()
    h, w = x.shape[-2:]
    for _ in range(max_iter or (h + w)):
        nan = np.isnan(x)
        if not nan.any():
            return x
        pad = np.concatenate([x[..., :1, :] * np.nan, x, x[..., -1:, :] * np.nan], axis=-2)
        west, east = np.roll(x, 1, -1), np.roll(x, -1, -1)
        if not periodic:
            west[..., 0], east[..., -1] = np.nan, np.nan
        nbrs = np.stack([pad[..., :-2, :], pad[..., 2:, :], west, east])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods stay NaN this round
            fill = np.nanmean(nbrs, axis=0)
        x = np.where(nan, fill, x)
    if np.isnan(x).any():
        raise ValueError("cannot fill gaps: a whole field is missing")
    return x
