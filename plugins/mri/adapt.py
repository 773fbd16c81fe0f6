"""Scan-specific adaptation (SMORE-style self-supervision) for thick-slice scans.

A scan with thick slices along one axis (factor `f`) is high-resolution in-plane. The scan is first
interpolated (cubic B-spline) by `f` along its thick axis, so that every axis has the target
spacing; permuting an in-plane axis into the model's thick-slice position then gives volumes whose
thick-slice axis is truly high-resolution, with the anatomy at its true proportions. Degrading that
axis by `f` (with the scan's own slice profile when it is known or estimated, else profiles drawn
from `blind.BlindFamily`; no added noise: the scan's own noise is in the data) makes training pairs
with this scan's contrast, noise and anatomy. A conditioned model is told each pair's slice profile
and an unknown noise level. `adapt_model` fine-tunes a copy of the model on them for `steps` steps with the core
denoising loss

    L = E_{t, eps} || f_theta(alpha_t x_0 + sigma_t eps, t, cond) - v ||^2

(AdamW, constant learning rate, gradient clipping at 1), then super-resolution runs as usual.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from sciffusion.plugins.mri.blind import BlindFamily
from sciffusion.plugins.mri.degrade import PROFILES, SliceProfile
from sciffusion.plugins.mri.model import SRConfig, SRDenoiser

ADAPT_FAMILY = BlindFamily(p_noise=0.0, p_bias=0.0, p_gamma=0.0, scale_range=(1.0, 1.0), p_affine=0.0,
                           p_elastic=0.0)


def adapt_family(profile: SliceProfile | None) -> BlindFamily:
    """The degradations of the adaptation pairs: exactly `profile` on the reduced axis when it is
    given, else the blind family's profiles (`ADAPT_FAMILY`); never added noise or intensity changes."""
    if profile is None:
        return ADAPT_FAMILY
    fwhm, width = (profile.fwhm,) * 2, (profile.width,) * 2
    return replace(ADAPT_FAMILY, profile_probs=tuple(float(k == profile.kind) for k in PROFILES),
                   fwhm_range=fwhm, width_range=width, box_gauss_fwhm_range=fwhm)


class AdaptError(ValueError):
    """`--adapt` cannot run on this input (no in-plane high resolution to learn from)."""


def thick_axis(scale: tuple[int, int, int]) -> int:
    """The one axis with a factor above 1 in a thick-slice scale such as `(1, 1, 4)`."""
    thick = [a for a, f in enumerate(scale) if f > 1]
    if len(thick) != 1:
        raise AdaptError(f"--adapt needs a thick-slice scale with one reduced axis (such as 1,1,4), got "
                         f"{','.join(map(str, scale))}: there is no in-plane high resolution to learn from")
    return thick[0]


def inplane_volumes(lr: np.ndarray, scale: tuple[int, int, int]) -> list[np.ndarray]:
    """The scan, interpolated to the target spacing along its thick axis (`u = cubic_f(lr)`), with
    each in-plane axis moved into the thick-slice position (the others keep their order).

    For `scale = (1, 1, f)` and `lr` of axes `(x, y, z)`: `[u as (y, z', x), u as (x, z', y)]` with
    `z'` the `f`-times finer thick axis; the last axis of each is high-resolution and becomes the
    training target's reduced axis.
    """
    from sciffusion.plugins.mri.degrade import upsample

    a = thick_axis(scale)
    lr = upsample(lr, scale, 3)
    out = []
    for b in (i for i in range(3) if i != a):
        order = [i for i in range(3) if i != b]
        order.insert(a, b)  # axis b goes where the thick axis is
        out.append(np.ascontiguousarray(np.transpose(lr, order)))
    return out


def adapt_patch(shape: tuple[int, int, int], config: SRConfig, multiple: int) -> tuple[int, int, int]:
    """The largest patch (low-res voxels, multiples of `multiple`, at most the config's) whose block
    with margins fits in `shape`."""
    out = []
    for n, p, f in zip(shape, config.patch, config.scale):
        fit = (n - 8 * f) // f // multiple * multiple
        if fit < multiple:
            raise AdaptError(f"--adapt: the scan ({shape} after permuting) is too small for adaptation patches")
        out.append(min(p, fit))
    return tuple(out)


def adapt_model(model: SRDenoiser, lr: np.ndarray, steps: int, batch_size: int = 2, lr_rate: float = 5e-5,
                seed: int = 0, progress: bool = False, profile: SliceProfile | None = None) -> SRDenoiser:
    """A copy of `model` fine-tuned for `steps` steps on pairs made from `lr`'s own in-plane data.

    `lr` is the low-resolution scan in the model's axis order (its thick-slice axis where the
    model's is); `profile` its slice profile when known (`adapt_family`). Returns the adapted copy
    in eval mode; `model` is untouched.
    """
    from sciffusion.core.diffusion.losses import denoising_loss
    from sciffusion.core.diffusion.process import DiffusionProcess
    from sciffusion.core.diffusion.schedules import get_schedule
    from sciffusion.plugins.mri.data import BlindPatchDataset, split_batch

    cfg = model.config
    if steps < 1:
        raise AdaptError(f"--adapt: the number of steps must be >= 1, got {steps}")
    vols = inplane_volumes(np.asarray(lr, np.float32), cfg.scale)
    patch = tuple(min(p) for p in zip(*(adapt_patch(v.shape, cfg, model.multiple) for v in vols)))
    pcfg = SRConfig(**{**cfg.to_dict(), "patch": patch, "scale": cfg.scale, "channels": cfg.channels})
    data = BlindPatchDataset(vols, pcfg, adapt_family(profile), seed=seed, min_foreground=0.1, noise_known=False)
    net = copy.deepcopy(model).train()
    process = DiffusionProcess(get_schedule(cfg.schedule), prediction=cfg.prediction)
    opt = torch.optim.AdamW(net.parameters(), lr=lr_rate)
    gen = torch.Generator().manual_seed(seed)
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="adapt", leave=False)
    for step in it:
        batch = [torch.stack(parts) for parts in zip(*(data[step * batch_size + k] for k in range(batch_size)))]
        x0, cond = split_batch(batch)
        loss = denoising_loss(net, process, x0, cond=cond, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    return net.eval()
