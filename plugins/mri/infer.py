"""Whole-volume super-resolution: a core sampler with MONAI sliding-window denoising at each step.

For a low-resolution volume `l` the sampler integrates the reverse process of the residual
`x_0 = S2D((y - u) / r)`, `u = cubic(l)`, from pure noise at `t = 1`. At every step the denoiser
`f_theta(concat(x_t, S2D(u)), t)` is evaluated by `monai.inferers.sliding_window_inference`
(Gaussian-weighted blending of overlapping windows) unless the volume fits in one window. `K`
samples `y_k = u + r D2S(x_0^{(k)})` give the estimate `mean_k y_k` and the per-voxel standard
deviation `std_k y_k` (the uncertainty map).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from plugins.mri.degrade import upsample
from plugins.mri.model import SRDenoiser, depth_to_space, space_to_depth
from plugins.mri.transforms import PercentileScaler

SAMPLERS = ("dpmpp_2m", "ddim", "heun", "ddpm", "euler_maruyama")


@dataclass
class SRResult:
    """Outputs on the refined grid, in the input's intensity units."""

    mean: np.ndarray  # the estimate, (f_x x, f_y y, f_z z)
    std: np.ndarray  # per-voxel standard deviation over the K samples
    cubic: np.ndarray
    trilinear: np.ndarray
    samples: np.ndarray | None = None  # (K, ...) when keep_samples


class WindowedDenoiser(torch.nn.Module):
    """`model(x_t, t, cond)` evaluated by sliding windows over the low-res grid.

    Windows of `roi` low-res voxels (multiples of the UNet's `multiple`) overlap by `overlap`
    and are blended with Gaussian weights; `sw_batch_size` windows go through the network at once.
    A volume no larger than `roi` is evaluated in one pass.
    """

    def __init__(self, model: SRDenoiser, roi: tuple[int, int, int], overlap: float = 0.25,
                 sw_batch_size: int = 4) -> None:
        super().__init__()
        self.model, self.roi, self.overlap, self.sw_batch_size = model, tuple(roi), overlap, sw_batch_size

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Prediction of `x_t`'s shape; `t` must be the same for the whole batch (core samplers)."""
        from monai.inferers import sliding_window_inference

        if all(n <= r for n, r in zip(x_t.shape[2:], self.roi)):
            return self.model(x_t, t, cond)
        t0 = t.reshape(-1)[:1]
        fch = x_t.shape[1]

        def predictor(w: Tensor) -> Tensor:
            return self.model(w[:, :fch], t0.expand(w.shape[0]), w[:, fch:])

        out = sliding_window_inference(torch.cat([x_t, cond], 1), self.roi, self.sw_batch_size, predictor,
                                       overlap=self.overlap, mode="gaussian", progress=False)
        return out.as_tensor() if hasattr(out, "as_tensor") else out


def _pad_to(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int, int]]:
    """Replicate-pad the last three dims up to multiples of `multiple`; return the original sizes."""
    size = tuple(x.shape[-3:])
    pad = [(-n) % multiple for n in size]
    if any(pad):
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
    return x, size


@torch.no_grad()
def super_resolve(
    model: SRDenoiser,
    lr: np.ndarray,
    samples: int = 4,
    steps: int = 10,
    method: str = "dpmpp_2m",
    seed: int = 0,
    roi: tuple[int, int, int] | None = None,
    overlap: float = 0.25,
    sw_batch_size: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = False,
    keep_samples: bool = False,
) -> SRResult:
    """Super-resolve a low-resolution volume `lr` (scanner units, shape `(x, y, z)`) by the model's scale.

    `samples` = K draws with the core sampler `method` in `steps` steps, seeded by `seed`.
    `roi` (low-res voxels) defaults to the training patch: the UNet's middle block attends over
    the whole window, so windows of the training size keep inference in the training regime.
    Returns `SRResult` on the `(f_x x, f_y y, f_z z)` grid.
    """
    from core.process import DiffusionProcess
    from core.samplers import sample
    from core.schedules import get_schedule

    cfg = model.config
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; expected one of {', '.join(SAMPLERS)}")
    if samples < 1 or steps < 1:
        raise ValueError(f"samples and steps must be >= 1, got samples={samples}, steps={steps}")
    lr = np.asarray(lr, np.float32)
    scaler = PercentileScaler.fit(lr, cfg.lower_percentile, cfg.upper_percentile)
    lr_n = scaler(lr)
    cubic = upsample(lr_n, cfg.scale, 3)
    trilinear = upsample(lr_n, cfg.scale, 1)
    dev = torch.device(device)
    model = model.to(dev).eval()
    cond = space_to_depth(torch.from_numpy(cubic)[None, None].to(dev), cfg.scale)
    cond, size = _pad_to(cond, model.multiple)
    roi = tuple(max(model.multiple, r // model.multiple * model.multiple) for r in (roi or cfg.patch))
    net = WindowedDenoiser(model, roi, overlap, sw_batch_size)
    process = DiffusionProcess(get_schedule(cfg.schedule), prediction=cfg.prediction)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x0 = sample(net, process, (samples, *cond.shape[1:]), method=method, steps=steps, generator=gen,
                cond=cond.expand(samples, *cond.shape[1:]), progress=progress, device=dev)
    x0 = x0[..., : size[0], : size[1], : size[2]]
    res = depth_to_space(x0, cfg.scale)[:, 0].double().cpu().numpy() * cfg.residual_scale
    ys = cubic[None].astype(np.float64) + res
    width = scaler.b - scaler.a
    mean = scaler.inverse(ys.mean(0))
    std = (ys.std(0, ddof=1) * width if samples > 1 else np.zeros_like(mean)).astype(np.float32)
    return SRResult(mean, std, scaler.inverse(cubic), scaler.inverse(trilinear),
                    scaler.inverse(ys) if keep_samples else None)
