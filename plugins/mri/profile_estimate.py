"""Estimate the slice profile of a thick-slice scan from its own in-plane resolution.

A scan with factors such as `(1, 1, f)` is sharp along its in-plane axes and blurred by an unknown
slice profile `p*` along the thick axis `r`. Blurring an in-plane axis `a` with a candidate profile
`p` (`degrade.profile_matrix`, factor `f`) gives a volume `v_p` that is reduced along both `a` and
`r`. When `p = p*` the two axes went through the same degradation, so, for anatomy whose power
spectrum is about the same along `a` and `r` (the assumption of self-supervised super-resolution
from in-plane data), their spectra agree:

    S_a(k; p) = P_a(k; v_p) - N_a(k; p)    and    S_r(k; p) = P_r(k; v_p) - N_r(k; p),

with `P_a`, `P_r` the mean Hann-windowed periodograms of the lines of `v_p` along `a` and `r`
(the same central `L`-voxel cube of both, `L` = the shorter of the two axes), and `N` the exact
expectation of those periodograms for white noise of standard deviation `sigma` in the scan:
along `a` the noise went through `p`, `N_a(k) = sigma^2 sum_n |F(h W_p[:, n])(k)|^2`; along `r` it
is white, `N_r(k) = sigma^2 mean_j (sum_n W_p[j, n]^2) sum_j h_j^2`. The estimate is the candidate
that minimises the log-spectral distance

    D(p) = mean_{(a, r)} var_{k = 1..L/2} (log(S_a(k) + eps) - log(S_r(k) + eps)),

`eps` a fraction `EPS` of the mean signal power (negative powers are clipped at 0), over every pair
of an in-plane axis `a` and a thick axis `r`. The variance rather than the mean square leaves out a
constant ratio between the axes' spectra: anatomy is not isotropic (a head is longer than it is wide,
which changes the power along an axis by 10-40 % at every frequency), while profiles differ in how
the ratio changes with frequency. What the spectra pin down is the profile's width (its second
moment); a box and a Gaussian of the same standard deviation are hard to tell apart, and matter
little for what the estimate is used for. The candidates span the degradation family the
models are trained on: Gaussians of FWHM 0.4 f to 1.6 f, boxes of width 0.6 f to 1.4 f, and boxes
convolved with a Gaussian.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sciffusion.plugins.mri.conditioning import (
    AUTO,
    Conditioning,
    estimate_noise_sigma,
    profile_text,
)
from sciffusion.plugins.mri.degrade import SliceProfile, profile_matrix

EPS = 1e-3
MIN_SIZE = 8  # voxels per axis of the compared cube


def candidate_profiles() -> tuple[SliceProfile, ...]:
    """The profiles the estimate chooses from (sizes in units of the factor)."""
    gauss = [SliceProfile("gaussian", fwhm=round(s, 2)) for s in np.arange(0.4, 1.61, 0.1)]
    box = [SliceProfile("box", width=round(w, 2)) for w in np.arange(0.6, 1.41, 0.1)]
    both = [SliceProfile("box_gaussian", width=w, fwhm=s) for w in (0.8, 1.0, 1.2) for s in (0.3, 0.5, 0.7)]
    return tuple(gauss + box + both)


@dataclass(frozen=True)
class ProfileEstimate:
    """The chosen profile and the distance `D(p)` of every candidate (`distances[i]` for `candidates[i]`)."""

    profile: SliceProfile
    candidates: tuple[SliceProfile, ...]
    distances: np.ndarray


def axes_for_estimate(scale: tuple[int, int, int]) -> tuple[list[int], list[int], int]:
    """The in-plane axes (factor 1), the thick axes and their common factor; ValueError when the
    scan has no in-plane axis to learn from or its thick axes differ in factor."""
    inplane = [i for i, f in enumerate(scale) if f == 1]
    thick = [i for i, f in enumerate(scale) if f > 1]
    if not inplane or not thick:
        raise ValueError(f"the slice profile can be estimated only for a thick-slice scan (some axes at factor 1, "
                         f"e.g. 1,1,4), not for scale {tuple(scale)}; give --slice-profile or 'unknown'")
    if len({scale[i] for i in thick}) > 1:
        raise ValueError(f"the slice profile can be estimated only when every thick axis has the same factor, "
                         f"not for scale {tuple(scale)}")
    return inplane, thick, scale[thick[0]]


def estimate_slice_profile(lr: np.ndarray, scale: tuple[int, int, int], noise_sigma: float,
                           candidates: tuple[SliceProfile, ...] | None = None) -> ProfileEstimate:
    """The slice profile of the thick axes of `lr` that best matches its in-plane spectra (module docstring).

    `lr` is the scan on its own grid (thick axes already reduced by `scale`), `noise_sigma` its noise
    standard deviation in the same units (e.g. `conditioning.estimate_noise_sigma(lr)`).
    """
    inplane, thick, f = axes_for_estimate(scale)
    x = np.asarray(lr, np.float64)
    candidates = candidate_profiles() if candidates is None else tuple(candidates)
    dist = np.array([np.mean([_distance(x, a, r, f, p, noise_sigma) for a in inplane for r in thick])
                     for p in candidates])
    return ProfileEstimate(candidates[int(np.argmin(dist))], candidates, dist)


def _distance(x: np.ndarray, a: int, r: int, f: int, p: SliceProfile, sigma: float) -> float:
    """`D` for one candidate and one pair of axes (module docstring)."""
    w = profile_matrix(x.shape[a], f, p)
    v = np.moveaxis(np.tensordot(w, x, axes=(1, a)), 0, a)
    size = min(v.shape[a], v.shape[r])
    if size < MIN_SIZE:
        raise ValueError(f"the slice profile needs at least {MIN_SIZE} voxels per axis after reduction, got {size}")
    start_a, start_r = (v.shape[a] - size) // 2, (v.shape[r] - size) // 2
    cube = np.take(np.take(v, range(start_a, start_a + size), axis=a), range(start_r, start_r + size), axis=r)
    window = np.hanning(size + 2)[1:-1]
    noise_a, noise_r = noise_periodograms(w[start_a:start_a + size], window, sigma)
    s_a = np.clip(mean_periodogram(cube, a, window) - noise_a, 0, None)[1:]
    s_r = np.clip(mean_periodogram(cube, r, window) - noise_r, 0, None)[1:]
    eps = EPS * 0.5 * (s_a.mean() + s_r.mean()) + 1e-300
    d = np.log(s_a + eps) - np.log(s_r + eps)
    return float(np.mean((d - d.mean()) ** 2))


def noise_periodograms(rows: np.ndarray, window: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Expected windowed periodograms of white noise (std `sigma`) after the blur `rows` (`W`, L x n).

    Along the blurred axis `E P(k) = sigma^2 sum_n |rfft(h W[:, n])(k)|^2`; across it (a line at fixed
    blurred index, white along the line) `E P(k) = sigma^2 mean_j (sum_n W[j, n]^2) sum_j h_j^2`.
    """
    along = sigma**2 * (np.abs(np.fft.rfft(window[:, None] * rows, axis=0)) ** 2).sum(1)
    across = sigma**2 * float((rows**2).sum(1).mean()) * float((window**2).sum()) * np.ones_like(along)
    return along, across


def mean_periodogram(v: np.ndarray, axis: int, window: np.ndarray) -> np.ndarray:
    """`mean over lines of |rfft(window * line)|^2` for the lines of `v` along `axis`."""
    shape = [1] * v.ndim
    shape[axis] = window.size
    spec = np.abs(np.fft.rfft(v * window.reshape(shape), axis=axis)) ** 2
    return np.moveaxis(spec, axis, 0).reshape(spec.shape[axis], -1).mean(1)


def resolve_auto_profile(conditioning: Conditioning | None, lr: np.ndarray, scale: tuple[int, int, int]
                         ) -> tuple[Conditioning | None, dict | None]:
    """`conditioning` with an `"auto"` slice profile replaced by its estimate, and a record of it.

    Thick-slice scans get `estimate_slice_profile(lr, scale, estimate_noise_sigma(lr))`; a scan with
    no axis at full resolution (or too few voxels) has nothing to estimate from, so its profile
    becomes unknown and the record says why. Any other `conditioning` is returned as is, with no record.
    """
    if conditioning is None or conditioning.profile != AUTO:
        return conditioning, None
    try:
        fit = estimate_slice_profile(lr, scale, estimate_noise_sigma(lr))
    except ValueError as err:
        return replace(conditioning, profile=None), {"slice_profile": AUTO, "estimated": None, "why": str(err)}
    return replace(conditioning, profile=fit.profile), {"slice_profile": AUTO, "estimated": profile_text(fit.profile)}
