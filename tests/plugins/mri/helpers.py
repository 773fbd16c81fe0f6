"""Small MRI test inputs: a phantom volume and a tiny model configuration."""

from __future__ import annotations

import numpy as np

from sciffusion.plugins.mri.model import SRConfig


def phantom(shape=(32, 32, 32), seed=0) -> np.ndarray:
    """A smooth head-like phantom: an ellipsoid with blobs of different intensity, zero outside."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    head = (g**2).sum(0) < 0.8
    vol = np.zeros(shape, np.float32)
    vol[head] = 100.0
    for _ in range(6):
        c = rng.uniform(-0.5, 0.5, 3)[:, None, None, None]
        vol += 80.0 * np.exp(-((g - c) ** 2).sum(0) / 0.02) * head
    return vol


def tiny_config(scale=(2, 2, 2)) -> SRConfig:
    """A small model for fast tests (two levels, 8/16 channels)."""
    patch = tuple(8 if f > 1 else 16 for f in scale)
    return SRConfig(scale=scale, channels=(8, 16), norm_num_groups=8, patch=patch)
