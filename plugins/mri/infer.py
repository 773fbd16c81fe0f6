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
from scipy import ndimage as ndi
from torch import Tensor

from sciffusion.core.devices import AutocastModel, autocast_dtype
from sciffusion.plugins import core_sampler
from sciffusion.plugins.mri.conditioning import Conditioning
from sciffusion.plugins.mri.degrade import upsample
from sciffusion.plugins.mri.model import SRDenoiser, depth_to_space, space_to_depth
from sciffusion.plugins.mri.profile_estimate import resolve_auto_profile
from sciffusion.plugins.mri.transforms import PercentileScaler


@dataclass
class SRResult:
    """Outputs on the refined grid, in the input's intensity units."""

    mean: np.ndarray  # the estimate, (f_x x, f_y y, f_z z)
    std: np.ndarray  # per-voxel standard deviation over the K samples
    sample_mean: np.ndarray  # mean of the K final samples
    posterior_mean: np.ndarray  # mean over the K chains of the first-step prediction E[y | l]
    cubic: np.ndarray
    trilinear: np.ndarray
    samples: np.ndarray | None = None  # (K, ...) when keep_samples
    conditioning: dict | None = None  # what a conditioned model was told (`conditioning.resolve`)
    consistency: dict | None = None  # the data-consistency step, when the slice profile was known
    profile_estimate: dict | None = None  # an `auto` slice profile and what it resolved to


CPU_SW_BATCH = 2  # windows per forward on the CPU: more only adds memory, the cores are busy already
MAX_CUDA_SW_BATCH = 16  # a 48^3 window already fills a GPU; larger batches only add memory
ACTIVATION_FACTOR = 16  # peak live activations of one window, in units of `channels[0] * prod(roi)` values


def default_sw_batch_size(device: str | torch.device, roi: tuple[int, int, int], channels: tuple[int, ...],
                          precision: torch.dtype | None = None) -> int:
    """Windows per UNet forward: `CPU_SW_BATCH` on the CPU; on CUDA what a quarter of free memory holds.

    One window of `prod(roi)` low-res voxels keeps at most about `ACTIVATION_FACTOR * channels[0] *
    prod(roi)` activation values alive in the UNet's forward (the skip connections of the first level
    dominate; the shipped 2x model peaks at 13-16 on the CPU), so
    `n = floor(free / 4 / (ACTIVATION_FACTOR * channels[0] * prod(roi) * bytes))`, clipped to
    `[1, MAX_CUDA_SW_BATCH]`, with 2 bytes per value under bf16/fp16 autocast. For the shipped 2x
    model (48^3 windows, 32 channels, fp32) one window is about 230 MB, so a GPU with 15 GB free or
    more gets 16 windows, one with 8 GB free gets 8.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return CPU_SW_BATCH
    free, _ = torch.cuda.mem_get_info(dev)
    itemsize = 4 if precision is None else 2
    per_window = ACTIVATION_FACTOR * channels[0] * int(np.prod(roi)) * itemsize
    return int(min(MAX_CUDA_SW_BATCH, max(1, free // 4 // per_window)))


class WindowedDenoiser(torch.nn.Module):
    """`model(x_t, t, cond)` evaluated by sliding windows over the low-res grid.

    Windows of `roi` low-res voxels (multiples of the UNet's `multiple`) overlap by `overlap`
    and are blended with Gaussian weights `w` (MONAI's importance map, built once per denoiser and
    device): the prediction at a voxel is `sum_w w f(window) / sum_w w`. `sw_batch_size` windows go
    through the network at once, under autocast to `dtype` when given (`core.devices.AutocastModel`:
    the output comes back in float32). A volume no larger than `roi` is evaluated in one pass.

    With a `process`, the first call's prediction is kept as `x0` (`self.first_x0`,
    `process.predict_x0`): at `t = 1` it is the regression `E[x_0 | cond]`. `degradation` (the
    vector `d` of a conditioned model, the same for every window) goes to the model with each window.
    """

    def __init__(self, model: SRDenoiser, roi: tuple[int, int, int], overlap: float = 0.25,
                 sw_batch_size: int = CPU_SW_BATCH, dtype: torch.dtype | None = None, process=None,
                 degradation: Tensor | None = None) -> None:
        super().__init__()
        self.model, self.roi, self.overlap, self.sw_batch_size = model, tuple(roi), overlap, sw_batch_size
        self.degradation = degradation
        self.dtype, self.process = dtype, process
        self.net = AutocastModel(model, dtype)
        self.first_x0: Tensor | None = None
        self._weights: Tensor | None = None

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Prediction of `x_t`'s shape; the first call's `x0` prediction is kept when a process is given."""
        out = self._predict(x_t, t, cond)
        if self.first_x0 is None and self.process is not None:
            self.first_x0 = self.process.predict_x0(out, x_t, t)
        return out

    def blending_weights(self, device: torch.device) -> Tensor:
        """MONAI's Gaussian importance map of one window (`sigma = 0.125 roi`), built once per device."""
        from monai.data.utils import compute_importance_map

        if self._weights is None or self._weights.device != device:
            self._weights = compute_importance_map(self.roi, mode="gaussian", sigma_scale=0.125, device=device,
                                                   dtype=torch.float32)
        return self._weights

    def _predict(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """`t` must be the same for the whole batch (as in the core samplers)."""
        from monai.inferers import sliding_window_inference

        d = self.degradation
        if all(n <= r for n, r in zip(x_t.shape[2:], self.roi)):
            return self.net(x_t, t, cond if d is None else (cond, d))
        t0 = t.reshape(-1)[:1]

        def predictor(w: Tensor, condition: Tensor) -> Tensor:
            return self.net(w, t0.expand(w.shape[0]), condition if d is None else (condition, d))

        # `condition` is cut into the same windows as `x_t`: no concatenated copy of the two volumes
        out = sliding_window_inference(x_t, self.roi, self.sw_batch_size, predictor, overlap=self.overlap,
                                       mode="gaussian", progress=False, condition=cond.expand_as(x_t),
                                       roi_weight_map=self.blending_weights(x_t.device))
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
    steps: int = 5,
    method: str | None = None,
    seed: int = 0,
    roi: tuple[int, int, int] | None = None,
    overlap: float = 0.25,
    sw_batch_size: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    progress: bool = False,
    keep_samples: bool = False,
    estimate: str = "posterior_mean",
    std_sigma: float = 1.0,
    conditioning: Conditioning | None = None,
    consistency: bool = True,
) -> SRResult:
    """Super-resolve a low-resolution volume `lr` (scanner units, shape `(x, y, z)`) by the model's scale.

    `samples` = K draws with the core sampler `method` (None: the core's default, `core_sampler`) in
    `steps` steps, seeded by `seed`. The estimate below does not depend on `method` or `steps` (it is
    the first evaluation); they change the samples, and so `std` and `sample_mean`.
    `roi` (low-res voxels) defaults to twice the training patch per axis: fewer, larger windows
    cost less than many overlapping small ones (the UNet's middle block attends over the whole
    window; on the held-out MNI slab this size scored as well as the training size).
    Returns `SRResult` on the `(f_x x, f_y y, f_z z)` grid, with `mean` the chosen `estimate`:

    - `"posterior_mean"`: the denoiser's first prediction at `t = 1`, where `x_1` carries no
      information, is the regression `E[x_0 | cond]` (averaged over the K chains). The mean of K
      samples converges to the same `E[x_0 | cond]` but, at finite K, adds `Var[x_0 | cond] / K`
      of sampling noise to its squared error, so this is the better point estimate;
    - `"sample_mean"`: the mean of the K final samples.

    `sw_batch_size` windows go through the UNet at once (None: `default_sw_batch_size`, 2 on the
    CPU, up to 16 on CUDA). `precision` is the UNet's autocast (`autocast_dtype`; `auto`: bf16 on
    recent GPUs, fp16 on older ones, fp32 on the CPU); the sampler's arithmetic stays fp32.

    Device memory holds the sampler's state and the windows' activations; the first step's `x0`
    prediction (one K-volume) is the only tensor kept beside them, and the float64 results are
    made on the CPU.

    `std` is always the spread of the K final samples (the uncertainty map): with K = 4 a per-voxel
    variance has 3 degrees of freedom, so the variance is pooled over a Gaussian neighbourhood of
    `std_sigma` refined voxels, `std = sqrt(G_sigma * var_K)` (`std_sigma=0`: per voxel).

    A conditioned model (`config.conditioned`) is told the degradation: `conditioning` (a
    `conditioning.Conditioning`; None: blind) gives the slice profile and the noise std in `lr`'s
    units or `"auto"` to estimate it from `lr`; the result's `conditioning` records what was used.
    An unconditioned model ignores it. An `"auto"` slice profile is estimated from a thick-slice
    `lr` first (`profile_estimate.resolve_auto_profile`, recorded in `profile_estimate`; unknown
    for a scan without an axis at full resolution), for the model and the data-consistency step.

    With `consistency` and a known slice profile (`conditioning.profile`), every output (the
    estimates and the samples) is made consistent with `lr` (`consistency.fit_consistency`: the
    part of the residual `lr - A y` above the noise is removed; without noise `A y = lr` exactly).
    Its noise level is `conditioning.consistency_sigma` (at least the level estimated from `lr`);
    the result's `consistency` records it and the per-band gains. Any model can use it, conditioned
    or not.
    """
    from sciffusion.core.diffusion.process import DiffusionProcess
    from sciffusion.core.diffusion.samplers import sample
    from sciffusion.core.diffusion.schedules import get_schedule

    cfg = model.config
    method = core_sampler(method)
    _check_arguments(method, estimate, samples, steps, sw_batch_size)
    conditioning, profile_record = resolve_auto_profile(conditioning, lr, cfg.scale)
    dev = torch.device(device)
    dtype = autocast_dtype(precision, dev)
    scaler, cubic, trilinear = _normalise_and_interpolate(lr, cfg)
    model = model.to(dev).eval()
    cond = space_to_depth(torch.from_numpy(cubic)[None, None].to(dev), cfg.scale)
    cond, size = _pad_to(cond, model.multiple)
    roi = tuple(max(model.multiple, r // model.multiple * model.multiple) for r in (roi or tuple(2 * p for p in cfg.patch)))
    sw_batch_size = sw_batch_size or default_sw_batch_size(dev, roi, tuple(cfg.channels), dtype)
    process = DiffusionProcess(get_schedule(cfg.schedule), prediction=cfg.prediction)
    degradation, told = _degradation(model, conditioning, lr, scaler)
    net = WindowedDenoiser(model, roi, overlap, sw_batch_size, dtype=dtype, process=process,
                           degradation=None if degradation is None else degradation.to(dev))
    gen = torch.Generator(device=dev).manual_seed(int(seed))  # draws where the sampler runs: no copies
    x0 = sample(net, process, (samples, *cond.shape[1:]), method=method, steps=steps, generator=gen,
                cond=cond.expand(samples, *cond.shape[1:]), progress=progress, device=dev)
    ys, first_hr = (_refined(x[..., : size[0], : size[1], : size[2]], cubic, cfg) for x in (x0, net.first_x0))
    ys, posterior = scaler.inverse(ys), scaler.inverse(first_hr.mean(0))
    chosen = posterior if estimate == "posterior_mean" else ys.mean(0)
    correct, record = _consistency(conditioning if consistency else None, lr, cfg.scale, chosen)
    ys, posterior = correct(ys), correct(posterior)
    sample_mean = ys.mean(0)
    mean = posterior if estimate == "posterior_mean" else sample_mean
    return SRResult(mean, _pooled_std(ys, std_sigma), sample_mean, posterior, scaler.inverse(cubic),
                    scaler.inverse(trilinear), ys if keep_samples else None, told, record, profile_record)


def _consistency(conditioning: Conditioning | None, lr: np.ndarray, scale: tuple[int, int, int],
                 estimate: np.ndarray):
    """The data-consistency map for this scan (identity without a known profile) and its record.

    The correction is fitted on `estimate`'s residual and applied, unchanged, to every output.
    """
    if conditioning is None or conditioning.profile is None:
        return (lambda y: y), None
    from sciffusion.plugins.mri.conditioning import consistency_sigma
    from sciffusion.plugins.mri.consistency import fit_consistency

    sigma = consistency_sigma(conditioning, lr)
    fitted = fit_consistency(estimate, lr, scale, conditioning.profile, sigma)
    record = {"noise_sigma": round(float(sigma), 6), "gains": [round(float(g), 4) for g in fitted.gains]}

    def correct(y: np.ndarray) -> np.ndarray:
        return np.stack([fitted(v, lr) for v in y]) if y.ndim == 4 else fitted(y, lr)

    return correct, record


def _degradation(model: SRDenoiser, conditioning: Conditioning | None, lr: np.ndarray, scaler: PercentileScaler
                 ) -> tuple[Tensor | None, dict | None]:
    """The degradation vector of a conditioned model and its record (`conditioning.resolve`); None otherwise."""
    if not model.config.conditioned:
        return None, None
    from sciffusion.plugins.mri.conditioning import resolve

    return resolve(conditioning, lr, scaler.b - scaler.a)


def _normalise_and_interpolate(lr: np.ndarray, cfg) -> tuple[PercentileScaler, np.ndarray, np.ndarray]:
    """The percentile scaler fitted on `lr`, and the normalised cubic and trilinear upsamplings."""
    lr = np.asarray(lr, np.float32)
    scaler = PercentileScaler.fit(lr, cfg.lower_percentile, cfg.upper_percentile)
    lr_n = scaler(lr)
    return scaler, upsample(lr_n, cfg.scale, 3), upsample(lr_n, cfg.scale, 1)


def _check_arguments(method: str, estimate: str, samples: int, steps: int, sw_batch_size: int | None) -> None:
    from sciffusion.core.diffusion.samplers import available_samplers

    if method not in available_samplers():
        raise ValueError(f"unknown sampler {method!r}; expected one of {', '.join(available_samplers())}")
    if estimate not in ("posterior_mean", "sample_mean"):
        raise ValueError(f"unknown estimate {estimate!r}; expected 'posterior_mean' or 'sample_mean'")
    if samples < 1 or steps < 1:
        raise ValueError(f"samples and steps must be >= 1, got samples={samples}, steps={steps}")
    if sw_batch_size is not None and sw_batch_size < 1:
        raise ValueError(f"--sw-batch-size must be >= 1, got {sw_batch_size}")


def _refined(x: Tensor, cubic: np.ndarray, cfg) -> np.ndarray:
    """Normalised volumes on the refined grid from residuals `x` `(K, F, x, y, z)`: `cubic + r D2S(x)`.

    `x` moves to the CPU first: the refined copy and the float64 arithmetic never take device memory.
    """
    return cubic[None].astype(np.float64) + depth_to_space(x.cpu(), cfg.scale)[:, 0].double().numpy() * cfg.residual_scale


def _pooled_std(ys: np.ndarray, sigma: float) -> np.ndarray:
    """`sqrt(G_sigma * var_K)` of the K samples `ys` (scanner units), the variance in float64."""
    var = np.asarray(ys, np.float64).var(0, ddof=1) if len(ys) > 1 else np.zeros(ys.shape[1:])
    if sigma > 0:
        var = ndi.gaussian_filter(var, sigma, mode="nearest")
    return np.sqrt(np.maximum(var, 0.0)).astype(np.float32)
