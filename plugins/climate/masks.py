"""Random masks of missing cells on a regular latitude-longitude grid, for gap-filling training and scoring.

A mask is a boolean array (n, H, W), True where a cell is missing. Every family is drawn from a
seeded `numpy.random.Generator` and aims at a target missing fraction measured by cell area,
f(M) = sum_ij w_i M_ij / sum_ij w_i with w_i the cell-area weights of `grid.lat_weights`, because
the scores are area-weighted too. Longitude is periodic.

- "boxes": rectangles whose height and width (cells) are log-uniform between `min_size` and a
  quarter of the grid, added until the fraction is reached (many sizes, from station-sized holes
  to regional outages);
- "swaths": bands along great circles of random orientation (the ground track of a polar orbiter
  is close to one), of random angular width, cut to a random arc length, added until the fraction
  is reached;
- "scattered": every cell missing independently with probability `fraction` (missing stations,
  failed retrievals);
- "static": one smooth random field on the sphere, ``sum_k a_k exp(-|x - c_k|^2 / (2 l^2))`` over
  random centres c_k (x the unit vector of a cell), thresholded at its area-weighted quantile:
  a land/sea-like pattern of continents and islands, the same for all n fields.

`distance_to_observed` gives each cell's distance to the nearest observed cell (for spread-against-
distance curves). `threshold_mask` turns any field (for instance a real land-sea mask) into a mask of a given
fraction. `check_observed` is the one rule every mask must pass: each field keeps an observed cell.
"""

from __future__ import annotations

import numpy as np

from sciffusion.plugins.climate.grid import lat_weights

FAMILIES = ("boxes", "swaths", "scattered", "static")
EARTH_RADIUS_KM = 6371.0


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit vectors x = (cos phi cos lambda, cos phi sin lambda, sin phi) of the cell centres."""
    phi, lam = np.meshgrid(np.deg2rad(np.asarray(lat, float)), np.deg2rad(np.asarray(lon, float)), indexing="ij")
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1)


def area_fraction(mask: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Area-weighted fraction of True cells of each field of (..., H, W): sum w_i M_ij / sum w_i."""
    w = lat_weights(lat)[:, None]
    return (mask * w).sum(axis=(-2, -1)) / (w.sum() * mask.shape[-1])


def distance_to_observed(mask: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Chordal distance ``R |x - y|`` (km) from each cell of a (H, W) mask to the nearest observed cell (0 there)."""
    from scipy.spatial import cKDTree

    check_observed(mask)
    x = unit_vectors(lat, lon).reshape(-1, 3)
    out = np.zeros(mask.size)
    miss = mask.ravel()
    if miss.any():
        out[miss] = EARTH_RADIUS_KM * cKDTree(x[~miss]).query(x[miss], k=1)[0]
    return out.reshape(mask.shape)


def check_observed(mask: np.ndarray) -> None:
    """Raise `ValueError` naming the first field of (..., H, W) whose cells are all missing."""
    full = mask.all(axis=(-2, -1))
    if np.any(full):
        idx = tuple(int(i) for i in np.argwhere(full)[0])
        raise ValueError(f"the mask leaves no observed cell in field {idx}: nothing to fill from")


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the missing fraction must be in (0, 1), got {fraction}")


def boxes(lat: np.ndarray, lon: np.ndarray, fraction: float, rng: np.random.Generator, n: int = 1,
          min_size: int = 2, max_size: int | None = None) -> np.ndarray:
    """Boxes with log-uniform heights and widths in [min_size, max_size] cells (default: a quarter of
    the smaller side) until each field's missing area fraction reaches `fraction`."""
    _check_fraction(fraction)
    h, w = len(lat), len(lon)
    hi = max(min_size, max_size or min(h, w) // 4)
    wts = lat_weights(lat)
    out = np.zeros((n, h, w), bool)
    for i in range(n):
        covered = 0.0
        while covered < fraction:
            bh, bw = np.exp(rng.uniform(np.log(min_size), np.log(hi + 1), size=2)).astype(int)
            bh, bw = min(bh, h), min(bw, w)
            r, c = rng.integers(0, h - bh + 1), rng.integers(0, w)
            out[i, r : r + bh, np.arange(c, c + bw) % w] = True
            covered = float((out[i] * wts[:, None]).sum() / (wts.sum() * w))
    return out


def swaths(lat: np.ndarray, lon: np.ndarray, fraction: float, rng: np.random.Generator, n: int = 1,
           width_deg: tuple[float, float] = (2.0, 10.0), arc_deg: tuple[float, float] = (60.0, 360.0)) -> np.ndarray:
    """Great-circle bands: a random pole p (the band is ``|asin(<p, x>)| < width / 2``), a random
    angular width in `width_deg`, cut to an arc of random length in `arc_deg` around a random
    point of the circle; added until each field's missing area fraction reaches `fraction`."""
    _check_fraction(fraction)
    x = unit_vectors(lat, lon)
    wts = lat_weights(lat)
    out = np.zeros((n, len(lat), len(lon)), bool)
    for i in range(n):
        covered = 0.0
        while covered < fraction:
            p = rng.standard_normal(3)
            p /= np.linalg.norm(p)
            a = rng.standard_normal(3)
            a -= (a @ p) * p
            a /= np.linalg.norm(a)              # a point on the great circle; b completes the frame
            b = np.cross(p, a)
            half = np.deg2rad(rng.uniform(*width_deg)) / 2
            arc = np.deg2rad(rng.uniform(*arc_deg))
            along = np.arctan2(x @ b, x @ a)   # angle along the circle from a, in (-pi, pi]
            band = (np.abs(np.arcsin(np.clip(x @ p, -1, 1))) < half) & (np.abs(along) <= arc / 2)
            out[i] |= band
            covered = float((out[i] * wts[:, None]).sum() / (wts.sum() * len(lon)))
    return out


def scattered(lat: np.ndarray, lon: np.ndarray, fraction: float, rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """Each cell missing independently with probability `fraction` (expected area fraction = `fraction`)."""
    _check_fraction(fraction)
    return rng.random((n, len(lat), len(lon))) < fraction


def threshold_mask(field: np.ndarray, lat: np.ndarray, fraction: float) -> np.ndarray:
    """Cells of a (H, W) field above its area-weighted (1 - fraction) quantile: the mask (H, W) whose
    area fraction is the smallest one >= `fraction` that a threshold on `field` can give."""
    _check_fraction(fraction)
    w = np.broadcast_to(lat_weights(lat)[:, None], field.shape).ravel()
    order = np.argsort(-field.ravel(), kind="stable")
    cum = np.cumsum(w[order]) / w.sum()
    k = int(np.searchsorted(cum, fraction - 1e-12)) + 1   # cells needed to reach the fraction
    out = np.zeros(field.size, bool)
    out[order[:k]] = True
    return out.reshape(field.shape)


def smooth_field(lat: np.ndarray, lon: np.ndarray, rng: np.random.Generator, centres: int = 60,
                 length_deg: float = 15.0) -> np.ndarray:
    """``sum_k a_k exp(-|x - c_k|^2 / (2 l^2))``, a_k ~ N(0, 1), c_k uniform on the sphere, l in radians
    (chordal distance): an isotropic smooth random field (H, W)."""
    c = rng.standard_normal((centres, 3))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    a = rng.standard_normal(centres)
    d2 = ((unit_vectors(lat, lon)[..., None, :] - c) ** 2).sum(-1)
    return np.exp(-d2 / (2 * np.deg2rad(length_deg) ** 2)) @ a


def static(lat: np.ndarray, lon: np.ndarray, fraction: float, rng: np.random.Generator, n: int = 1,
           length_deg: float = 15.0) -> np.ndarray:
    """One land/sea-like mask (a thresholded `smooth_field`), repeated for the n fields."""
    mask = threshold_mask(smooth_field(lat, lon, rng, length_deg=length_deg), lat, fraction)
    return np.broadcast_to(mask, (n, *mask.shape)).copy()


def draw(family: str, lat: np.ndarray, lon: np.ndarray, fraction: float, rng: np.random.Generator,
         n: int = 1, **kwargs) -> np.ndarray:
    """Masks (n, H, W) of one of `FAMILIES`; raises if a field would keep no observed cell."""
    makers = {"boxes": boxes, "swaths": swaths, "scattered": scattered, "static": static}
    if family not in makers:
        raise ValueError(f"unknown mask family {family!r}; choose one of {list(FAMILIES)}")
    mask = makers[family](lat, lon, fraction, rng, n=n, **kwargs)
    check_observed(mask)
    return mask
