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


def pick_corner(rng: np.random.Generator, mask: np.ndarray, region: np.ndarray, size: tuple[int, ...],
                align: tuple[int, ...], min_foreground: float, tries: int = 50) -> tuple[int, ...]:
    """A random corner (multiple of `align`) of a `size` block inside `region` that is at least
    `min_foreground` head (else the most-foreground one of `tries` draws)."""
    best, best_fg = None, -1.0
    for _ in range(tries):
        c = tuple(int(rng.integers(0, (n - p) // fi + 1)) * fi for n, p, fi in zip(mask.shape, size, align))
        sl = tuple(slice(ci, ci + p) for ci, p in zip(c, size))
        if not region[sl].all():
            continue
        fg = float(mask[sl].mean())
        if fg >= min_foreground:
            return c
        if fg > best_fg:
            best, best_fg = c, fg
    if best is None:
        raise ValueError("no patch fits inside the allowed training region")
    return best


def swappable_planes(config: SRConfig) -> list[tuple[int, int]]:
    """Axis pairs a 90-degree rotation may mix: same patch size and factor."""
    same = [a for a in range(3) if (config.patch[a], config.scale[a]) == (config.patch[0], config.scale[0])]
    if len(same) < 2:
        same = [a for a in range(3) if (config.patch[a], config.scale[a]) == (config.patch[1], config.scale[1])]
    return [(a, b) for a in same for b in same if a < b]


def flip_rotate(pair: torch.Tensor, planes: list[tuple[int, int]], rng: np.random.Generator) -> torch.Tensor:
    """Random flips of every axis and a random 90-degree rotation in one of `planes` (MONAI), on `(C, X, Y, Z)`."""
    from monai.transforms import Flip, Rotate90

    flips = [a for a in range(3) if rng.random() < 0.5]
    if flips:
        pair = Flip(spatial_axis=flips)(pair)
    if planes and rng.random() < 0.5:
        plane = planes[int(rng.integers(len(planes)))]
        pair = Rotate90(k=int(rng.integers(1, 4)), spatial_axes=plane)(pair)
    return pair.as_tensor() if hasattr(pair, "as_tensor") else pair


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
        self.planes = swappable_planes(config)

    def __len__(self) -> int:
        return self.length

    def _corner(self, rng: np.random.Generator, k: int) -> tuple[int, ...]:
        _, _, mask, region = self.items[k]
        return pick_corner(rng, mask, region, self.hr_patch, self.config.scale, self.min_foreground)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, int(i)))
        k = int(rng.integers(len(self.items)))
        res, cub, _, _ = self.items[k]
        c = self._corner(rng, k)
        sl = tuple(slice(ci, ci + p) for ci, p in zip(c, self.hr_patch))
        pair = torch.stack([res[sl], cub[sl]])  # (2, X, Y, Z): channel 0 residual, 1 cubic
        if self.augment:
            pair = flip_rotate(pair, self.planes, rng)
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


def heldout_description(axis: int = HOLDOUT_AXIS, holdout: tuple[int, int] = HOLDOUT) -> str:
    """The held-out slab in words, e.g. "held-out slab (axis 1, [112, 160))"."""
    return f"held-out slab (axis {axis}, [{holdout[0]}, {holdout[1]}))"


class BlindPatchDataset(Dataset):
    """Patches whose degradation is drawn per item from a `blind.BlindFamily` (see `blind.py`).

    `volumes` are high-resolution arrays; each is normalised by the percentiles of its default
    degradation (as `make_pair`). `maps` (optional, one `(C, X, Y, Z)` array per volume) are tissue
    probability maps for synthetic contrasts. Item `i` is a pure function of `(seed, i)`.
    Returns `(x_0, cond)` as `PatchDataset`; for a conditioned config `(x_0, cond, d)` with `d` the
    drawn degradation (`degradation_item`): each part dropped to unknown with probability
    `p_unknown`, and the noise always unknown when `noise_known` is False (pairs made from a scan that
    carries its own noise, as `adapt` does).
    """

    def __init__(self, volumes: list[np.ndarray], config: SRConfig, family, regions: list[np.ndarray] | None = None,
                 maps: list[np.ndarray] | None = None, length: int = 100_000, seed: int = 0,
                 min_foreground: float = 0.25, p_unknown: float = 0.25, noise_known: bool = True) -> None:
        from sciffusion.plugins.mri.degrade import signal_level

        if not 0.0 <= p_unknown <= 1.0:
            raise ValueError(f"the probability of an unknown degradation must be in [0, 1], got {p_unknown}")
        self.p_unknown, self.noise_known = p_unknown, noise_known
        self.config, self.family, self.length, self.seed = config, family, length, seed
        self.min_foreground = min_foreground
        self.hr_patch = tuple(p * f for p, f in zip(config.patch, config.scale))
        self.margin = tuple(4 * f for f in config.scale)
        self.block = tuple(p + 2 * m for p, m in zip(self.hr_patch, self.margin))
        self.items = []
        for k, v in enumerate(volumes):
            v = crop_to_multiple(np.asarray(v, np.float32), config.scale)
            hr = PercentileScaler.fit(degrade(v, config.scale, config.fwhm), config.lower_percentile,
                                      config.upper_percentile)(v)
            if any(n < b for n, b in zip(hr.shape, self.block)):
                raise ValueError(f"volume {k}: {hr.shape} smaller than the block {self.block}")
            region = regions[k] if regions is not None else np.ones(hr.shape, bool)
            m = None if maps is None else np.asarray(maps[k], np.float32)[(slice(None), *(slice(0, n) for n in hr.shape))]
            self.items.append((hr, foreground_mask(hr), region[tuple(slice(0, n) for n in hr.shape)], m,
                               signal_level(hr)))
        self.planes = swappable_planes(config)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from sciffusion.plugins.mri.blind import blind_pair

        rng = np.random.default_rng((self.seed, int(i)))
        hr, mask, region, maps, signal = self.items[int(rng.integers(len(self.items)))]
        c = pick_corner(rng, mask, region, self.block, self.config.scale, self.min_foreground)
        sl = tuple(slice(ci, ci + b) for ci, b in zip(c, self.block))
        y, cubic, acq = blind_pair(hr[sl], self.config.scale, self.margin, self.family, rng, signal,
                                   None if maps is None else maps[(slice(None), *sl)])
        pair = torch.from_numpy(np.stack([(y - cubic) / self.config.residual_scale, cubic]).astype(np.float32))
        pair = flip_rotate(pair, self.planes, rng)
        pair = space_to_depth(pair[:, None].contiguous(), self.config.scale)
        if not self.config.conditioned:
            return pair[0].contiguous(), pair[1].contiguous()
        d = degradation_item(acq, signal, np.random.default_rng((self.seed, int(i), 1)), self.p_unknown,
                             self.noise_known)
        return pair[0].contiguous(), pair[1].contiguous(), d


def split_batch(batch) -> tuple[torch.Tensor, object]:
    """`(x0, cond)` of a batch of `(x_0, cond)` or, for a conditioned model, `(x_0, cond, d)` items;
    then `cond = (cond, d)`, the form `SRDenoiser` takes."""
    return batch[0], (batch[1] if len(batch) == 2 else tuple(batch[1:]))


def degradation_item(acq, signal: float, rng: np.random.Generator, p_unknown: float,
                     noise_known: bool = True) -> torch.Tensor:
    """The conditioning vector of one training patch from its drawn `blind.Acquisition`.

    The noise std in normalised units is `signal / snr` (0 without noise), as `degrade.add_noise`
    drew it; the profile is that of the reduced axes. Each part is independently replaced by
    "unknown" with probability `p_unknown` (its own generator `rng`, so that the patch itself does
    not depend on the dropout).
    """
    from sciffusion.plugins.mri.conditioning import degradation_vector

    sigma = 0.0 if acq.noise is None else signal / acq.snr
    drop_noise, drop_profile = rng.random(2) < p_unknown
    return degradation_vector(None if drop_noise or not noise_known else sigma,
                              None if drop_profile else acq.profiles[0])


def mni_tissue_maps(resolution: int = 1) -> np.ndarray:
    """`(3, X, Y, Z)` grey matter, white matter and the rest of the brain mask (CSF and others) of the
    MNI152 template from nilearn's wheel, on the T1 template's grid."""
    from nilearn.datasets import (
        load_mni152_brain_mask,
        load_mni152_gm_template,
        load_mni152_wm_template,
    )

    gm = np.asarray(load_mni152_gm_template(resolution=resolution).get_fdata(), np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=resolution).get_fdata(), np.float32)
    brain = np.asarray(load_mni152_brain_mask(resolution=resolution).get_fdata(), np.float32)
    csf = np.clip(brain - gm - wm, 0, 1)
    return np.stack([gm, wm, csf])
