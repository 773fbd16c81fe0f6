"""Training through the core `Trainer` (EMA, checkpoints, resume, `torchrun` DDP).

The loss is the core denoising loss on `x_0 = S2D((y - cubic(l)) / r)` with `cond = S2D(cubic(l))`:

    L = E_{t, eps} || f_theta(alpha_t x_0 + sigma_t eps, t, cond) - v ||^2,   v = alpha_t eps - sigma_t x_0

(for the default `prediction="v"`). The exported checkpoint holds the EMA weights and the
`SRConfig`; `extra` records what it was trained on.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sciffusion.plugins.mri.blind import BlindFamily
from sciffusion.plugins.mri.data import BlindPatchDataset, PatchDataset, make_pair, split_batch
from sciffusion.plugins.mri.model import (
    SRConfig,
    SRDenoiser,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)


@dataclass(frozen=True)
class SRLoss:
    """The Trainer's loss on `(x0, cond)` or `(x0, cond, d)` batches (`d`: degradation vectors of a
    conditioned model, passed as `cond = (cond, d)`): `losses.denoising_loss` with a point mass of
    weight `p_terminal` at `t = 1`."""

    p_terminal: float = 0.0

    def __call__(self, model, process, batch) -> torch.Tensor:
        from sciffusion.core.diffusion.losses import denoising_loss

        x0, cond = split_batch(batch)
        return denoising_loss(model, process, x0, cond=cond, p_terminal=self.p_terminal)


def residual_scale(hr_volumes: list[np.ndarray], config: SRConfig) -> float:
    """Standard deviation of `y - cubic(l)` inside the head (normalised units), to 2 significant digits."""
    vals = []
    for v in hr_volumes:
        p = make_pair(v, config)
        vals.append((p.hr - p.cubic)[p.mask])
    return float(f"{float(np.concatenate(vals).std()):.2g}")


def train_sr(
    hr_volumes: list[np.ndarray],
    config: SRConfig,
    out_dir: str | Path,
    steps: int = 2000,
    batch_size: int = 4,
    lr: float = 2e-4,
    regions: list[np.ndarray] | None = None,
    checkpoint_every: int = 100,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    export: str | Path | None = None,
    extra: dict | None = None,
    family: BlindFamily | None = None,
    maps: list[np.ndarray] | None = None,
    init: str | Path | None = None,
    p_terminal: float = 0.0,
    p_unknown: float = 0.25,
) -> SRDenoiser:
    """Train a denoiser on random patches of `hr_volumes` and return its EMA copy (eval mode).

    Resumes from the newest checkpoint in `out_dir`. `regions` (one boolean mask per volume)
    restrict where patches may come from (e.g. everything but a held-out slab). The EMA weights
    are written with `save_checkpoint` to `export` (default `out_dir/model.pt`).

    `family` (a `blind.BlindFamily`) draws a degradation per patch (`data.BlindPatchDataset`, with
    optional tissue `maps` for synthetic contrasts) instead of the config's fixed Gaussian profile;
    `init` starts a fresh run from a checkpoint's weights (fine-tuning; a resumed run ignores it).
    `p_terminal` puts that fraction of the examples at `t = 1` (`losses.denoising_loss`), where the
    prediction is the point estimate `infer.super_resolve` returns by default.

    A conditioned `config` (`SRConfig.conditioned`) needs a `family`: each patch's drawn noise and
    slice profile are fed to the model, each dropped to unknown with probability `p_unknown`. It may
    start from an unconditioned `init`, which it then reproduces exactly before training.
    """
    from sciffusion.core.diffusion.process import DiffusionProcess
    from sciffusion.core.diffusion.schedules import get_schedule
    from sciffusion.core.train.trainer import TrainConfig, Trainer

    if config.conditioned and family is None:
        raise ValueError("a conditioned model is trained on the blind family (--conditioned needs --blind)")
    if family is None:
        dataset = PatchDataset([make_pair(v, config) for v in hr_volumes], config, regions=regions, seed=seed)
    else:
        dataset = BlindPatchDataset(hr_volumes, config, family, regions=regions, maps=maps, seed=seed,
                                    p_unknown=p_unknown)
    model = SRDenoiser(config)
    if init is not None:
        load_weights(model, load_checkpoint(init, scale=config.scale))
    process = DiffusionProcess(get_schedule(config.schedule), prediction=config.prediction)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(100, steps // 10),
                      min_lr_ratio=0.1, ema_half_life=max(10.0, steps / 20), grad_clip=1.0,
                      checkpoint_every=checkpoint_every, keep_last=2, log_every=10, seed=seed,
                      out_dir=str(out_dir), device=device)
    trainer = Trainer(model, process, dataset, cfg, progress=progress, loss_fn=SRLoss(p_terminal))
    t0 = time.time()
    trainer.fit(resume=True)
    ema = copy.deepcopy(trainer.ema_model).cpu().eval()
    info = {"steps": steps, "batch_size": batch_size, "lr": lr, "seconds_this_run": round(time.time() - t0, 1),
            "params": sum(p.numel() for p in ema.parameters())}
    if family is not None:
        info["degradations"] = family.to_dict()
    if init is not None:
        info["init"] = Path(init).name
    info["p_terminal"] = p_terminal
    info["conditioned"] = config.conditioned
    if config.conditioned:
        info["p_unknown"] = p_unknown
    info.update(extra or {})
    save_checkpoint(ema, export or Path(out_dir) / "model.pt", extra=info)
    return ema


def train_on_mni(scale: tuple[int, int, int], out_dir: str | Path, steps: int = 2000, batch_size: int = 4,
                 seed: int = 0, progress: bool = True, export: str | Path | None = None,
                 device: str | None = None, family: BlindFamily | None = None,
                 init: str | Path | None = None, lr: float = 2e-4, p_terminal: float = 0.0,
                 conditioned: bool = False, p_unknown: float = 0.25) -> SRDenoiser:
    """Train the demonstration model on the 1 mm MNI152 template minus the held-out slab.

    Patches cover 48 high-res voxels along each down-sampled axis (24 low-res voxels at 2x, 12 at 4x,
    rounded down to a multiple of 4) and 32 voxels along the others. `conditioned` makes a model told
    the degradation (see `train_sr`). With a `family` whose `p_synth`
    is positive, the MNI152 grey/white/CSF maps feed synthetic contrasts (`blind.synth_image`).
    """
    from sciffusion.plugins.mri.data import mni_tissue_maps, mni_volume, training_region
    from sciffusion.plugins.mri.degrade import crop_to_multiple

    scale = tuple(int(f) for f in scale)
    patch = tuple(32 if f == 1 else max(4, (48 // f) // 4 * 4) for f in scale)
    synth = family is not None and family.p_synth > 0
    data = "MNI152 2009 T1 1 mm (nilearn), axis-1 slab [104, 168) excluded" + (
        "; synthetic contrasts from its grey/white/CSF maps" if synth else "")
    notes = {"data": data}
    if family is not None:
        notes["degradations"] = "blind family (see the checkpoint's extra)"
    config = SRConfig(scale=scale, patch=patch, notes=notes, conditioned=conditioned)
    vol = mni_volume(1).data
    region = training_region(crop_to_multiple(vol, scale).shape)
    maps = [mni_tissue_maps(1)] if synth else None
    return train_sr([vol], config, out_dir, steps=steps, batch_size=batch_size, lr=lr, regions=[region],
                    seed=seed, progress=progress, export=export, device=device, family=family, maps=maps,
                    init=init, extra={"data": data}, p_terminal=p_terminal, p_unknown=p_unknown)
