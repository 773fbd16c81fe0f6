"""Optimal interpolation (simple kriging, a Gaussian-process regression) for filling gaps in fields.

Each variable v is modelled per cell as x = m + s z, with m and s the per-cell mean and standard
deviation over the training times (s = 1 when `standardise=False`), and z a zero-mean stationary
isotropic Gaussian field with covariance::

    Cov(z(x), z(y)) = c * rho(d(x, y) / r) + c2 * rho(d(x, y) / r2) + g * [x = y],

d the chordal distance ``R |x - y|`` between the unit vectors of the cells (R = 6371 km; any covariance
valid in R^3 stays valid on the sphere with it, which is not true of every model with the
great-circle distance), c the partial sill, r the range, g the nugget (variance not shared with
any other cell), and c2, r2 > r an optional second, longer structure (`structures=2`). The correlation rho is exponential, exp(-h), or Matern 3/2, (1 + sqrt3 h) e^{-sqrt3 h},
or Matern 5/2, (1 + sqrt5 h + 5h^2/3) e^{-sqrt5 h}. c, r and g are fitted per variable by weighted least
squares (weights N_h / gamma(h)^2, Cressie 1985) to the empirical semivariogram of the training
anomalies, gamma(h) = 1/2 E[(z(x) - z(y))^2 | d(x, y) ~ h].

Prediction at a missing cell 0 from its n nearest observed cells (same time), with K the n x n
covariance among them (nugget on the diagonal) and k the covariances c rho(d_0j / r) to them:

    lambda = K^{-1} k,   z_hat = lambda . z_obs,   sigma^2 = c + c2 + g - lambda . k.

This is the Gaussian conditional mean and variance given those n cells (exact for n = all observed
cells); observed cells are returned unchanged with variance 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial import cKDTree

from sciffusion.plugins.climate.grid import lat_weights
from sciffusion.plugins.climate.masks import EARTH_RADIUS_KM, check_observed, unit_vectors

MODELS = ("exponential", "matern32", "matern52")


def correlation(model: str, h: np.ndarray) -> np.ndarray:
    """rho(h) for h = d / r >= 0: exponential, Matern 3/2 or Matern 5/2 (rho(0) = 1)."""
    if model == "exponential":
        return np.exp(-h)
    if model == "matern32":
        a = np.sqrt(3.0) * h
        return (1 + a) * np.exp(-a)
    if model == "matern52":
        a = np.sqrt(5.0) * h
        return (1 + a + a * a / 3) * np.exp(-a)
    raise ValueError(f"unknown covariance model {model!r}; choose one of {list(MODELS)}")


@dataclass(frozen=True)
class Covariance:
    """c rho(d / r) + c2 rho(d / r2) + g [d = 0]: sill c, range r (km), nugget g, and an optional
    second, longer structure (c2, r2 > r; c2 = 0 without one)."""

    model: str
    sill: float
    range_km: float
    nugget: float
    sill2: float = 0.0
    range2_km: float = 1.0

    @property
    def total(self) -> float:
        """The variance of one cell, c + c2 + g."""
        return self.sill + self.sill2 + self.nugget

    def __call__(self, d_km: np.ndarray) -> np.ndarray:
        """The shared part c rho(d / r) + c2 rho(d / r2) (the nugget is added on the diagonal by the caller)."""
        d = np.asarray(d_km)
        out = self.sill * correlation(self.model, d / self.range_km)
        return out + self.sill2 * correlation(self.model, d / self.range2_km) if self.sill2 > 0 else out

    def semivariogram(self, d_km: np.ndarray) -> np.ndarray:
        """gamma(d) = c + c2 + g - C(d) for d > 0, and 0 at d = 0."""
        d = np.asarray(d_km, float)
        return np.where(d > 0, self.total - self(d), 0.0)


def chordal_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``R |a - b|`` for unit vectors (..., 3)."""
    return EARTH_RADIUS_KM * np.sqrt(np.maximum(((a - b) ** 2).sum(-1), 0.0))


def empirical_semivariogram(anom: np.ndarray, lat: np.ndarray, lon: np.ndarray, rng: np.random.Generator,
                            max_km: float = 4000.0, bins: int = 32, points: int = 1500,
                            offsets: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(h, gamma(h), N_h) from anomalies (T, H, W), pooled over times.

    Pairs: all pairs among `points` cells drawn with probability proportional to cell area (the
    long lags), and every cell with its grid neighbours up to `offsets` cells away (the short lags,
    each pair weighted by its cell's area weight). Bin edges are max_km (b / bins)^2, b = 0..bins, finer at
    the short lags that set the fill near observations; empty bins are dropped.
    """
    x = unit_vectors(lat, lon)
    h, w = anom.shape[-2:]
    wts = lat_weights(lat)
    edges = max_km * np.linspace(0, 1, bins + 1) ** 2   # finer at short lags, which set the fill near observations
    num, den, cnt = np.zeros(bins), np.zeros(bins), np.zeros(bins)

    def add(d, sq, weight):
        b = np.digitize(d, edges) - 1
        ok = (b >= 0) & (b < bins) & np.isfinite(sq) & (d > 0)
        num[:] += np.bincount(b[ok], weights=(weight * sq)[ok], minlength=bins)
        den[:] += np.bincount(b[ok], weights=np.broadcast_to(weight, sq.shape)[ok], minlength=bins)
        cnt[:] += np.bincount(b[ok], minlength=bins)

    p = np.broadcast_to(wts[:, None], (h, w)).ravel()
    pick = rng.choice(h * w, size=min(points, h * w), replace=False, p=p / p.sum())
    xp = x.reshape(-1, 3)[pick]
    iu = np.triu_indices(len(pick), 1)
    d_far = chordal_km(xp[iu[0]], xp[iu[1]])
    near = d_far < max_km
    for t in range(anom.shape[0]):
        zp = anom[t].ravel()[pick]
        add(d_far[near], ((zp[iu[0]] - zp[iu[1]]) ** 2)[near], np.ones(1))
    for di in range(0, offsets + 1):
        for dj in range(-offsets, offsets + 1):
            if di == 0 and dj <= 0:
                continue
            d = chordal_km(x[: h - di], np.roll(x, -dj, axis=1)[di:])
            wt = np.broadcast_to(wts[: h - di, None], d.shape)
            for t in range(anom.shape[0]):
                sq = (anom[t, : h - di] - np.roll(anom[t], -dj, axis=1)[di:]) ** 2
                add(d.ravel(), sq.ravel(), wt.ravel())
    keep = cnt > 0
    centres = 0.5 * (edges[1:] + edges[:-1])
    return centres[keep], 0.5 * num[keep] / den[keep], cnt[keep]


def fit_covariance(h: np.ndarray, gamma: np.ndarray, counts: np.ndarray, model: str = "auto",
                   structures: int = 1) -> Covariance:
    """Weighted least-squares fit of the semivariogram g + sum_i c_i (1 - rho(h / r_i)) (one or two
    structures, r_2 > r_1) to an empirical one.

    Residuals sqrt(N_h) (gamma_hat - gamma) / gamma (Cressie's weights); parameters on a log scale so
    they stay positive. `model="auto"` tries every model in `MODELS` and keeps the smallest cost.
    A second structure can follow both the short lags, which set the fill near observations, and the
    plateau, which sets the variance far from them; on the ERA5 sample it helps scattered gaps and
    hurts large ones, so one structure is the default.
    """
    if structures not in (1, 2):
        raise ValueError(f"structures must be 1 or 2, got {structures}")
    if model == "auto":
        fits = [_fit_one(h, gamma, counts, m, structures) for m in MODELS]
        return min(fits, key=lambda f: f[1])[0]
    return _fit_one(h, gamma, counts, model, structures)[0]


def _unpack(model: str, p: np.ndarray) -> Covariance:
    """[log g, log c, log r(, log c2, log q)] -> Covariance with r2 = r (1 + e^q)."""
    e = np.exp(p)
    if len(p) == 3:
        return Covariance(model, float(e[1]), float(e[2]), float(e[0]))
    return Covariance(model, float(e[1]), float(e[2]), float(e[0]), float(e[3]), float(e[2] * (1 + e[4])))


def _fit_one(h, gamma, counts, model, structures) -> tuple[Covariance, float]:
    top = float(np.max(gamma))
    lo, hi = [1e-9 * top, 1e-6 * top, h[0] / 10], [10 * top, 10 * top, 100 * h[-1]]
    start = [max(0.5 * gamma[0], 1e-6 * top), top, float(h[len(h) // 3])]
    if structures == 2:
        start = [start[0], top / 2, float(h[len(h) // 8]), top / 2, 3.0]
        lo, hi = [*lo, 1e-6 * top, 1e-3], [*hi, 10 * top, 1e3]

    def resid(p):
        g = _unpack(model, p).semivariogram(h)
        return np.sqrt(counts / counts.sum()) * (gamma - g) / np.maximum(g, 1e-12 * top)

    res = least_squares(resid, np.log(start), bounds=(np.log(lo), np.log(hi)))
    return _unpack(model, res.x), float(res.cost)


@dataclass(frozen=True)
class KrigingPlan:
    """The kriging of one mask: the missing cells (m,) (flat indices, increasing), their `neighbours`
    (m, n) (flat indices of observed cells), the weights lambda (len(channels), m, n) and the variances
    sigma^2 (len(channels), m) of the standardised anomaly z, for the channels `channels`."""

    missing: np.ndarray
    neighbours: np.ndarray
    weights: np.ndarray
    variance: np.ndarray
    channels: tuple[int, ...]

    def anomaly(self, c: int, z: np.ndarray, cells: slice = slice(None)) -> np.ndarray:
        """z_hat = lambda . z_obs at the missing cells `cells` (a slice of `missing`) for channel c and
        a flat field z (H * W,) of standardised anomalies (finite at the neighbours)."""
        j = self.channels.index(c)
        return (self.weights[j, cells] * z[self.neighbours[cells]]).sum(-1)


@dataclass
class Kriging:
    """Per-variable simple kriging fitted on training times (see the module docstring).

    `mean`, `scale`: (C, H, W); `covariances`: one `Covariance` per channel of the standardised anomaly.
    """

    lat: np.ndarray
    lon: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    covariances: tuple[Covariance, ...]
    nonneg: tuple[bool, ...] = ()

    @classmethod
    def fit(cls, train: np.ndarray, lat: np.ndarray, lon: np.ndarray, model: str = "auto", standardise: bool = True,
            nonneg=None, seed: int = 0, structures: int = 1, **variogram_kw) -> Kriging:
        """Fit m, s and the covariance of z = (x - m) / s on training fields (T, C, H, W).

        s is the per-cell standard deviation (ddof=1), floored at a tenth of its median over the
        positive cells (cells that never changed, like dry ones, would otherwise divide by 0). Without
        standardisation s = 1 and the anomalies are scaled by sqrt(T / (T - 1)), which undoes the
        variance lost to the estimated mean.
        """
        train = np.asarray(train, np.float64)
        t = train.shape[0]
        if t < 3:
            raise ValueError("kriging needs at least three training times to fit a covariance")
        mean = np.nanmean(train, axis=0)
        if standardise:
            std = np.nanstd(train, axis=0, ddof=1)
            floor = np.array([np.median(s[s > 0]) / 10 if np.any(s > 0) else 1.0 for s in std])
            scale = np.maximum(std, floor[:, None, None])
            anom = (train - mean) / scale
        else:
            scale = np.ones_like(mean)
            anom = (train - mean) * np.sqrt(t / (t - 1))
        rng = np.random.default_rng(seed)
        covs = tuple(fit_covariance(*empirical_semivariogram(anom[:, c], lat, lon, rng, **variogram_kw), model=model,
                                    structures=structures)
                     for c in range(train.shape[1]))
        nonneg = tuple(nonneg) if nonneg is not None else (False,) * train.shape[1]
        return cls(np.asarray(lat, float), np.asarray(lon, float), mean, scale, covs, nonneg)

    def plan(self, missing: np.ndarray, channels: tuple[int, ...] | None = None, neighbours: int = 32,
             chunk: int = 1024) -> KrigingPlan:
        """The kriging weights lambda = K^{-1} k and variances sigma^2 of the standardised anomaly for
        one mask (H, W) (True where missing), per channel in `channels` (default all).

        Each missing cell uses its `neighbours` nearest observed cells, solved in chunks of `chunk`
        cells (memory about 3 * chunk * neighbours^2 floats during the solve, then C * m * n for lambda).
        """
        missing = np.asarray(missing, bool)
        check_observed(missing)
        channels = tuple(range(len(self.covariances))) if channels is None else tuple(channels)
        xyz = unit_vectors(self.lat, self.lon).reshape(-1, 3)
        plan = _neighbour_plan(xyz, missing.ravel(), neighbours)
        m, n = plan["nb"].shape
        lam, var = np.zeros((len(channels), m, n)), np.zeros((len(channels), m))
        for s in range(0, m, chunk):
            d_nn, d_0n = _distances(plan, slice(s, s + chunk))
            for j, c in enumerate(channels):
                lam[j, s : s + chunk], var[j, s : s + chunk] = _weights(d_nn, d_0n, self.covariances[c])
        return KrigingPlan(plan["missing"], plan["nb"], lam, var, channels)

    def predict(self, fields: np.ndarray, neighbours: int = 32, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Kriging mean and variance (T, C, H, W) of fields with NaN gaps; observed cells unchanged, variance 0.

        Each missing cell uses its `neighbours` nearest observed cells of the same field (`plan`). The
        weights lambda depend only on the mask and the covariance, so fields sharing a mask (all
        variables of a time, or every time of a static mask) share one neighbour search and one
        solve per variable.
        """
        fields = np.asarray(fields)
        missing = ~np.isfinite(fields)
        check_observed(missing)
        mean = fields.astype(np.float64).copy()
        var = np.zeros(fields.shape, np.float64)
        groups: dict[bytes, list[tuple[int, int]]] = {}
        for t, c in np.ndindex(*fields.shape[:2]):
            if missing[t, c].any():
                groups.setdefault(np.packbits(missing[t, c]).tobytes(), []).append((t, c))
        for members in groups.values():
            plan = self.plan(missing[members[0]], tuple(sorted({c for _, c in members})), neighbours, chunk)
            cells = plan.missing
            for t, c in members:
                z = ((fields[t, c] - self.mean[c]) / self.scale[c]).ravel()
                sc, mc = self.scale[c].ravel()[cells], self.mean[c].ravel()[cells]
                mean[t, c].flat[cells] = mc + sc * plan.anomaly(c, z)
                var[t, c].flat[cells] = sc * sc * plan.variance[plan.channels.index(c)]
        return mean, var

    def sample(self, fields: np.ndarray, members: int, rng: np.random.Generator, **predict_kw) -> np.ndarray:
        """Ensemble (member, T, C, H, W) of marginal draws x_k = mean + sigma z_k, z_k ~ N(0, 1) per cell.

        The draws are independent between cells: each cell's members follow its kriging predictive law,
        so per-cell scores (CRPS, spread/skill) are those of the Gaussian process, but a member is not a
        spatially coherent field. Non-negative channels are clipped at 0.
        """
        mean, var = self.predict(fields, **predict_kw)
        return self.draw(mean, var, members, rng).astype(np.result_type(np.asarray(fields).dtype, np.float32))

    def draw(self, mean: np.ndarray, var: np.ndarray, members: int, rng: np.random.Generator) -> np.ndarray:
        """`sample` from a `predict` result: mean + sqrt(var) z_k (member, T, C, H, W), clipped where non-negative."""
        out = mean[None] + np.sqrt(var)[None] * rng.standard_normal((members, *mean.shape))
        for c, clip in enumerate(self.nonneg):
            if clip:
                out[:, :, c] = np.clip(out[:, :, c], 0, None)
        return out


def _neighbour_plan(xyz: np.ndarray, missing: np.ndarray, neighbours: int) -> dict:
    """Indices of the missing cells, their nearest observed cells (m, n) and the unit vectors needed."""
    obs = np.flatnonzero(~missing)
    miss = np.flatnonzero(missing)
    n = min(neighbours, obs.size)
    _, nb = cKDTree(xyz[obs]).query(xyz[miss], k=n)
    nb = nb.reshape(len(miss), n)
    return {"missing": miss, "observed": obs, "nb": obs[nb], "xyz": xyz}


def _distances(plan: dict, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """Chordal distances among the neighbours (m, n, n) and from each missing cell to them (m, n)."""
    xyz = plan["xyz"]
    xn = xyz[plan["nb"][rows]]
    return chordal_km(xn[:, :, None], xn[:, None, :]), chordal_km(xyz[plan["missing"][rows], None], xn)


def _weights(d_nn: np.ndarray, d_0n: np.ndarray, cov: Covariance) -> tuple[np.ndarray, np.ndarray]:
    """lambda = K^{-1} k (m, n) and sigma^2 = c + g - lambda . k (m,), K = c rho(D / r) + g I."""
    big_k = cov(d_nn) + (cov.nugget + 1e-9 * cov.sill) * np.eye(d_nn.shape[-1])
    k = cov(d_0n)
    lam = np.linalg.solve(big_k, k[..., None])[..., 0]
    return lam, np.maximum(cov.total - (lam * k).sum(-1), 0.0)
