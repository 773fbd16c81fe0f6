"""Training pairs, the random-patch dataset, and the MNI152 demonstration volume.

A pair is made from one high-resolution volume `y` (cropped so each axis is a multiple of its
factor): `l = degrade(y)`, both normalised by the percentile scaler fitted on `l` (the only volume
available at inference), and `u = cubic(l)`. The dataset yields `(x_0, cond)` with
`x_0 = S2D((y - u) / r)` and `cond = S2D(u)` (see `model.py`), ready for the core `Trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from sciffusion.plugins.mri.degrade import crop_to_multiple, degrade, upsample
from sciffusion.plugins.mri.io import Volume
from sciffusion.plugins.mri.model import SRConfig, space_to_depth
from sciffusion.plugins.mri.transforms import PercentileScaler, foreground_mask

# Held-out evaluation slab of the 1 mm MNI152 template: array axis 1 (posterior -> anterior),
# indices [112, 160) (y = -22 .. +25 mm), never seen in training; a guard band of GUARD voxels on
# each side is excluded from training too, so no training patch touches the evaluation region.
HOLDOUT_AXIS = 1
HOLDOUT = (112, 160)
GUARD = 8


@dataclass
class Pair:
    """Normalised high-res `hr`, low-res `lr`, cubic `cubic` (hr grid), head `mask`, `scaler`."""

    hr: np.ndarray
    lr: np.ndarray
    cubic: np.ndarray
    mask: np.ndarray
    scaler: PercentileScaler


def make_pair(hr: np.ndarray, config: SRConfig) -> Pair:
    """Degrade `hr` by `config.scale` and normalise both volumes with the low-res percentiles."""
    hr = crop_to_multiple(np.asarray(hr, np.float32), config.scale)
    lr_raw = degrade(hr, config.scale, config.fwhm)
    scaler = PercentileScaler.fit(lr_raw, config.lower_percentile, config.upper_percentile)
    lr = scaler(lr_raw)
    return Pair(scaler(hr), lr, upsample(lr, config.scale, 3), foreground_mask(hr), scaler)


def mni_volume(resolution: int = 1) -> Volume:
    """The MNI152 2009 T1 template shipped in nilearn's wheel (no download), as a `Volume`."""
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=resolution)
    return Volume(np.asarray(img.get_fdata(), np.float32), np.asarray(img.affine, np.float64),
                  img.header.copy(), f"MNI152 template ({resolution} mm, nilearn)")


def training_region(shape: tuple[int, ...], axis: int = HOLDOUT_AXIS, holdout: tuple[int, int] = HOLDOUT,
                    guard: int = GUARD) -> np.ndarray:
    """Boolean mask of voxels a training patch may cover: all but the held-out slab and its guard."""
    allowed = np.ones(shape, bool)
    sl = [slice(None)] * len(shape)
    sl[axis] = slice(max(0, holdout[0] - guard), holdout[1] + guard)
    allowed[tuple(sl)] = False
    return allowed


class PatchDataset(Dataset):
    """Random aligned patches of training pairs, with flips and 90-degree rotations.

    Item `i` is drawn with its own generator seeded by `(seed, i)`, so the dataset is a pure
    function of the index (what the core `Trainer` needs to resume exactly). A patch is
    `config.patch` low-resolution voxels (times the factor on the high-res grid), lies inside the
    allowed `region` and is at least `min_foreground` head. Rotations only mix axes whose patch size
    and factor agree (all three at an isotropic scale). Returns `(x_0, cond)`, each `(F, *patch)`.
    """

    def __init__(self, pairs: list[Pair], config: SRConfig, regions: list[np.ndarray] | None = None,
                 length: int = 100_000, seed: int = 0, augment: bool = True,
                 min_foreground: float = 0.25) -> None:
        self.config, self.length, self.seed, self.augment = config, length, seed, augment
        self.min_foreground = min_foreground
        self.hr_patch = tuple(p * f for p, f in zip(config.patch, config.scale))
        self.items = []
        for k, pair in enumerate(pairs):
            region = regions[k] if regions is not None else np.ones(pair.hr.shape, bool)
            if any(n < p for n, p in zip(pair.hr.shape, self.hr_patch)):
                raise ValueError(f"pair {k}: volume {pair.hr.shape} smaller than the patch {self.hr_patch}")
            res = (pair.hr - pair.cubic) / config.residual_scale
            self.items.append((torch.from_numpy(res), torch.from_numpy(pair.cubic), pair.mask, region))
        swappable = [a for a in range(3)
                     if (config.patch[a], config.scale[a]) == (config.patch[0], config.scale[0])]
        self.planes = [(a, b) for a in swappable for b in swappable if a < b]

    def __len__(self) -> int:
        return self.length

    def _corner(self, rng: np.random.Generator, k: int) -> tuple[int, ...]:
        _, _, mask, region = self.items[k]
        f = self.config.scale
        best, best_fg = None, -1.0
        for _ in range(50):
            c = tuple(int(rng.integers(0, (n - p) // fi + 1)) * fi
                      for n, p, fi in zip(mask.shape, self.hr_patch, f))
            sl = tuple(slice(ci, ci + p) for ci, p in zip(c, self.hr_patch))
            if not region[sl].all():
                continue
            fg = float(mask[sl].mean())
            if fg >= self.min_foreground:
                return c
            if fg > best_fg:
                best, best_fg = c, fg
        if best is None:
            raise ValueError("PatchDataset: no patch fits inside the allowed training region")
        return best

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, int(i)))
        k = int(rng.integers(len(self.items)))
        res, cub, _, _ = self.items[k]
        c = self._corner(rng, k)
        sl = tuple(slice(ci, ci + p) for ci, p in zip(c, self.hr_patch))
        pair = torch.stack([res[sl], cub[sl]])  # (2, X, Y, Z): channel 0 residual, 1 cubic
        if self.augment:
            from monai.transforms import Flip, Rotate90

            flips = [a for a in range(3) if rng.random() < 0.5]
            if flips:
                pair = Flip(spatial_axis=flips)(pair)
            if self.planes and rng.random() < 0.5:
                plane = self.planes[int(rng.integers(len(self.planes)))]
                pair = Rotate90(k=int(rng.integers(1, 4)), spatial_axes=plane)(pair)
            pair = pair.as_tensor() if hasattr(pair, "as_tensor") else pair
        pair = space_to_depth(pair[:, None].contiguous(), self.config.scale)  # (2, F, x, y, z)
        return pair[0].contiguous(), pair[1].contiguous()


def heldout_crop(shape: tuple[int, int, int], axis: int = HOLDOUT_AXIS, holdout: tuple[int, int] = HOLDOUT,
                 guard: int = GUARD) -> tuple[tuple[slice, ...], np.ndarray]:
    """The evaluation block: the held-out slab plus its guard band (context for the model, also never
    trained on), and a boolean map of that block that is True on the held-out slab only."""
    crop = [slice(None)] * 3
    crop[axis] = slice(holdout[0] - guard, holdout[1] + guard)
    block = list(shape)
    block[axis] = holdout[1] - holdout[0] + 2 * guard
    region = np.zeros(block, bool)
    sl = [slice(None)] * 3
    sl[axis] = slice(guard, guard + holdout[1] - holdout[0])
    region[tuple(sl)] = True
    return tuple(crop), region
