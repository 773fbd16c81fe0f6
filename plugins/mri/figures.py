"""`slices.png`: the central slice of each volume in the three planes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sciffusion.core.atomic import atomic_write


def nearest_up(lr: np.ndarray, scale: tuple[int, int, int]) -> np.ndarray:
    """Block-replicate `lr` onto the refined grid (how the low-res input looks on it)."""
    out = np.asarray(lr)
    for axis, f in enumerate(scale):
        out = np.repeat(out, f, axis=axis)
    return out


def slice_figure(panels: dict[str, np.ndarray], path: str | Path, centre: tuple[int, int, int] | None = None,
                 zooms: tuple[float, float, float] = (1.0, 1.0, 1.0), title: str = "") -> Path:
    """Write a grid of panels (columns) by plane (rows: sagittal, coronal, axial) atomically.

    Intensity panels share the grey scale of the first one; panels whose name contains "error"
    or "uncertainty" get their own colour scale (0 to their 99.5th percentile).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels)
    shape = next(iter(panels.values())).shape
    c = centre or tuple(n // 2 for n in shape)
    vmax = float(np.percentile(next(iter(panels.values())), 99.5)) or 1.0
    fig, axes = plt.subplots(3, len(names), figsize=(2.2 * len(names), 6.6), squeeze=False)
    planes = [("sagittal", 0, (zooms[2], zooms[1])), ("coronal", 1, (zooms[2], zooms[0])),
              ("axial", 2, (zooms[1], zooms[0]))]
    for row, (plane, axis, (dr, dc)) in enumerate(planes):
        for col, name in enumerate(names):
            vol = panels[name]
            img = np.take(vol, c[axis], axis=axis).T[::-1]
            ax = axes[row, col]
            special = "error" in name or "uncertainty" in name
            hi = float(np.percentile(vol, 99.5)) if special else vmax
            ax.imshow(img, cmap="magma" if special else "gray", vmin=0, vmax=hi or 1.0, aspect=dr / dc,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(plane, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80))
    finally:
        plt.close(fig)
