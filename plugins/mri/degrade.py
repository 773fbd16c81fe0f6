"""Degradation models that make training pairs, and the interpolation baselines.

Index convention (matches `io.lr_affine` / `io.sr_affine`): low-resolution voxel `j` along an axis
with factor `f` is centred on high-resolution index `f j + (f - 1) / 2`; high-resolution voxel
`k` sits at low-resolution index `(k + 0.5) / f - 0.5`.
"""

from __future__ import annotations

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
