"""Intensity normalisation (MRI percentiles, CT HU windows), foreground masks, orientation.

The denoiser only ever sees plain tensors: MONAI's `MetaTensor`s are converted with `.as_tensor()`
(or `numpy()`) before they reach it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

# Common CT windows (level, width) in Hounsfield units.
CT_WINDOWS = {"brain": (40.0, 80.0), "subdural": (75.0, 215.0), "bone": (600.0, 2800.0),
              "soft_tissue": (50.0, 400.0), "lung": (-600.0, 1500.0)}


@dataclass(frozen=True)
class PercentileScaler:
    """`x_n = (x - a) / (b - a)` with `a`, `b` percentiles of the volume; `inverse` undoes it.

    `a` is the `lower` percentile of all voxels and `b` the `upper` percentile of the voxels above
    `a` (so a large zero background does not pull `b` down). This is MONAI's
    `ScaleIntensityRangePercentiles(lower, upper, 0, 1)` with the foreground rule for `b` and the
    two numbers kept, so that outputs return to scanner units.
    """

    a: float
    b: float

    @classmethod
    def fit(cls, x: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> PercentileScaler:
        """Percentiles of `x` (any shape)."""
        x = np.asarray(x, np.float64).ravel()
        a = float(np.percentile(x, lower))
        fg = x[x > a]
        b = float(np.percentile(fg, upper)) if fg.size else a + 1.0
        if not b > a:
            b = a + 1.0
        return cls(a, b)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalise: `(x - a) / (b - a)` as float32."""
        return ((np.asarray(x, np.float64) - self.a) / (self.b - self.a)).astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """Back to the original units: `a + (b - a) x_n`."""
        return (self.a + (self.b - self.a) * np.asarray(x, np.float64)).astype(np.float32)


def hu_window(x: np.ndarray | torch.Tensor, window: str | tuple[float, float] = "brain") -> np.ndarray:
    """Map Hounsfield units to [0, 1] for a CT window (level L, width W), clipped.

    `x_n = clip((x - (L - W/2)) / W, 0, 1)`, through MONAI's `ScaleIntensityRange`.
    """
    from monai.transforms import ScaleIntensityRange

    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {window!r}; expected one of {sorted(CT_WINDOWS)}")
        window = CT_WINDOWS[window]
    level, width = (float(v) for v in window)
    if not width > 0:
        raise ValueError(f"CT window width must be > 0, got {width}")
    t = ScaleIntensityRange(a_min=level - width / 2, a_max=level + width / 2, b_min=0.0, b_max=1.0,
                            clip=True)
    out = t(torch.as_tensor(np.asarray(x, np.float32)))
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return out.numpy().astype(np.float32)


def foreground_mask(x: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Head mask: voxels above `threshold * p99.5(x)`, largest component, holes filled."""
    x = np.asarray(x, np.float32)
    m = x > threshold * float(np.percentile(x, 99.5))
    lab, n = ndi.label(m)
    if n > 1:
        sizes = ndi.sum(m, lab, index=np.arange(1, n + 1))
        m = lab == (1 + int(np.argmax(sizes)))
    return ndi.binary_fill_holes(m)


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a volume to RAS+ axis order with MONAI's `Orientation`; returns (data, affine).

    Only needed when a pipeline wants a canonical array layout: every output of this plugin is
    written on its input's own grid, so no reorientation is done by default.
    """
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    img = MetaTensor(torch.as_tensor(np.asarray(data, np.float32))[None], affine=torch.as_tensor(affine))
    out = Orientation(axcodes="RAS")(img)
    return out.as_tensor()[0].numpy(), np.asarray(out.affine, np.float64)
