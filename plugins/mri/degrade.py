"""Degradation models that make training pairs, and the interpolation baselines.

Index convention (matches `io.lr_affine` / `io.sr_affine`): low-resolution voxel `j` along an axis
with factor `f` is centred on high-resolution index `f j + (f - 1) / 2`; high-resolution voxel
`k` sits at low-resolution index `(k + 0.5) / f - 0.5`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def parse_scale(scale: int | str | tuple | list, name: str = "scale") -> tuple[int, int, int]:
    """Parse `2`, `"2"`, `"1,1,4"` or `(1, 1, 4)` into three integer factors in 1..8, not all 1."""
    if isinstance(scale, str):
        parts = [s for s in scale.replace("x", ",").split(",") if s.strip()]
    elif isinstance(scale, (int, np.integer)):
        parts = [scale]
    else:
        parts = list(scale)
    try:
        vals = [float(p) for p in parts]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected an integer or three comma-separated integers, got {scale!r}") from err
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or any(v != int(v) or not 1 <= v <= 8 for v in vals) or vals == [1, 1, 1]:
        raise ValueError(
            f"{name}: {scale!r} does not divide sensibly; use an integer factor 2..8 or three "
            "integers in 1..8 such as 1,1,4"
        )
    return tuple(int(v) for v in vals)


def crop_to_multiple(x: np.ndarray, scale: tuple[int, int, int]) -> np.ndarray:
    """Crop trailing voxels so every axis is a multiple of its factor."""
    return x[tuple(slice(0, (n // f) * f) for n, f in zip(x.shape, scale))]


def degrade(hr: np.ndarray, scale: tuple[int, int, int], fwhm: float = 1.0) -> np.ndarray:
    """Low-resolution volume from `hr`: slice-profile blur then decimation.

    Along each axis with factor `f > 1` the slice profile is a Gaussian of FWHM `fwhm * f`
    high-resolution voxels (sigma = FWHM / (2 sqrt(2 ln 2))); the blurred volume is then read at
    the low-resolution centres `f j + (f - 1)/2` (linear interpolation between the two central
    voxels when `f` is even). Shape: `(X, Y, Z) -> (X // f_x, Y // f_y, Z // f_z)`.
    """
    hr = np.asarray(hr, np.float32)
    if any(n < 2 * f for n, f in zip(hr.shape, scale)):
        raise ValueError(f"degrade: volume {hr.shape} too small for scale {scale}")
    sig = [fwhm * f * FWHM_TO_SIGMA if f > 1 else 0.0 for f in scale]
    blurred = ndi.gaussian_filter(hr, sig, mode="nearest")
    out = blurred
    for axis, f in enumerate(scale):
        if f == 1:
            continue
        n = out.shape[axis] // f
        lo = np.arange(n) * f + (f - 1) // 2
        a = np.take(out, lo, axis=axis)
        out = a if f % 2 == 1 else 0.5 * (a + np.take(out, lo + 1, axis=axis))
    return np.ascontiguousarray(out, dtype=np.float32)


def upsample(lr: np.ndarray, scale: tuple[int, int, int], order: int = 3) -> np.ndarray:
    """Interpolate `lr` onto the refined grid: order 1 = trilinear, order 3 = cubic B-spline.

    Samples the interpolant at low-resolution index `(k + 0.5)/f - 0.5` for every refined voxel
    `k` (scipy's `zoom` in grid mode), repeating edge values. Shape: `(x, y, z) -> (f x, ...)`.
    """
    out = ndi.zoom(np.asarray(lr, np.float32), scale, order=order, grid_mode=True, mode="nearest")
    return np.ascontiguousarray(out, dtype=np.float32)


# ----- slice profiles, noise: the degradation family ------------------------------------------------
PROFILES = ("gaussian", "box", "box_gaussian")


@dataclass(frozen=True)
class SliceProfile:
    """A slice profile along one reduced axis, in units of that axis's factor `f`.

    - `"gaussian"`: Gaussian of FWHM `fwhm * f` refined voxels;
    - `"box"`: box of width `width * f` (the slice thickness; `width = 1` is a thickness equal to the
      spacing, below 1 leaves gaps, above 1 overlaps neighbouring slices);
    - `"box_gaussian"`: the box convolved with the Gaussian.
    """

    kind: str = "gaussian"
    fwhm: float = 1.0
    width: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in PROFILES:
            raise ValueError(f"unknown slice profile {self.kind!r}; expected one of {', '.join(PROFILES)}")
        if (self.kind != "box" and not self.fwhm > 0) or (self.kind != "gaussian" and not self.width > 0):
            raise ValueError(f"slice profile {self}: fwhm and width must be > 0")


def _gauss_antiderivative_of_cdf(u: np.ndarray, sigma: float) -> np.ndarray:
    """`G(u) = int_{-inf}^u Phi(s / sigma) ds = sigma (z Phi(z) + phi(z))`, `z = u / sigma`."""
    from scipy.special import ndtr

    z = u / sigma
    return sigma * (z * ndtr(z) + np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi))


def profile_integral(a: np.ndarray, b: np.ndarray, profile: SliceProfile, f: int) -> np.ndarray:
    """`int_a^b p(x) dx` for the profile `p` (unit mass, centred at 0) at factor `f`, in closed form.

    Gaussian: `Phi(b / s) - Phi(a / s)`; box of width `W`: `|[a, b] & [-W/2, W/2]| / W`;
    box (x) Gaussian: `(G(b + W/2) - G(a + W/2) - G(b - W/2) + G(a - W/2)) / W` with `G` the
    antiderivative of `Phi(. / s)`; `s = fwhm f / (2 sqrt(2 ln 2))`, `W = width f`.
    """
    from scipy.special import ndtr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    s, w = profile.fwhm * f * FWHM_TO_SIGMA, profile.width * f
    if profile.kind == "gaussian":
        return ndtr(b / s) - ndtr(a / s)
    if profile.kind == "box":
        return np.clip(np.minimum(b, w / 2) - np.maximum(a, -w / 2), 0, None) / w
    g = _gauss_antiderivative_of_cdf
    return (g(b + w / 2, s) - g(a + w / 2, s) - g(b - w / 2, s) + g(a - w / 2, s)) / w


def profile_matrix(n: int, f: int, profile: SliceProfile) -> np.ndarray:
    """`(n // f, n)` weights: low-res voxel `j` = `sum_k W[j, k] y[k]`.

    `W[j, k] = int_{k - 1/2}^{k + 1/2} p(x - c_j) dx` (each refined voxel integrates the profile over
    its own extent), `c_j = f j + (f - 1)/2`; weight beyond the ends goes to the edge voxel (edge
    replication), so rows sum to 1.
    """
    m = n // f
    c = f * np.arange(m) + (f - 1) / 2
    s, w = profile.fwhm * f * FWHM_TO_SIGMA, profile.width * f
    reach = int(np.ceil((w / 2 if profile.kind != "gaussian" else 0) + (5 * s if profile.kind != "box" else 0))) + 1
    k = np.arange(-reach, n + reach)
    wts = profile_integral(k[None] - 0.5 - c[:, None], k[None] + 0.5 - c[:, None], profile, f)
    out = np.zeros((m, n))
    np.add.at(out.T, np.clip(k, 0, n - 1), wts.T)
    return out / out.sum(1, keepdims=True)


def degrade_profile(hr: np.ndarray, scale: tuple[int, int, int],
                    profile: SliceProfile | tuple[SliceProfile, SliceProfile, SliceProfile] = SliceProfile()
                    ) -> np.ndarray:
    """Low-resolution volume from `hr` with a slice profile per reduced axis (`profile_matrix`).

    Shape `(X, Y, Z) -> (X // f_x, Y // f_y, Z // f_z)` (trailing voxels beyond a multiple of `f`
    are dropped). The box profile of width 1 is the mean of each block of `f` voxels.
    """
    out = np.asarray(hr, np.float64)
    if any(n < 2 * f for n, f in zip(out.shape, scale)):
        raise ValueError(f"degrade: volume {out.shape} too small for scale {scale}")
    return np.ascontiguousarray(apply_along_axes(out, degradation_matrices(out.shape, scale, profile)),
                                dtype=np.float32)


def degradation_matrices(shape: tuple[int, ...], scale: tuple[int, int, int],
                         profile: SliceProfile | tuple[SliceProfile, SliceProfile, SliceProfile]
                         ) -> tuple[np.ndarray | None, ...]:
    """`A_i = profile_matrix(n_i, f_i, p_i)` per axis of the refined `shape` (None where `f_i = 1`).

    `profile` is one profile for every axis or one per axis; the degradation is `A_x (x) A_y (x) A_z`.
    """
    profiles = profile if isinstance(profile, (tuple, list)) else (profile,) * 3
    return tuple(profile_matrix(n, f, p) if f > 1 else None for n, f, p in zip(shape, scale, profiles))


def apply_along_axes(x: np.ndarray, matrices) -> np.ndarray:
    """`x` with matrix `M_i` applied along axis `i` (`(M_x (x) M_y (x) M_z) x`; None leaves an axis as is)."""
    for axis, m in enumerate(matrices):
        if m is not None:
            x = np.moveaxis(np.tensordot(m, x, axes=(1, axis)), 0, axis)
    return x


def signal_level(x: np.ndarray) -> float:
    """`S`: the mean of the foreground voxels, those above 10 % of the 99.5th percentile."""
    x = np.asarray(x, np.float64)
    fg = x[x > 0.1 * np.percentile(x, 99.5)]
    return float(fg.mean()) if fg.size else float(np.abs(x).mean())


def add_noise(x: np.ndarray, snr: float | None, kind: str = "rician", seed: int | np.random.Generator = 0,
              signal: float | None = None) -> np.ndarray:
    """Noise of standard deviation `sigma = S / snr` (`S = signal_level(x)` unless given).

    `"gaussian"`: `x + sigma n`; `"rician"` (magnitude images): `|x + sigma (n_1 + i n_2)|`, through
    MONAI's `RandGaussianNoise` / `RandRicianNoise`. `snr=None` returns `x` unchanged.
    """
    import torch
    from monai.transforms import RandGaussianNoise, RandRicianNoise

    if snr is None:
        return np.asarray(x, np.float32)
    if kind not in ("gaussian", "rician"):
        raise ValueError(f"unknown noise {kind!r}; expected 'gaussian' or 'rician'")
    if not snr > 0:
        raise ValueError(f"noise SNR must be > 0, got {snr}")
    sigma = (signal_level(x) if signal is None else signal) / snr
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    t = (RandGaussianNoise(prob=1.0, mean=0.0, std=sigma, sample_std=False) if kind == "gaussian"
         else RandRicianNoise(prob=1.0, mean=0.0, std=sigma, relative=False, sample_std=False))
    t.set_random_state(seed=int(rng.integers(2**31)))
    out = t(torch.as_tensor(np.asarray(x, np.float32))[None])
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return np.asarray(out[0], np.float32)
