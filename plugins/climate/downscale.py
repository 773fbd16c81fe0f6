"""Probabilistic downscaling: training pairs, the model bundle, ensemble sampling.

Notation (per variable, normalised units z, see `normalise.py`): the coarse field is the
area-weighted block mean C(z) of the fine field, B is bicubic interpolation back to the fine
grid, r = z - B(C(z)) the residual, and m, s its per-cell mean and standard deviation over
the training times. The network learns the standardised residual

    x0 = (r - m) / s,      conditioned on [B(C(z)), m, s / <s>, sin(latitude)],

so an untrained model (x0 ~ N(0, I)) is exactly the statistical downscaler, and everything it
learns is how the residual depends on the large-scale state. A member is z = B + m + s x0.
During training, m and s for time t are computed without t (leave-one-out), so the model sees
the same relation between statistics and data as on held-out times.

With `alignments` A > 1, each training time also gives the pairs of the other block alignments in
longitude: the fields rolled west by a = 1..A-1 cells, so the fixed coarse blocks group other
cells, each alignment with its own m and s. With `lat_alignments` L > 1 the same holds in latitude:
blocks that start b = 1..L-1 rows into the grid (latitude does not wrap, so the b rows before them
and the last factor - b rows are dropped). The network then sees A L views of every time, with the
geography shifted against the blocks and its own pooling grid.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset

from sciffusion.plugins.climate.grid import (
    block_mean_correction,
    block_upper_bound,
    check_factor,
    coarse_coords,
    coarsen,
    coarsen_observed,
    fill_by_neighbours,
    interpolate,
    is_global_longitude,
    lat_weights,
    match_block_means,
    scale_to_block_means,
)
from sciffusion.plugins.climate.io import ERA5_CREDIT, check_grid, load_times
from sciffusion.plugins.climate.model import ClimateUNet, UNetConfig
from sciffusion.plugins.climate.normalise import Normaliser, fit_normaliser
from sciffusion.plugins.climate.solar import N_FEATURES, has_clock_times, solar_features

FORMAT = "sciffusion-climate-downscale/2"
FORMAT_V1 = "sciffusion-climate-downscale/1"  # per-cell mean residual, read for old checkpoints
CLAMP = 6.0
RIDGE = 1e-3              # ridge on the solar coefficients, per training time
MIN_DIURNAL_TIMES = 8     # fewer training times: the per-cell mean only
CACHE_BYTES = 2 << 30     # prepared training times kept in memory (x0, cond, w)


@dataclass(frozen=True)
class DownscaleConfig:
    """What a downscaling model is: variables, factor, network, diffusion, training split."""

    variables: tuple[str, ...]
    factor: int = 4
    widths: tuple[int, ...] = (24, 48, 96)
    schedule: str = "cosine"
    prediction: str = "v"
    strip_height: int = 40
    std_floor: float = 0.1
    solar_channels: bool = False
    alignments: int = 1
    lat_alignments: int = 1
    loss_weights: tuple[float, ...] = ()
    train_times: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> DownscaleConfig:
        d = dict(d)
        for k in ("variables", "widths", "train_times", "loss_weights"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def variable_weights(self) -> np.ndarray:
        """Per-variable loss weights (C,), normalised to mean 1; all 1 when `loss_weights` is empty."""
        if not self.loss_weights:
            return np.ones(len(self.variables))
        w = np.asarray(self.loss_weights, float)
        if w.shape != (len(self.variables),) or not np.all(w > 0):
            raise ValueError(f"loss_weights {self.loss_weights} must be one positive number per variable {self.variables}")
        return w / w.mean()

    def check(self) -> None:
        """Raise on options that cannot describe a model."""
        for name in ("alignments", "lat_alignments"):
            if not 1 <= getattr(self, name) <= self.factor:
                raise ValueError(f"{name}={getattr(self, name)} must be between 1 and the factor {self.factor}")
        self.variable_weights()


@dataclass
class ResidualStats:
    """Per-cell least-squares fit of the residual on solar features over the training times.

    r_t(c, i, j) ~ f_t(i, j) . beta(c, i, j), with f = [1, insolation, sin(hour angle)] (`solar.py`),
    kept as running sums in float64 over the times where the cell is observed (v_t = 1; NaN cells
    of the truth are left out): gram A = sum_t v f f^T (C, H, W, P, P), cross b = sum_t v r f
    (C, H, W, P), total_sq q = sum_t v r^2 (C, H, W), count n = sum_t v (C, H, W). Variables with
    `diurnal[c]` False use the intercept alone, i.e. the per-cell mean m = S / n and
    s^2 = (Q - n m^2) / (n - 1). For the others beta = (A + R)^-1 b, with a ridge R = RIDGE * n on the
    solar terms that keeps A invertible, and s^2 = (q - 2 b . beta + beta^T A beta) / (n - P).
    A cell observed fewer than twice gets beta = 0 and the floor for s.
    """

    n: np.ndarray
    gram: np.ndarray
    cross: np.ndarray
    total_sq: np.ndarray
    diurnal: np.ndarray

    def _fit(self, gram, cross, total_sq, n, floor_ratio):
        p = gram.shape[-1]
        n = np.broadcast_to(np.asarray(n, np.float64), total_sq.shape)
        ridge = np.diag([0.0] + [RIDGE] * (p - 1)) * n[..., None, None]
        empty = n < 1
        gram = gram + np.where(empty[..., None, None], np.eye(p), 0.0)              # beta = 0 where never seen
        beta = np.linalg.solve(gram + ridge, cross[..., None])[..., 0]              # (C, H, W, P)
        mean = np.zeros_like(beta)
        mean[..., 0] = cross[..., 0] / gram[..., 0, 0]
        use = np.asarray(self.diurnal, bool)[:, None, None, None]
        coef = np.where(use, beta, mean)
        dof = np.where(use[..., 0], n - p, n - 1)
        fitted_sq = np.einsum("chwp,chwpq,chwq->chw", coef, gram, coef)
        rss = np.maximum(total_sq - 2 * (coef * cross).sum(-1) + fitted_sq, 0)
        s = np.where(n >= 2, np.sqrt(rss / np.maximum(dof, 1)), np.nan)
        return np.moveaxis(coef, -1, 1), _floor(s, floor_ratio)

    def coefficients(self, floor_ratio: float) -> tuple[np.ndarray, np.ndarray]:
        """(beta (C, P, H, W), s (C, H, W)) from all training times; s floored at floor_ratio <s>_c."""
        return self._fit(self.gram, self.cross, self.total_sq, self.n, floor_ratio)

    def leave_one_out(self, r: np.ndarray, f: np.ndarray, floor_ratio: float,
                      valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean f . beta_(-t) and std s_(-t) for training time t (residual r (C, H, W), features
        f (P, H, W), observed cells `valid` (C, H, W), default all), fitted on the other times:
        A - v f f^T, b - v r f, q - v r^2, n - v."""
        v = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
        r = np.where(v, r, 0.0)
        ft = np.moveaxis(f, 0, -1)
        vf = v[..., None] * ft[None]
        gram = self.gram - vf[..., :, None] * ft[None, ..., None, :]
        coef, s = self._fit(gram, self.cross - r[..., None] * vf, self.total_sq - r**2, self.n - v, floor_ratio)
        return np.einsum("cphw,phw->chw", coef, f), s


def _floor(s: np.ndarray, ratio: float) -> np.ndarray:
    """max(s, ratio <s>) per variable; cells without an estimate (NaN) take the floor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a variable never observed twice
        ref = np.nan_to_num(np.nanmean(s, axis=(-2, -1), keepdims=True), nan=1.0)
    return np.fmax(s, ratio * ref)


def residual_features(times: np.ndarray | None, lat: np.ndarray, lon: np.ndarray, n: int) -> np.ndarray:
    """Solar features (n, P, H, W) for `times`, or the intercept alone ([1, 0, 0]) without clock times."""
    if times is not None and has_clock_times(times):
        return solar_features(times, lat, lon)
    f = np.zeros((n, N_FEATURES, len(lat), len(lon)))
    f[:, 0] = 1.0
    return f


class Grids:
    """Fine and coarse coordinates of a downscaling problem, with the interpolation B.

    `periodic` is detected from the longitudes (`grid.is_global_longitude`): a global grid wraps
    in longitude (interpolation, block-mean correction, the network's padding), a regional one
    does not."""

    def __init__(self, lat: np.ndarray, lon: np.ndarray, factor: int) -> None:
        check_factor(len(lat), len(lon), factor)
        self.lat, self.lon, self.factor = np.array(lat, float), np.array(lon, float), factor
        self.lat_c, self.lon_c = coarse_coords(self.lat, self.lon, factor)
        self.weights = lat_weights(self.lat)
        self.periodic = is_global_longitude(self.lon)

    def coarsen(self, x):
        return coarsen(x, self.factor, self.lat)

    def up(self, xc, method: str = "bicubic"):
        return interpolate(xc, self.lat_c, self.lon_c, self.lat, self.lon, method, periodic=self.periodic)

    @cached_property
    def block_mean_correction(self) -> tuple[np.ndarray, np.ndarray]:
        """`grid.block_mean_correction` of this grid, for `match_block_means`."""
        return block_mean_correction(self.lat, self.lon, self.factor, self.periodic)

    def rows(self, offset: int) -> slice:
        """Fine rows whose blocks start `offset` rows into the grid: all rows for 0, else
        offset .. H - factor + offset (the partial blocks at both ends are dropped)."""
        return slice(0, len(self.lat)) if offset == 0 else slice(offset, len(self.lat) - self.factor + offset)

    def cols(self, offset: int) -> slice:
        """Fine columns whose blocks start `offset` columns into a regional grid, as `rows`; all
        columns on a global grid, which is rolled instead (`load_aligned`)."""
        if self.periodic or offset == 0:
            return slice(0, len(self.lon))
        return slice(offset, len(self.lon) - self.factor + offset)

    def aligned(self, offset: int, col: int = 0) -> Grids:
        """The grids of the fine rows `rows(offset)` and columns `cols(col)`, with their own coarse blocks."""
        if offset == 0 and (col == 0 or self.periodic):
            return self
        return Grids(self.lat[self.rows(offset)], self.lon[self.cols(col)], self.factor)


@dataclass(frozen=True)
class Alignment:
    """A placement of the coarse blocks on the fine grid: blocks start `row` rows into the grid
    (`Grids.rows`) and the fields are rolled west by `col` cells."""

    row: int = 0
    col: int = 0


def _normalised_residual(fine: np.ndarray, norm: Normaliser, grids: Grids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B(C_O(z)), r, valid) for physical fine fields (T, C, H, W). C_O is the block mean over the
    observed cells (`grid.coarsen_observed`, all-missing blocks filled from their neighbours), the
    coarse field a user with the same gaps would have; r is 0 where the truth is NaN (`valid` False)."""
    z = norm.forward(fine.astype(np.float64))
    valid = np.isfinite(z)
    with np.errstate(all="ignore"):
        coarse = coarsen_observed(z, grids.lat, grids.factor, grids.periodic) if not valid.all() else grids.coarsen(z)
    b = grids.up(coarse)
    return b, np.where(valid, z - b, 0.0), valid


def normal_sums(r: np.ndarray, f: np.ndarray, valid: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares sums of residuals r (T, C, H, W) on features f (T, P, H, W) over the observed
    cells `valid` (T, C, H, W; default all): n = sum_t v (C, H, W), A = sum_t v f f^T (C, H, W, P, P),
    b = sum_t v r f (C, H, W, P), q = sum_t v r^2 (C, H, W)."""
    v = np.ones(r.shape, bool) if valid is None else np.asarray(valid, bool)
    r = np.where(v, r, 0.0)
    ft = np.moveaxis(f, 1, -1)
    vf = v.astype(np.float64)
    return (vf.sum(0), np.einsum("tchw,thwp,thwq->chwpq", vf, ft, ft), np.einsum("tchw,thwp->chwp", r, ft),
            (r**2).sum(0))


def _time_values(ds: xr.Dataset, times: Sequence[int]) -> np.ndarray | None:
    return ds["time"].values[list(times)] if "time" in ds.coords else None


def load_aligned(ds: xr.Dataset, times: Sequence[int], variables: Sequence[str], grids: Grids,
                 alignment: Alignment) -> tuple[np.ndarray, Grids, np.ndarray]:
    """Fields (T, C, H', W') of `times` in block alignment `alignment`, the grids they are on, and
    the longitudes (W',) of their columns: rows `grids.rows(row)` are kept and, on a global grid,
    the fields rolled west by `col` cells (column j holds longitude j + col); on a regional grid the
    columns `grids.cols(col)` are kept instead. Either way the coarse blocks of `Grids.coarsen`
    group another set of cells."""
    fine = load_times(ds, times, variables)[..., grids.rows(alignment.row), grids.cols(alignment.col)]
    agrids = grids.aligned(alignment.row, alignment.col)
    if not grids.periodic:
        return fine, agrids, agrids.lon
    return np.roll(fine, -alignment.col, axis=-1), agrids, np.roll(grids.lon, -alignment.col)


def rows_in_every_alignment(n_lat: int, factor: int, lat_alignments: int) -> int:
    """Fine rows that every latitude alignment keeps (`Grids.rows`): all, or H - factor when L > 1."""
    return n_lat - (factor if lat_alignments > 1 else 0)


def cols_in_every_alignment(grids: Grids, lon_alignments: int) -> int:
    """Fine columns that every longitude alignment keeps (`Grids.cols`): all on a global grid or
    with one alignment, else W - factor."""
    return len(grids.lon) - (grids.factor if lon_alignments > 1 and not grids.periodic else 0)


def alignments(cfg: DownscaleConfig) -> list[Alignment]:
    """The block alignments a model trains on, (row, col) in row-major order, (0, 0) first."""
    return [Alignment(b, a) for b in range(cfg.lat_alignments) for a in range(cfg.alignments)]


def fit_residual_stats(
    ds: xr.Dataset, variables: Sequence[str], times: Sequence[int], norm: Normaliser, grids: Grids,
    batch: int = 4, alignment: Alignment = Alignment(), diurnal: np.ndarray | None = None,
) -> ResidualStats:
    """Accumulate the least-squares sums over the training times, `batch` time steps in memory at a time,
    then choose per variable between the per-cell mean and the diurnal fit by leave-one-out error.

    A variable gets the diurnal fit when the times carry clock times, there are at least
    MIN_DIURNAL_TIMES of them, and its latitude-weighted leave-one-out squared error
    sum_t <(r_t - f_t . beta_(-t))^2> is at least 1 % below that of the per-cell mean (a second pass).
    `alignment` fits that block alignment (`load_aligned`); `diurnal` (C,) imposes the choice instead.
    """
    times = list(times)
    tvals = _time_values(ds, times)

    def residual_batches():
        for start in range(0, len(times), batch):
            idx = list(range(start, min(start + batch, len(times))))
            fine, agrids, lon = load_aligned(ds, [times[i] for i in idx], variables, grids, alignment)
            _, r, valid = _normalised_residual(fine, norm, agrids)
            f = residual_features(None if tvals is None else tvals[idx], agrids.lat, lon, len(idx))
            yield r, f, valid

    sums = None
    for r, f, valid in residual_batches():
        new = normal_sums(r, f, valid)
        sums = new if sums is None else tuple(a + b for a, b in zip(sums, new))
    off = np.zeros(len(variables), bool)
    stats = ResidualStats(*sums, off)
    if diurnal is not None:
        return replace(stats, diurnal=np.asarray(diurnal, bool))
    if tvals is None or not has_clock_times(tvals) or len(times) < MIN_DIURNAL_TIMES:
        return stats
    on = replace(stats, diurnal=~off)
    w = grids.aligned(alignment.row, alignment.col).weights[:, None]
    err_mean, err_diurnal = np.zeros(len(variables)), np.zeros(len(variables))
    for r, f, valid in residual_batches():
        for rt, ft, vt in zip(r, f, valid):
            err_mean += ((rt - stats.leave_one_out(rt, ft, 0.0, vt)[0]) ** 2 * w * vt).mean((-2, -1))
            err_diurnal += ((rt - on.leave_one_out(rt, ft, 0.0, vt)[0]) ** 2 * w * vt).mean((-2, -1))
    return replace(stats, diurnal=err_diurnal < 0.99 * err_mean)


def condition(b: np.ndarray, m: np.ndarray, s: np.ndarray, lat: np.ndarray,
              solar: np.ndarray | None = None) -> np.ndarray:
    """Conditioning channels [B, m, s/<s>, sin(lat)] for (..., C, H, W) arrays -> (..., 3C+1, H, W),
    followed by the solar features `solar` (..., P-1, H, W) (insolation, sin hour angle) when given."""
    rel = s / np.nanmean(s, axis=(-2, -1), keepdims=True)
    sinlat = np.broadcast_to(np.sin(np.deg2rad(lat))[:, None], b.shape[-2:])
    sinlat = np.broadcast_to(sinlat, (*b.shape[:-3], 1, *b.shape[-2:]))
    m = np.broadcast_to(m, b.shape)
    rel = np.broadcast_to(rel, b.shape)
    parts = [b, m, rel, sinlat] + ([] if solar is None else [solar])
    return np.concatenate(parts, axis=-3).astype(np.float32)


def n_condition_channels(cfg: DownscaleConfig) -> int:
    """3C + 1 conditioning channels, plus the P - 1 solar features with `solar_channels`."""
    return 3 * len(cfg.variables) + 1 + (N_FEATURES - 1 if cfg.solar_channels else 0)


class ResidualStrips(Dataset):
    """Training examples (x0, cond, w): strips of `strip_height` latitude rows, full longitude on a
    global grid (on a regional one with several alignments, the W - factor columns every alignment
    keeps, from the west or the east edge).

    Items enumerate (time, alignment, first row, first column) with rows on a stride of 4; `stats` holds one
    `ResidualStats` per block alignment of `alignments(cfg)`, in that order. One prepared
    (time, alignment) is kept per cache slot (`cache` slots), so memory is bounded by the cache,
    not by the dataset. `w` (C, strip, lon) holds the latitude weights times the variable's loss
    weight, 0 where the truth is NaN.
    """

    def __init__(self, ds: xr.Dataset, cfg: DownscaleConfig, times: Sequence[int], norm: Normaliser,
                 stats: Sequence[ResidualStats], grids: Grids, cache: int = 32) -> None:
        self.ds, self.cfg, self.times, self.norm, self.grids = ds, cfg, list(times), norm, grids
        self.stats, self.alignments = list(stats), alignments(cfg)
        if len(self.stats) != len(self.alignments):
            raise ValueError(f"got residual statistics for {len(self.stats)} block alignments, the config has "
                             f"{len(self.alignments)} ({cfg.lat_alignments} in latitude x {cfg.alignments} in longitude)")
        h = cfg.strip_height
        n_rows = rows_in_every_alignment(len(grids.lat), cfg.factor, cfg.lat_alignments)
        if not 1 <= h <= n_rows:
            raise ValueError(f"strip_height {h} must be between 1 and {n_rows}")
        self.strip_width = cols_in_every_alignment(grids, cfg.alignments)
        self.views = []
        for k, al in enumerate(self.alignments):
            sub = grids.aligned(al.row, al.col)
            col_starts = sorted({0, len(sub.lon) - self.strip_width})
            self.views += [(k, start, c) for start in range(0, len(sub.lat) - h + 1, 4) for c in col_starts]
        self.variable_weights = cfg.variable_weights()[:, None, None]
        self._cache: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = cache

    def __len__(self) -> int:
        return len(self.times) * len(self.views)

    def prepared(self, ti: int, k: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x0, cond, w) for the ti-th training time in the k-th block alignment, on all the rows
        of that alignment; w is the loss weight (C, H', W)."""
        key = (ti, k)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        fine, grids, lon = load_aligned(self.ds, [self.times[ti]], self.cfg.variables, self.grids, self.alignments[k])
        b, r, valid = _normalised_residual(fine, self.norm, grids)
        tval = _time_values(self.ds, [self.times[ti]])
        f = residual_features(tval, grids.lat, lon, 1)[0]
        m, s = self.stats[k].leave_one_out(r[0], f, self.cfg.std_floor, valid[0])
        x0 = np.where(valid[0], (r[0] - m) / s, 0.0).astype(np.float32)   # missing cells: the mean, weight 0
        cond = condition(b[0], m, s, grids.lat, f[1:] if self.cfg.solar_channels else None)
        w = (self.variable_weights * (grids.weights[:, None] * valid[0])).astype(np.float32)
        self._cache[key] = (x0, cond, w)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return self._cache[key]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ti, vi = divmod(i, len(self.views))
        k, start, col = self.views[vi]
        x0, cond, w = self.prepared(ti, k)
        rows, cols = slice(start, start + self.cfg.strip_height), slice(col, col + self.strip_width)
        return (torch.from_numpy(x0[:, rows, cols]), torch.from_numpy(cond[:, rows, cols]),
                torch.from_numpy(w[:, rows, cols]))


def weighted_loss(model, process, batch) -> torch.Tensor:
    """Latitude-weighted denoising loss for (x0, cond, w) batches (`Trainer` loss_fn)."""
    from sciffusion.core import losses

    x0, cond, w = batch
    return losses.denoising_loss(model, process, x0, cond=cond, weights=w)


class Downscaler:
    """A trained downscaling model with everything needed to apply it to new coarse fields."""

    def __init__(self, cfg: DownscaleConfig, norm: Normaliser, grids: Grids, coef: np.ndarray,
                 std: np.ndarray, diurnal: np.ndarray, model: ClimateUNet | None = None,
                 missing: np.ndarray | None = None) -> None:
        self.cfg, self.norm, self.grids = cfg, norm, grids
        # (C, H, W) cells never observed in the training times: NaN in every output
        self.missing = None if missing is None or not np.any(missing) else np.asarray(missing, bool)
        self.coef, self.std = coef.astype(np.float32), std.astype(np.float32)
        self.diurnal = np.asarray(diurnal, bool)
        c = len(cfg.variables)
        self.model = model if model is not None else ClimateUNet(
            UNetConfig(c, n_condition_channels(cfg), cfg.widths, periodic=grids.periodic))

    def process(self):
        from sciffusion.core import DiffusionProcess, get_schedule

        return DiffusionProcess(get_schedule(self.cfg.schedule), prediction=self.cfg.prediction)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write the bundle atomically; loads with torch.load(weights_only=True)."""
        from sciffusion.core.train.checkpoint import atomic_torch_save

        state = {
            "format": FORMAT,
            "config": json.dumps(self.cfg.to_dict()),
            "normaliser": self.norm.to_json(),
            "unet": json.dumps(self.model.cfg.to_dict()),
            "latitude": torch.from_numpy(self.grids.lat),
            "longitude": torch.from_numpy(self.grids.lon),
            "resid_coef": torch.from_numpy(self.coef).to(torch.float16),
            "resid_diurnal": torch.from_numpy(self.diurnal),
            "resid_std": torch.from_numpy(self.std).to(torch.float16),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "credit": ERA5_CREDIT if "ERA5" in self.cfg.source else self.cfg.source,
            **({} if self.missing is None else {"missing": torch.from_numpy(self.missing)}),
            "extra": json.dumps(extra or {}),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, path)
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str = "cpu") -> Downscaler:
        """Read a bundle written by `save` (weights only, no pickled code)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises several types for a corrupt or foreign file
            raise ValueError(f"{path} is not a readable checkpoint: {err}") from err
        if not isinstance(state, dict) or state.get("format") not in (FORMAT, FORMAT_V1):
            raise ValueError(f"{path} is not a climate downscaling checkpoint (format {FORMAT})")
        if state["format"] == FORMAT_V1:  # per-cell mean only: the intercept of the diurnal fit
            mean = state["resid_mean"].float().numpy()
            coef = np.zeros((mean.shape[0], N_FEATURES, *mean.shape[1:]), np.float32)
            coef[:, 0] = mean
            diurnal = np.zeros(mean.shape[0], bool)
        else:
            coef, diurnal = state["resid_coef"].float().numpy(), state["resid_diurnal"].numpy()
        cfg = DownscaleConfig.from_dict(json.loads(state["config"]))
        norm = Normaliser.from_dict(json.loads(state["normaliser"]))
        grids = Grids(state["latitude"].numpy(), state["longitude"].numpy(), cfg.factor)
        model = ClimateUNet(UNetConfig.from_dict(json.loads(state["unet"])))
        model.load_state_dict(state["model"])
        model.eval()
        missing = state["missing"].numpy() if "missing" in state else None
        return cls(cfg, norm, grids, coef, state["resid_std"].float().numpy(), diurnal, model, missing)

    def check_input(self, ds: xr.Dataset, fine: bool = True) -> None:
        """Raise if `ds` lacks the model's variables or is on another grid (fine or coarse)."""
        missing = [v for v in self.cfg.variables if v not in ds.data_vars]
        if missing:
            raise KeyError(f"variable(s) {missing} needed by the checkpoint not found; available: {sorted(map(str, ds.data_vars))}")
        if fine:
            check_grid(ds, self.grids.lat, self.grids.lon)
        else:
            check_grid(ds, self.grids.lat_c, self.grids.lon_c, what="checkpoint's coarse grid")

    # ------------------------------------------------------------------ sampling
    def features(self, times: np.ndarray | None, n: int) -> np.ndarray:
        """Solar features f_t (n, P, H, W) for n times (`times` datetime64 UTC or None); raises when the
        model needs the time of day (a diurnal residual mean or solar channels) and `times` lacks it."""
        if self.diurnal.any() or self.cfg.solar_channels:
            names = [v for v, d in zip(self.cfg.variables, self.diurnal) if d]
            what = f"the residual mean of {names}" if names else "the network's solar channels"
            if times is None or not has_clock_times(times):
                raise ValueError(f"{what} follows the time of day: pass times= "
                                 "(datetime64, UTC) for the fields to downscale")
            if len(times) != n:
                raise ValueError(f"got {len(times)} times for {n} fields")
        return residual_features(times, self.grids.lat, self.grids.lon, n)

    def match_coarse(self, fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """Fine fields (n, C, H, W) corrected so that C(x) = X, the coarse fields (n, C, h, w), exactly:
        a smooth additive correction (`match_block_means`) for variables on an affine scale, a
        per-block rescaling (`scale_to_block_means`, mass-conserving) for the non-negative (log1p) ones."""
        out = np.array(fine, dtype=np.float64)
        for c, v in enumerate(self.norm.variables):
            if v.transform == "log1p":
                out[:, c] = scale_to_block_means(out[:, c], coarse[:, c], self.cfg.factor, self.grids.lat)
            else:
                out[:, c] = match_block_means(out[:, c], coarse[:, c], self.cfg.factor, self.grids.lat,
                                              self.grids.block_mean_correction)
        return out

    def bicubic_z(self, coarse: np.ndarray) -> np.ndarray:
        """B(z_coarse) for physical coarse fields (T, C, h, w) without gaps -> normalised (T, C, H, W)."""
        return self.grids.up(self.norm.forward(coarse.astype(np.float64)))

    def fill_coarse(self, coarse: np.ndarray, coarse_gaps: str = "infill") -> np.ndarray:
        """Coarse fields (T, C, h, w) with their missing cells filled from the neighbouring blocks
        (`grid.fill_by_neighbours`; the model then samples the fine cells under them), or, with
        `coarse_gaps="report"`, a ValueError naming the variable and how many cells are missing."""
        if coarse_gaps not in ("infill", "report"):
            raise ValueError(f"coarse_gaps must be 'infill' or 'report', got {coarse_gaps!r}")
        gaps = ~np.isfinite(coarse)
        if not gaps.any():
            return coarse
        if coarse_gaps == "report":
            c = int(np.argwhere(gaps.any(axis=(0, 2, 3)))[0, 0])
            t = int(np.argwhere(gaps[:, c].any(axis=(-2, -1)))[0, 0])
            raise ValueError(f"coarse input: variable '{self.cfg.variables[c]}' has {int(gaps[:, c].sum())} missing "
                             f"cells (first at time index {t}); infill them with --coarse-gaps infill")
        return fill_by_neighbours(coarse, periodic=self.grids.periodic)

    def _noise_groups(self, members: int, n_times: int, batch_size: int, seed: int,
                      time_seeds: Sequence[int] | None, dev: torch.device) -> list:
        """(generator, [(member, time), ...]) batches: one generator for the whole call, or with
        `time_seeds` one per time (its members in batches), so a time's members do not depend on
        which other times are sampled with it."""
        if time_seeds is None:
            jobs = [(k, t) for k in range(members) for t in range(n_times)]
            gen = torch.Generator(device=dev).manual_seed(seed)
            return [(gen, jobs[s : s + batch_size]) for s in range(0, len(jobs), batch_size)]
        groups = []
        for t in range(n_times):
            gen = torch.Generator(device=dev).manual_seed(int(time_seeds[t]))
            groups += [(gen, [(k, t) for k in range(s, min(s + batch_size, members))]) for s in range(0, members, batch_size)]
        return groups

    @torch.no_grad()
    def sample(self, coarse: np.ndarray, members: int = 8, steps: int = 10, method: str = "dpmpp_2m",
               seed: int = 0, batch_size: int = 8, device: str | None = None,
               known: np.ndarray | None = None, mask: np.ndarray | None = None,
               progress: bool = False, times: np.ndarray | None = None, conserve: bool = True,
               coarse_gaps: str = "infill", time_seeds: Sequence[int] | None = None) -> np.ndarray:
        """Ensemble of fine fields (member, T, C, H, W) in physical units from coarse (T, C, h, w).

        `conserve`: every member's area-weighted block means equal the coarse fields (`match_coarse`);
        without it, members are the sampler's output (non-negative variables capped per cell by
        their block's total). Missing coarse cells are filled or reported (`fill_coarse`); cells
        never observed in training (`missing`) are NaN.

        `times` (T,) datetime64 UTC: needed when a variable's residual mean follows the time of
        day (`diurnal`). `known`/`mask` (T, C, H, W), physical units and 1 where known, turn
        sampling into inpainting (core `sample(known=, mask=)`): observed cells are kept, the
        rest is drawn. `time_seeds` (T,): draw each time's members from its own seed.
        """
        from sciffusion.core import sample as core_sample
        from sciffusion.core.memory import retain_freed_memory

        retain_freed_memory()  # every step frees and reallocates the same activations
        proc, dev = self.process(), torch.device(device or "cpu")
        model = self.model.to(dev).eval()
        coarse = np.asarray(coarse, np.float64)
        filled = self.fill_coarse(coarse, coarse_gaps)
        b = self.bicubic_z(filled)
        f = self.features(times, coarse.shape[0])
        m = np.einsum("cphw,tphw->tchw", self.coef, f).astype(np.float32)
        cond = condition(b, m, self.std, self.grids.lat, f[:, 1:] if self.cfg.solar_channels else None)
        known_x = None
        if known is not None:
            zk = np.nan_to_num(self.norm.forward(known.astype(np.float64)), nan=0.0)
            known_x = np.nan_to_num((zk - b - m) / self.std).astype(np.float32)
        out = np.empty((members, *b.shape), dtype=np.float32)
        for gen, chunk in self._noise_groups(members, coarse.shape[0], batch_size, seed, time_seeds, dev):
            ts = [t for _, t in chunk]
            kw = {}
            if known_x is not None:
                kw = {"known": torch.from_numpy(known_x[ts]).to(dev), "mask": torch.from_numpy(mask[ts].astype(np.float32)).to(dev)}
            x = core_sample(model, proc, (len(chunk), *b.shape[1:]), method=method, steps=steps, generator=gen,
                            cond=torch.from_numpy(cond[ts]).to(dev), progress=progress, device=dev, **kw)
            # a standardised residual beyond +-6 is a sampler excursion, and exp() of it (precipitation) explodes
            x = x.clamp(-CLAMP, CLAMP)
            z = b[ts] + m[ts] + self.std * x.double().cpu().numpy()
            phys = self.norm.inverse(z)
            if known is None and conserve:
                phys = self.match_coarse(phys, coarse[ts])
            elif known is None:
                for c, v in enumerate(self.norm.variables):
                    if v.transform == "log1p":  # a non-negative cell cannot exceed its block's total
                        phys[:, c] = np.minimum(phys[:, c], block_upper_bound(np.maximum(filled[ts, c], 0), self.cfg.factor, self.grids.lat))
            for j, (k, t) in enumerate(chunk):
                out[k, t] = phys[j]
        if known is not None:
            out = np.where(mask[None].astype(bool), known[None], out)
        if self.missing is not None:
            out[:, :, self.missing] = np.nan
        return out


def build(ds: xr.Dataset, cfg: DownscaleConfig, train_idx: Sequence[int]) -> tuple[Downscaler, ResidualStrips]:
    """Fit the normaliser and residual statistics on the training times; return bundle and data."""
    if len(train_idx) < 3:
        raise ValueError(f"need at least 3 training times for leave-one-out statistics, got {len(train_idx)}")
    cfg.check()
    grids = Grids(ds["latitude"].values, ds["longitude"].values, cfg.factor)
    norm = fit_normaliser(ds, cfg.variables, list(train_idx))
    first, *others = alignments(cfg)
    stats = [fit_residual_stats(ds, cfg.variables, list(train_idx), norm, grids, alignment=first)]
    stats += [fit_residual_stats(ds, cfg.variables, list(train_idx), norm, grids, alignment=al, diurnal=stats[0].diurnal)
              for al in others]
    coef, std = stats[0].coefficients(cfg.std_floor)
    missing = stats[0].n == 0   # never observed in the training times
    slot_bytes = 4 * (2 * len(cfg.variables) + n_condition_channels(cfg)) * len(grids.lat) * len(grids.lon)
    data = ResidualStrips(ds, cfg, train_idx, norm, stats, grids, cache=max(2, CACHE_BYTES // slot_bytes))
    return Downscaler(cfg, norm, grids, coef, std, stats[0].diurnal, missing=missing), data


def train(ds: xr.Dataset, cfg: DownscaleConfig, train_idx: Sequence[int], out_dir: str | Path,
          steps: int = 2500, batch_size: int = 8, lr: float = 7e-4, seed: int = 0,
          progress: bool = False, checkpoint_every: int = 200, device: str | None = None) -> Downscaler:
    """Train with the core `Trainer` (EMA, atomic checkpoints, resume) and return the EMA bundle."""
    from sciffusion.core.train.trainer import TrainConfig, Trainer

    torch.manual_seed(seed)
    bundle, data = build(ds, cfg, train_idx)
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, lr_schedule="cosine", warmup_steps=min(100, steps // 10 + 1),
                       min_lr_ratio=0.05, ema_half_life=max(steps / 20, 5), checkpoint_every=checkpoint_every,
                       keep_last=2, log_every=20, seed=seed, out_dir=str(out_dir), device=device)
    trainer = Trainer(bundle.model, bundle.process(), data, tcfg, loss_fn=weighted_loss, progress=progress)
    trainer.fit(resume=True)
    bundle.model = trainer.ema_model
    bundle.model.eval()
    return bundle
