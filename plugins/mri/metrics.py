"""Image-quality metrics inside a foreground mask (MONAI's PSNR and SSIM).

Both volumes are divided by `p`, the 99.5th percentile of the reference inside the mask, and
clipped to [0, 1]; then, with `M` the mask,

    PSNR = 10 log10(1 / mean_M (x - y)^2)                      (data range 1)
    SSIM = mean_M SSIM_map(x, y)                               (Gaussian window 11, sigma 1.5)

The SSIM map is MONAI's `compute_ssim_and_cs` (valid region only), so the mask is cropped by
the half-window on every side before averaging.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

WIN = 11


def normaliser(reference: np.ndarray, mask: np.ndarray) -> float:
    """`p`: the 99.5th percentile of the reference inside the mask."""
    if not mask.any():
        raise ValueError("metrics: the foreground mask is empty")
    return float(np.percentile(np.asarray(reference)[mask], 99.5))


def psnr(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Masked PSNR (dB) after normalising both by the reference's p99.5 (MONAI `PSNRMetric`)."""
    from monai.metrics import PSNRMetric

    p = normaliser(ref, mask)
    a = torch.from_numpy(np.clip(np.asarray(x, np.float64)[mask] / p, 0, 1)).reshape(1, 1, -1)
    b = torch.from_numpy(np.clip(np.asarray(ref, np.float64)[mask] / p, 0, 1)).reshape(1, 1, -1)
    return float(PSNRMetric(max_val=1.0)(a, b).mean())


def ssim(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Masked mean of MONAI's 3-D SSIM map after normalising both by the reference's p99.5."""
    from monai.metrics.regression import compute_ssim_and_cs

    p = normaliser(ref, mask)
    a = torch.from_numpy(np.clip(np.asarray(x, np.float32) / p, 0, 1))[None, None]
    b = torch.from_numpy(np.clip(np.asarray(ref, np.float32) / p, 0, 1))[None, None]
    if min(a.shape[2:]) < WIN:
        raise ValueError(f"metrics: SSIM needs at least {WIN} voxels along each axis, got {tuple(a.shape[2:])}")
    smap, _ = compute_ssim_and_cs(a, b, spatial_dims=3, kernel_size=(WIN,) * 3, kernel_sigma=(1.5,) * 3,
                                  data_range=1.0)
    h = WIN // 2
    m = torch.from_numpy(np.asarray(mask)[h:-h, h:-h, h:-h])
    if not m.any():
        raise ValueError("metrics: the foreground mask is empty away from the volume's border")
    return float(smap[0, 0][m].double().mean())


def uncertainty_correlation(std: np.ndarray, x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Spearman rank correlation between the per-voxel std and `|x - ref|` inside the mask."""
    rho = spearmanr(np.asarray(std)[mask].ravel(), np.abs(np.asarray(x) - np.asarray(ref))[mask].ravel())
    return float(rho.statistic if hasattr(rho, "statistic") else rho[0])


def evaluate(outputs: dict[str, np.ndarray], ref: np.ndarray, mask: np.ndarray) -> dict[str, dict[str, float]]:
    """`{method: {"psnr": dB, "ssim": ...}}` for every volume in `outputs`."""
    return {k: {"psnr": round(psnr(v, ref, mask), 3), "ssim": round(ssim(v, ref, mask), 4)}
            for k, v in outputs.items()}
