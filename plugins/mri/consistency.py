"""Data consistency: make a super-resolved volume agree with the low-resolution scan it came from.

When the slice profile is known, the degradation is a known linear operator `A = A_x (x) A_y (x) A_z`
(`degrade.profile_matrix` along each reduced axis), and the scan is `l = A y + n` with noise of
standard deviation `sigma`. An estimate `y_hat` leaves the residual `r = l - A y_hat = A e + n`
(`e = y - y_hat`). The part of `r` above the noise is error the estimate can still remove, so

    y_c = y_hat + A^T (A A^T)^+ W r,

where `W` is a Wiener filter in the eigenbasis of `A A^T = (x)_i U_i diag(lambda_i) U_i^T`: the
components are grouped into bins by the rank of the eigenvalue product `lambda`, and each bin `b` gets the gain
`g_b = s_b / (s_b + sigma^2)`, `s_b = max(P_b - sigma^2, 0)`, from the mean power `P_b` of the
residual's components in that bin. Without noise every gain is 1 and `A y_c = l` exactly (the
minimum-norm change that makes the estimate consistent); where the residual is at the noise level
the gain is 0 and the estimate is left as it is. `(A A^T)^+` floors the eigenvalues at
`EIGEN_FLOOR * max lambda`, so the components that the scan barely measures are never amplified by
more than `EIGEN_FLOOR^{-1/2}`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sciffusion.plugins.mri.degrade import SliceProfile, apply_along_axes, degradation_matrices

EIGEN_FLOOR = 1e-3
BINS = 16
MIN_BIN = 64


@dataclass(frozen=True)
class Consistency:
    """The linear correction fitted on one estimate: `y -> y + A^T U (gain / lambda) U^T (l - A y)`."""

    matrices: tuple[np.ndarray | None, ...]  # A_i, (n_i // f_i, n_i); None where f_i = 1
    bases: tuple[np.ndarray | None, ...]  # U_i, eigenvectors of A_i A_i^T
    weights: np.ndarray  # gain / max(lambda, floor) on the low-resolution eigen grid
    gains: np.ndarray  # the Wiener gain of each bin

    def __call__(self, y: np.ndarray, lr: np.ndarray) -> np.ndarray:
        """`y + A^T U (weights * U^T (l - A y))` in float64, returned as float32."""
        y = np.asarray(y, np.float64)
        r = np.asarray(lr, np.float64) - apply_along_axes(y, self.matrices)
        z = apply_along_axes(self.weights * apply_along_axes(r, _transposed(self.bases)), self.bases)
        return (y + apply_along_axes(z, _transposed(self.matrices))).astype(np.float32)


def _transposed(mats) -> tuple[np.ndarray | None, ...]:
    return tuple(None if m is None else m.T for m in mats)


def _eigen(mats) -> tuple[tuple[np.ndarray | None, ...], np.ndarray]:
    """The eigenvectors `U_i` of each `A_i A_i^T` and the product grid `lambda = (x)_i lambda_i`."""
    bases, lam = [], np.ones((1, 1, 1))
    for axis, m in enumerate(mats):
        if m is None:
            bases.append(None)
            continue
        e, u = _frequency_ordered_eigen(m @ m.T)
        shape = [1, 1, 1]
        shape[axis] = -1
        lam = lam * np.clip(e, 0.0, None).reshape(shape)
        bases.append(u)
    return tuple(bases), lam


def _frequency_ordered_eigen(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of `A_i A_i^T` whose ties are broken by frequency.

    A box profile of width 1 gives `A_i A_i^T = I / f`, for which every basis is an eigenbasis;
    decomposing `G - delta L` (`L` the second-difference matrix with reflecting ends, `delta` a
    millionth of `||G||`) picks the cosine basis there, ordered from low to high frequency, and
    changes nothing where the eigenvalues are distinct. The eigenvalues returned are `u^T G u`.
    """
    n = len(gram)
    lap = 2.0 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    lap[0, 0] = lap[-1, -1] = 1.0
    _, u = np.linalg.eigh(gram - 1e-6 * np.abs(gram).max() * lap)
    return np.einsum("ji,jk,ki->i", u, gram, u), u


def wiener_gains(residual_eigen: np.ndarray, lam: np.ndarray, sigma: float, bins: int = BINS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin gains `g_b = s_b / (s_b + sigma^2)`, `s_b = max(P_b - sigma^2, 0)`, and each component's bin.

    `residual_eigen` is `U^T r` on the low-resolution grid (`U` orthonormal, so white noise of
    variance `sigma^2` stays white with the same variance); bins are dyadic in the rank of
    `lambda` (`_dyadic_bins`). `P_b` is the mean of `(U^T r)^2` over bin `b`. `sigma = 0` gives gains of 1.
    """
    log_lam = np.log(np.broadcast_to(np.maximum(lam, 1e-300), residual_eigen.shape))
    which = _dyadic_bins(log_lam, bins)
    used = int(which.max()) + 1  # the largest eigenvalue is always in the last bin
    counts = np.bincount(which.ravel(), minlength=used)
    power = np.bincount(which.ravel(), weights=(residual_eigen**2).ravel(), minlength=used) / np.maximum(counts, 1)
    if sigma <= 0:
        return np.ones(used), which
    s = np.maximum(power - sigma**2, 0.0)
    return s / (s + sigma**2), which


def _dyadic_bins(log_lam: np.ndarray, bins: int, smallest: int = MIN_BIN) -> np.ndarray:
    """Bin `b` of each component: ranks by `lambda` in `[1 - 2^{-b}, 1 - 2^{-b-1})` (bin 0: the smaller
    half), so the few best-measured components (the lowest frequencies, where an estimate's error
    above the noise sits) get bins of their own; the last bin holds at least `smallest` components."""
    n = log_lam.size
    ranks = np.empty(n, np.int64)
    ranks[np.argsort(log_lam, axis=None, kind="stable")] = np.arange(n)
    which = np.floor(np.log2(n / (n - ranks).astype(np.float64))).astype(np.int64)
    last = max(int(np.floor(np.log2(max(n / smallest, 1.0)))), 0)  # keeps >= `smallest` in the last bin
    return np.minimum(which, min(last, bins - 1)).reshape(log_lam.shape)


def fit_consistency(estimate: np.ndarray, lr: np.ndarray, scale: tuple[int, int, int], profile: SliceProfile,
                    sigma: float) -> Consistency:
    """The data-consistency correction for `estimate` (refined grid) against the scan `lr` (module docstring).

    `sigma` is the noise standard deviation of `lr` in its units. The gains come from `estimate`'s
    residual; the returned correction is linear and can be applied to other volumes of the same
    scan (the K samples) with the same gains.
    """
    expected = tuple(n // f for n, f in zip(estimate.shape, scale))
    if tuple(lr.shape) != expected:
        raise ValueError(f"data consistency: scan shape {tuple(lr.shape)} is not {expected} for the refined "
                         f"shape {tuple(estimate.shape)} at scale {scale}")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"data consistency: noise sigma must be finite and >= 0, got {sigma}")
    mats = degradation_matrices(estimate.shape, scale, profile)
    bases, lam = _eigen(mats)
    r = np.asarray(lr, np.float64) - apply_along_axes(np.asarray(estimate, np.float64), mats)
    gains, which = wiener_gains(apply_along_axes(r, _transposed(bases)), lam, sigma)
    lam = np.broadcast_to(lam, which.shape)
    return Consistency(mats, bases, gains[which] / np.maximum(lam, EIGEN_FLOOR * lam.max()), gains)
