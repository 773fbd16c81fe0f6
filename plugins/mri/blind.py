"""Blind super-resolution training: every patch draws its own degradation and anatomy.

A training item starts from a block of a normalised high-resolution volume (the patch plus a margin)
and applies, each with its own random draw:

1. anatomy: MONAI `RandAffine` (rotation, scaling) and `Rand3DElastic` on the block;
2. contrast: optionally a SynthSR-style synthetic image `sum_c mu_c P_c` from tissue probability maps
   `P_c` with random intensities `mu_c` (`synth_image`), then MONAI `RandBiasField` (multiplicative
   smooth field), `RandAdjustContrast` (gamma) and a global rescaling `s`;
3. acquisition: a slice profile per reduced axis (`degrade.SliceProfile`: Gaussian of FWHM in
   `fwhm_range` x f, a box of width `width_range` x f, i.e. slice thickness different from the
   spacing, or the box convolved with a Gaussian), decimation, then Gaussian or Rician noise at an SNR
   drawn log-uniformly from `snr_range` (or none).

The target is the block after steps 1-2 (the model learns to undo the acquisition, not the
anatomy or the contrast); the condition is the cubic interpolation of the degraded block. The margin
is cropped away after interpolation, so patch edges see real context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sciffusion.core.config import JsonConfig
from sciffusion.plugins.mri.degrade import (
    PROFILES,
    SliceProfile,
    add_noise,
    degrade_profile,
    upsample,
)


@dataclass(frozen=True)
class BlindFamily(JsonConfig):
    """The distribution of degradations (defaults: the family the retrained checkpoints use)."""

    profile_probs: tuple[float, float, float] = (0.4, 0.3, 0.3)  # gaussian, box, box_gaussian
    fwhm_range: tuple[float, float] = (0.5, 1.5)  # Gaussian FWHM / f
    width_range: tuple[float, float] = (0.7, 1.3)  # box width (slice thickness) / f
    box_gauss_fwhm_range: tuple[float, float] = (0.2, 0.8)  # the Gaussian of box (x) Gaussian, / f
    p_noise: float = 0.7
    p_rician: float = 0.5
    snr_range: tuple[float, float] = (8.0, 80.0)
    p_bias: float = 0.5
    bias_coeff: float = 0.06  # MONAI polynomial coefficients (degree 3): fields within about x0.6..x1.7
    p_gamma: float = 0.5
    gamma_range: tuple[float, float] = (0.7, 1.5)
    scale_range: tuple[float, float] = (0.85, 1.15)
    p_affine: float = 0.5
    rotate: float = 0.17  # radians, each axis
    zoom: float = 0.1
    p_elastic: float = 0.1
    p_synth: float = 0.0  # probability of a synthetic image (needs tissue maps)


@dataclass(frozen=True)
class Acquisition:
    """One draw of the acquisition: the profile of each axis and the noise."""

    profiles: tuple[SliceProfile, SliceProfile, SliceProfile]
    noise: str | None  # None, "gaussian" or "rician"
    snr: float | None


def draw_acquisition(family: BlindFamily, rng: np.random.Generator) -> Acquisition:
    """Draw a slice profile (the same kind and parameters on every reduced axis) and the noise."""
    kind = PROFILES[int(rng.choice(3, p=np.asarray(family.profile_probs) / sum(family.profile_probs)))]
    fwhm = float(rng.uniform(*(family.fwhm_range if kind == "gaussian" else family.box_gauss_fwhm_range)))
    width = float(rng.uniform(*family.width_range))
    prof = SliceProfile(kind, fwhm=fwhm, width=width)
    if rng.random() >= family.p_noise:
        return Acquisition((prof,) * 3, None, None)
    lo, hi = np.log(family.snr_range[0]), np.log(family.snr_range[1])
    noise = "rician" if rng.random() < family.p_rician else "gaussian"
    return Acquisition((prof,) * 3, noise, float(np.exp(rng.uniform(lo, hi))))


def synth_image(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SynthSR-style contrast: `y = sum_c mu_c P_c (1 + 0.05 n_c)`, `mu_c ~ U(0, 1)` per tissue class.

    `maps` is `(C, X, Y, Z)` tissue probabilities (partial volumes sum to at most 1, background 0);
    `n_c` is smooth-free white noise per class (within-tissue texture). Rescaled so its 99.5th
    percentile inside the tissue is 1.
    """
    mu = rng.uniform(0.0, 1.0, len(maps))
    y = np.zeros(maps.shape[1:], np.float32)
    for m, p in zip(mu, maps):
        y += (m * p * (1 + 0.05 * rng.standard_normal(p.shape))).astype(np.float32)
    fg = maps.sum(0) > 0.5
    top = float(np.percentile(y[fg], 99.5)) if fg.any() else float(y.max())
    return y / max(top, 1e-6)


def _monai_seed(t, rng: np.random.Generator):
    t.set_random_state(seed=int(rng.integers(2**31)))
    return t


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def augment_anatomy(block: torch.Tensor, family: BlindFamily, rng: np.random.Generator) -> torch.Tensor:
    """Random small affine and elastic deformation of `(C, X, Y, Z)` channels together (MONAI)."""
    from monai.transforms import Rand3DElastic, RandAffine

    if rng.random() < family.p_affine:
        t = RandAffine(prob=1.0, rotate_range=(family.rotate,) * 3, scale_range=(family.zoom,) * 3,
                       padding_mode="border")
        block = _plain(_monai_seed(t, rng)(block))
    if rng.random() < family.p_elastic:
        t = Rand3DElastic(sigma_range=(6.0, 9.0), magnitude_range=(50.0, 150.0), prob=1.0, padding_mode="border")
        block = _plain(_monai_seed(t, rng)(block))
    return block


def augment_contrast(y: torch.Tensor, family: BlindFamily, rng: np.random.Generator) -> torch.Tensor:
    """Bias field, gamma and global rescaling of `(1, X, Y, Z)` (MONAI `RandBiasField`, `RandAdjustContrast`)."""
    from monai.transforms import RandAdjustContrast, RandBiasField

    y = y.clamp_min(0)
    if rng.random() < family.p_bias:
        y = _plain(_monai_seed(RandBiasField(degree=3, coeff_range=(0.0, family.bias_coeff), prob=1.0), rng)(y))
    if rng.random() < family.p_gamma:
        top = float(y.max())
        if top > 0:
            t = RandAdjustContrast(prob=1.0, gamma=family.gamma_range)
            y = _plain(_monai_seed(t, rng)(y / top)) * top
    return y * float(rng.uniform(*family.scale_range))


def blind_pair(block: np.ndarray, scale: tuple[int, int, int], margin: tuple[int, int, int],
               family: BlindFamily, rng: np.random.Generator, signal: float,
               maps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, Acquisition]:
    """(target, cubic) on the patch grid from a block with `margin` refined voxels on each side.

    `block`: normalised high-res `(X, Y, Z)`; `maps`: optional tissue maps `(C, X, Y, Z)` of the
    same block; `signal`: the volume's mean foreground level (the SNR's reference).
    """
    chans = [torch.from_numpy(np.ascontiguousarray(block, np.float32))[None]]
    if maps is not None:
        chans.append(torch.from_numpy(np.ascontiguousarray(maps, np.float32)))
    stack = augment_anatomy(torch.cat(chans), family, rng)
    y = stack[:1]
    if maps is not None and rng.random() < family.p_synth:
        y = torch.from_numpy(synth_image(stack[1:].numpy(), rng))[None]
    y = augment_contrast(y, family, rng)[0].numpy().astype(np.float32)
    acq = draw_acquisition(family, rng)
    lr = degrade_profile(y, scale, acq.profiles)
    if acq.noise is not None:
        lr = add_noise(lr, acq.snr, acq.noise, rng, signal=signal)
    cubic = upsample(lr, scale, 3)
    inner = tuple(slice(m, n - m) for m, n in zip(margin, y.shape))
    return y[inner], cubic[inner], acq
