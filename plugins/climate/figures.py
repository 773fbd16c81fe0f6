"""Figures of a downscaling run: maps.png and spectra.png (matplotlib, Agg backend)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sciffusion.plugins.climate.metrics import zonal_spectrum


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_maps(path: str | Path, variables: Sequence[str], coarse: np.ndarray, bicubic: np.ndarray,
              ensemble: np.ndarray, truth: np.ndarray, extent: tuple[float, float, float, float],
              credit: str = "", units: Sequence[str] = ()) -> Path:
    """One row per variable: coarse, bicubic, ensemble mean, one member, spread, truth (one time).

    Arrays: coarse (C, h, w); bicubic, truth (C, H, W); ensemble (K, C, H, W).
    """
    n = len(variables)
    fig, axes = plt.subplots(n, 6, figsize=(18, 2.4 * n + 0.6), squeeze=False)
    titles = ["coarse", "bicubic", "ensemble mean", "member 0", "spread (std)", "truth"]
    for i, name in enumerate(variables):
        panels = [coarse[i], bicubic[i], ensemble[:, i].mean(0), ensemble[0, i], ensemble[:, i].std(0, ddof=1) if ensemble.shape[0] > 1 else np.zeros_like(truth[i]), truth[i]]
        lo, hi = np.nanpercentile(truth[i], [1, 99])
        for j, (ax, img) in enumerate(zip(axes[i], panels)):
            kw = {"vmin": lo, "vmax": hi, "cmap": "viridis"} if j != 4 else {"cmap": "magma", "vmin": 0, "vmax": float(np.nanpercentile(img, 99)) or None}
            im = ax.imshow(img, origin="lower", extent=extent, aspect="auto", **kw)
            ax.set_title(f"{name} {titles[j]}", fontsize=8)
            ax.tick_params(labelsize=6)
            if j in (4, 5):
                fig.colorbar(im, ax=ax, fraction=0.046, label=units[i] if i < len(units) else "")
    if credit:
        fig.text(0.5, 0.005, credit, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return _save(fig, Path(path))


def plot_spectra(path: str | Path, variables: Sequence[str], lat: np.ndarray, truth: np.ndarray,
                 predictions: Mapping[str, np.ndarray], k_coarse: int, credit: str = "") -> Path:
    """Zonal power spectra per variable; `truth` (T, C, H, W), predictions (K, T, C, H, W)."""
    n = len(variables)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.6), squeeze=False)
    for i, name in enumerate(variables):
        ax = axes[0, i]
        k, p_true = zonal_spectrum(truth[:, i], lat)
        ax.loglog(k[1:], p_true[1:], "k", lw=2, label="truth")
        for label, ens in predictions.items():
            k, p = zonal_spectrum(ens[:, :, i], lat)
            ax.loglog(k[1:], p[1:], lw=1, label=label)
        ax.set_ylim(bottom=max(p_true[1:].min() * 1e-3, 1e-30))  # interpolation nulls would squash the plot
        ax.axvline(k_coarse, color="grey", ls=":", lw=1)
        ax.set_title(name)
        ax.set_xlabel("zonal wavenumber")
        if i == 0:
            ax.set_ylabel("power")
            ax.legend(fontsize=7)
    if credit:
        fig.text(0.5, 0.005, credit, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, Path(path))
