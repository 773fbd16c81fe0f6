"""Do the generated fields, as a set, look like the true ones? k-NN precision/recall/density/coverage.

Every field (one variable at one time; for an ensemble, one member at one time) becomes a feature
vector in one of two spaces a climate scientist reads directly:

- `zonal_spectrum`: `log10 P(k)`, k = 1 .. n_lon/2, the zonal power spectrum of the field averaged over
  latitudes ``|lat| <= 60`` deg with cell-area weights (`metrics.zonal_spectrum`): how much variance each
  scale holds. Smooth interpolants fall off at high k; noisy ones lift it.
- `eof`: coefficients of the leading empirical orthogonal functions of the *training* times:
  `c = V^T (sqrt(w) * (x - mean_train))`, with `w` the cell-area weights and `V` the leading right
  singular vectors of the area-weighted training anomalies (at most `n_eofs`, and fewer than the
  training times). The large-scale patterns and their amplitudes, in the variable's units.

Real set: the true fields at the T held-out times; a generated set: one member at every held-out time
(T fields; scores averaged over the members). `sciffusion.core.diffusion.sample_quality` then gives precision
(share of generated fields inside the k-NN manifold of the true ones), recall (share of true fields
inside the generated manifold), density and coverage, with k lowered to T - 1 when T is small. Blocks
of T consecutive training times scored the same way are the floor row `training times`. Cells that are NaN in any
field are left out of both feature spaces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sciffusion.core.diffusion.sample_quality import density_coverage, precision_recall
from sciffusion.plugins.climate.grid import lat_weights
from sciffusion.plugins.climate.metrics import zonal_spectrum

SPACES = ("zonal_spectrum", "eof")
LAT_BAND = 60.0  # as the experiment's spectra: beyond it meridians converge and zonal spectra mislead


def spectrum_features(fields: np.ndarray, lat: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`log10 P(k)`, k >= 1, of each field `(n, lat, lon)` over the latitude rows `rows` (boolean)."""
    out = [zonal_spectrum(f[rows], lat[rows], LAT_BAND)[1][1:] for f in fields]
    return np.log10(np.maximum(np.stack(out), 1e-30))


class EOFBasis:
    """Area-weighted EOFs of training fields `(n, lat, lon)` on the cells `cells` (boolean (lat, lon)).

    Anomalies `a = sqrt(w_lat) * (x - mean)` over the cells; `V` = leading right singular vectors of the
    training anomalies, `n_modes = min(n_eofs, n_train - 1)`; `coefficients(x) = a(x) @ V`.
    """

    def __init__(self, train: np.ndarray, lat: np.ndarray, cells: np.ndarray, n_eofs: int = 8):
        self.cells = cells
        self.sqrt_w = np.sqrt(np.broadcast_to(lat_weights(lat)[:, None], cells.shape))[cells]
        flat = train[:, cells].astype(np.float64)
        self.mean = flat.mean(0)
        _, s, vt = np.linalg.svd((flat - self.mean) * self.sqrt_w, full_matrices=False)
        n = max(1, min(n_eofs, train.shape[0] - 1))
        self.modes = vt[:n].T
        self.explained = float((s[:n] ** 2).sum() / max((s**2).sum(), 1e-300))

    def coefficients(self, fields: np.ndarray) -> np.ndarray:
        return ((fields[:, self.cells].astype(np.float64) - self.mean) * self.sqrt_w) @ self.modes


def _knn_scores(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int) -> dict[str, float]:
    r, f = torch.from_numpy(real), torch.from_numpy(fake)
    return precision_recall(r, f, k_pr) | density_coverage(r, f, k_dc)


def _mean_scores(real: np.ndarray, fakes: Sequence[np.ndarray], k_pr: int, k_dc: int) -> dict[str, float]:
    """Scores averaged over several generated sets of the real set's size, with their spread (`_sd`)."""
    runs = [_knn_scores(real, f, k_pr, k_dc) for f in fakes]
    out: dict[str, float] = {}
    for name in runs[0]:
        v = np.array([r[name] for r in runs])
        out[name], out[f"{name}_sd"] = float(v.mean()), float(v.std())
    return out


def _common_finite(*sets: np.ndarray) -> np.ndarray:
    """(lat, lon) mask of the cells finite in every field of every set `(..., lat, lon)`."""
    ok = np.ones(sets[0].shape[-2:], bool)
    for s in sets:
        ok &= np.isfinite(s).reshape(-1, *s.shape[-2:]).all(0)
    return ok


def variable_scores(
    truth: np.ndarray, generated: Mapping[str, np.ndarray], train: np.ndarray, lat: np.ndarray,
    n_eofs: int = 8, k_pr: int = 3, k_dc: int = 5,
) -> dict:
    """Scores of one variable: `truth (T, lat, lon)` held-out fields, `generated[name] (K, T, lat, lon)`
    ensembles, `train (N, lat, lon)` training fields.

    A generated set is one member at every held-out time (T fields, like the truth): the members of one
    time share their coarse input, so pooling them would shrink every k-NN ball to the ensemble spread.
    Scores are averaged over the K members (`_sd`: their spread); the row `training times` averages over
    the N // T blocks of T consecutive training times. Returns `{space: {name: scores}}`, k and the EOF
    variance fraction.
    """
    lat = np.asarray(lat, dtype=np.float64)
    t = truth.shape[0]
    sets = {name: list(g) for name, g in generated.items()}
    sets["training times"] = [train[i : i + t] for i in range(0, train.shape[0] - t + 1, t)]
    if not sets["training times"]:
        del sets["training times"]
    cells = _common_finite(truth, train, *generated.values())
    rows = cells.all(1) & (np.abs(lat) <= LAT_BAND)
    kp, kd = min(k_pr, t - 1), min(k_dc, t - 1)
    out: dict = {"k_precision_recall": kp, "k_density_coverage": kd}
    if rows.any():
        real = spectrum_features(truth, lat, rows)
        out["zonal_spectrum"] = {
            n: _mean_scores(real, [spectrum_features(f, lat, rows) for f in fs], kp, kd) for n, fs in sets.items()
        }
    if cells.any():
        basis = EOFBasis(train, lat, cells, n_eofs)
        real = basis.coefficients(truth)
        out["eof"] = {n: _mean_scores(real, [basis.coefficients(f) for f in fs], kp, kd) for n, fs in sets.items()}
        out["eof_modes"], out["eof_variance_explained"] = basis.modes.shape[1], basis.explained
    return out


def training_fields(ds, train_idx: Sequence[int], variables: Sequence[str], max_times: int = 256) -> np.ndarray:
    """The training times' fields `(N, C, lat, lon)`, at most `max_times` of them, evenly spaced."""
    from sciffusion.plugins.climate.io import load_times

    idx = list(train_idx)
    if len(idx) > max_times:
        idx = [idx[i] for i in np.linspace(0, len(idx) - 1, max_times).round().astype(int)]
    return load_times(ds, idx, variables)


def distribution_scores(
    truth: np.ndarray, generated: Mapping[str, np.ndarray], train: np.ndarray, lat: np.ndarray,
    variables: Sequence[str], n_eofs: int = 8,
) -> dict:
    """The `distribution` entry of the experiment's metrics.json: per variable, `variable_scores`.

    `truth (T, C, lat, lon)`, `generated[name] (K, T, C, lat, lon)`, `train (N, C, lat, lon)`.
    Needs at least 2 held-out times (k >= 1) and 2 training times.
    """
    if truth.shape[0] < 2 or train.shape[0] < 2:
        return {"skipped": f"{truth.shape[0]} held-out and {train.shape[0]} training times; the k-NN scores need 2 of each"}
    out = {}
    for c, v in enumerate(variables):
        gen = {name: g[:, :, c] for name, g in generated.items()}
        out[v] = variable_scores(truth[:, c], gen, train[:, c], lat, n_eofs)
    return out
