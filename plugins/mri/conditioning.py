"""What the conditioned denoiser is told about the degradation: the noise level and the slice profile.

A conditioned model (`SRConfig.conditioned`) receives, besides the cubic interpolation, a vector
`d` of `DEGRADATION_DIM` numbers (`degradation_vector`) describing

- the noise: its standard deviation `sigma_n = sigma / (b - a)` in the model's normalised intensity
  units (`transforms.PercentileScaler` of the low-res input), fed as `log(1 + sigma_n / 0.01)`;
- the slice profile of the reduced axes: its family (one-hot Gaussian / box / box (x) Gaussian), its
  Gaussian FWHM and box width in units of the factor `f`, and the FWHM of the Gaussian with the same
  standard deviation, `2 sqrt(2 ln 2) sqrt(s_g^2 + w^2 / 12)`.

Each part carries a "known" flag; an unknown part is all zeros (flag 0), so the model also runs
blind. Training draws the degradation, so both parts are known there, and each is dropped to
unknown with some probability (as classifier-free guidance drops its condition). At inference the
slice profile comes from the user (`parse_slice_profile`) and the noise from the user or from the
scan itself (`estimate_noise_sigma`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from sciffusion.plugins.mri.degrade import FWHM_TO_SIGMA, PROFILES, SliceProfile

DEGRADATION_DIM = 9
NOISE_UNIT = 0.01  # sigma_n enters as log(1 + sigma_n / NOISE_UNIT)
MAX_PROFILE_SIZE = 4.0  # largest FWHM or width (units of f) that --slice-profile accepts
UNKNOWN = "unknown"
AUTO = "auto"
PROFILE_HELP = ("slice profile of the reduced axes, widths in units of the factor f: gaussian[:FWHM] (default FWHM 1), "
                "box[:WIDTH] (default 1: each low-res voxel the mean of its block), box_gaussian[:WIDTH,FWHM] "
                "(default 1,0.5), auto (estimated from a thick-slice scan's in-plane axes; unknown for other scans; "
                "the default for --input) or unknown")
NOISE_HELP = ("noise standard deviation of the input in its own intensity units: a number, auto (estimated from the "
              "scan, the default) or unknown")


@dataclass(frozen=True)
class Conditioning:
    """The user's description of a scan's degradation.

    `noise`: `"auto"` (estimate it from the scan), `None` (unknown) or the standard deviation in the
    scan's intensity units; `profile`: the slice profile, or `None` (unknown).
    """

    noise: float | str | None = AUTO
    profile: SliceProfile | None = None

    def __post_init__(self) -> None:
        n = self.noise
        if not (n is None or n == AUTO or (isinstance(n, (int, float)) and np.isfinite(n) and n >= 0)):
            raise ValueError(f"noise sigma must be 'auto', 'unknown' or a number >= 0, got {n!r}")
        if not (self.profile is None or self.profile == AUTO or isinstance(self.profile, SliceProfile)):
            raise ValueError(f"slice profile must be 'auto', unknown (None) or a SliceProfile, got {self.profile!r}")


BLIND = Conditioning(None, None)


def parse_noise_sigma(text: str) -> float | str | None:
    """`--noise-sigma`: `"auto"`, `"unknown"` (-> None) or a finite number >= 0 (scanner units)."""
    t = str(text).strip().lower()
    if t in (AUTO, UNKNOWN):
        return AUTO if t == AUTO else None
    try:
        v = float(t)
    except ValueError:
        raise ValueError(f"--noise-sigma: expected auto, unknown or a number >= 0, got {text!r}") from None
    if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"--noise-sigma: expected auto, unknown or a number >= 0, got {text!r}")
    return v


def parse_slice_profile(text: str) -> SliceProfile | str | None:
    """`--slice-profile`: `gaussian[:FWHM]`, `box[:WIDTH]`, `box_gaussian[:WIDTH,FWHM]`, `auto` or `unknown` (-> None).

    Sizes are in units of the factor `f` and must lie in `(0, MAX_PROFILE_SIZE]`.
    """
    t = str(text).strip().lower()
    if t in (UNKNOWN, AUTO):
        return None if t == UNKNOWN else AUTO
    kind, _, rest = t.partition(":")
    kind = kind.replace("-", "_")
    if kind not in PROFILES:
        raise ValueError(f"--slice-profile: unknown family {kind!r} in {text!r}; expected gaussian, box, "
                         "box_gaussian, auto or unknown")
    want = {"gaussian": 1, "box": 1, "box_gaussian": 2}[kind]
    try:
        vals = [float(v) for v in rest.split(",")] if rest else []
    except ValueError:
        raise ValueError(f"--slice-profile: {text!r} has a size that is not a number") from None
    if len(vals) not in (0, want) or not all(0 < v <= MAX_PROFILE_SIZE for v in vals):
        form = {"gaussian": "gaussian:FWHM", "box": "box:WIDTH", "box_gaussian": "box_gaussian:WIDTH,FWHM"}[kind]
        raise ValueError(f"--slice-profile: {text!r} should be {form} with sizes in (0, {MAX_PROFILE_SIZE:g}] "
                         "(units of the factor)")
    if kind == "gaussian":
        return SliceProfile("gaussian", fwhm=vals[0] if vals else 1.0)
    if kind == "box":
        return SliceProfile("box", width=vals[0] if vals else 1.0)
    return SliceProfile("box_gaussian", width=vals[0] if vals else 1.0, fwhm=vals[1] if vals else 0.5)


def profile_text(profile: SliceProfile | str | None) -> str:
    """The `--slice-profile` spelling of `profile` (inverse of `parse_slice_profile`)."""
    if profile is None or profile == AUTO:
        return UNKNOWN if profile is None else AUTO
    if profile.kind == "gaussian":
        return f"gaussian:{profile.fwhm:g}"
    if profile.kind == "box":
        return f"box:{profile.width:g}"
    return f"box_gaussian:{profile.width:g},{profile.fwhm:g}"


def degradation_vector(noise_sigma: float | None, profile: SliceProfile | None) -> torch.Tensor:
    """The conditioning vector `d` (float32, `(DEGRADATION_DIM,)`); `None` marks a part as unknown.

    `d = [k_n, k_n log(1 + sigma_n / 0.01), k_p, 1_gauss, 1_box, 1_box_gauss, s, w, e]` with `k` the
    known flags, `sigma_n` the noise std in normalised units, `s` the Gaussian FWHM and `w` the box
    width (units of `f`, 0 where the family has none) and `e = 2 sqrt(2 ln 2) sqrt(s_g^2 + w^2/12)`
    the FWHM of the Gaussian of the profile's standard deviation (`s_g = s / (2 sqrt(2 ln 2))`).
    """
    if isinstance(profile, str):
        raise ValueError(f"slice profile {profile!r} must be resolved first (profile_estimate.resolve_auto_profile)")
    d = np.zeros(DEGRADATION_DIM, np.float32)
    if noise_sigma is not None:
        if not (np.isfinite(noise_sigma) and noise_sigma >= 0):
            raise ValueError(f"noise sigma must be a finite number >= 0, got {noise_sigma}")
        d[0], d[1] = 1.0, np.log1p(noise_sigma / NOISE_UNIT)
    if profile is not None:
        s = profile.fwhm if profile.kind != "box" else 0.0
        w = profile.width if profile.kind != "gaussian" else 0.0
        d[2] = 1.0
        d[3 + PROFILES.index(profile.kind)] = 1.0
        d[6], d[7] = s, w
        d[8] = np.sqrt((s * FWHM_TO_SIGMA) ** 2 + w**2 / 12.0) / FWHM_TO_SIGMA
    return torch.from_numpy(d)


# ----- noise estimation -----------------------------------------------------------------------------
HIGH_PASS = np.array([1.0, -3.0, 3.0, -1.0]) / np.sqrt(20.0)  # third difference, unit norm
MAD_TO_SIGMA = 1.4826  # 1 / Phi^{-1}(3/4)
TISSUE_SNR = 3.0  # blocks brighter than this many sigmas count as tissue (Rician ~ Gaussian there)


def estimate_noise_sigma(x: np.ndarray, iterations: int = 4) -> float:
    """Robust estimate of the standard deviation of white noise in a volume (its own units).

    The separable high-pass `h = d3 (x) d3 (x) d3` with `d3 = [1, -3, 3, -1] / sqrt(20)` has unit
    norm, so white noise of std `sigma` gives `h * x ~ N(0, sigma^2)` at every voxel, while a signal
    that is locally a polynomial of degree < 3 along any one axis gives 0. Edges are a minority, so
    `sigma = 1.4826 median |h * x|` (MAD) over tissue voxels. A voxel counts as tissue when the
    whole 4^3 support of `h` is: the smallest local 3^3 mean over the support exceeds
    `TISSUE_SNR sigma` (refined over `iterations` passes from all non-zero voxels). There Rician
    (magnitude) noise is close to Gaussian of the same `sigma`, whereas the background's Rayleigh
    noise is narrower (std 0.66 sigma) and a masked background is exactly zero.
    Meant for magnitude images (background near 0); returns 0 for a constant volume.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 3 or min(x.shape) < len(HIGH_PASS) + 1:
        raise ValueError(f"noise estimation needs a 3-D volume of at least 5 voxels per axis, got {x.shape}")
    h = x
    for axis in range(3):
        h = ndi.correlate1d(h, HIGH_PASS, axis=axis, mode="nearest")
    core = tuple(slice(2, n - 2) for n in x.shape)  # away from the replicated edges
    h = np.abs(h[core]).ravel()
    m = ndi.minimum_filter(ndi.uniform_filter(x, 3, mode="nearest"), len(HIGH_PASS), mode="nearest")[core].ravel()
    sel = m > 0 if (m > 0).any() else np.ones_like(m, bool)
    sigma = MAD_TO_SIGMA * float(np.median(h[sel]))
    for _ in range(iterations):
        sel = m > max(TISSUE_SNR * sigma, 0.0)
        if not sel.any() or sigma == 0:
            break
        sigma = MAD_TO_SIGMA * float(np.median(h[sel]))
    return sigma


def consistency_sigma(conditioning: Conditioning, lr: np.ndarray) -> float:
    """The noise level the data-consistency step assumes for `lr`, in its units.

    `max(sigma_given, sigma_hat)` with `sigma_hat = estimate_noise_sigma(lr)` (only `sigma_hat` when
    the noise is `"auto"` or unknown): a real scan never follows its nominal slice profile exactly,
    and the estimate's floor on a clean scan keeps that mismatch from being forced into the output.
    """
    n = conditioning.noise
    estimate = estimate_noise_sigma(lr)
    return estimate if n is None or n == AUTO else max(float(n), estimate)


def resolve(conditioning: Conditioning | None, lr: np.ndarray, intensity_width: float
            ) -> tuple[torch.Tensor, dict]:
    """The vector `d` for a low-res input `lr` (scanner units) and a record of what was used.

    `intensity_width` is `b - a` of the input's percentile scaler, so `sigma_n = sigma / (b - a)`.
    `None` is the blind setting. The record holds the noise sigma in scanner units (estimated or
    given), in normalised units, and the profile's spelling.
    """
    c = conditioning or BLIND
    sigma = estimate_noise_sigma(lr) if c.noise == AUTO else c.noise
    sigma_n = None if sigma is None else float(sigma) / float(intensity_width)
    rec = {"noise_sigma": AUTO if c.noise == AUTO else (UNKNOWN if sigma is None else float(sigma)),
           "noise_sigma_used": None if sigma is None else round(float(sigma), 6),
           "noise_sigma_normalised": None if sigma_n is None else round(sigma_n, 6),
           "slice_profile": profile_text(c.profile)}
    return degradation_vector(sigma_n, c.profile), rec
