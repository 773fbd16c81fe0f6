"""Whole-volume MRI super-resolution: the MRI plugin against a MONAI-tutorial-style loop, same network and steps.

- `core_plugin`: `plugins.mri.infer.super_resolve` (percentile scaling, cubic upsampling, space-to-depth,
  then `core.sample` with DDIM whose every network call is MONAI's `sliding_window_inference` over the
  low-resolution grid, Gaussian blending), one sample;
- `monai_loop`: the same preprocessing, then MONAI's `DDIMScheduler` (on the same betas, `v` prediction,
  no clipping) stepping `N` times, each step one `sliding_window_inference` of the same UNet with the same
  window, overlap, blending and window batch.

The network is the plugin's `SRDenoiser` (MONAI `DiffusionModelUNet`, 3-D) with random weights: time and
memory do not depend on the weights, and no trained checkpoint is needed. Both contenders make the same
number of window evaluations (`N` steps x windows per step). Wall time of a whole call (median of
interleaved repeats) and the peak memory it adds.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks import _common as C
from benchmarks.sampler_accuracy import monai_schedule_name


def build(quick: bool):
    """The plugin's denoiser (small in quick mode) and a random low-resolution volume."""
    from sciffusion.plugins.mri.model import SRConfig, SRDenoiser

    if quick:
        cfg = SRConfig(channels=(8, 8, 16), patch=(8, 8, 8), norm_num_groups=4)
        shape = (12, 12, 12)
    else:
        cfg = SRConfig(patch=(16, 16, 16))
        shape = (24, 24, 24)
    torch.manual_seed(0)
    model = SRDenoiser(cfg).eval()
    rng = np.random.default_rng(0)
    lr = (rng.standard_normal(shape).astype(np.float32) * 100 + 500).clip(0)
    return model, lr


def core_plugin(model, lr: np.ndarray, steps: int, roi: tuple[int, int, int], sw_batch: int) -> np.ndarray:
    """The plugin's whole-volume inference with the core DDIM sampler."""
    from sciffusion.plugins.mri.infer import super_resolve

    return super_resolve(model, lr, samples=1, steps=steps, method="ddim", roi=roi, overlap=0.25,
                         sw_batch_size=sw_batch).mean


@torch.no_grad()
def monai_loop(model, lr: np.ndarray, steps: int, roi: tuple[int, int, int], sw_batch: int) -> np.ndarray:
    """A MONAI-tutorial-style loop: scheduler steps around `sliding_window_inference` of the same UNet."""
    from monai.inferers import sliding_window_inference
    from monai.networks.schedulers import DDIMScheduler

    from sciffusion.plugins.mri.degrade import upsample
    from sciffusion.plugins.mri.model import depth_to_space, space_to_depth
    from sciffusion.plugins.mri.transforms import PercentileScaler

    cfg = model.config
    scaler = PercentileScaler.fit(lr, cfg.lower_percentile, cfg.upper_percentile)
    cubic = upsample(scaler(lr), cfg.scale, 3)
    cond = space_to_depth(torch.from_numpy(cubic)[None, None], cfg.scale)
    pred_type = {"v": "v_prediction", "eps": "epsilon", "x0": "sample"}[cfg.prediction]
    sch = DDIMScheduler(num_train_timesteps=1000, schedule=monai_schedule_name(cfg.schedule), clip_sample=False,
                        prediction_type=pred_type)
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cond.shape, generator=g)
    f = cond.shape[1]
    for k in sch.timesteps:
        tk = torch.full((1,), float(k))

        def predictor(w: torch.Tensor, tk: torch.Tensor = tk) -> torch.Tensor:
            return model.unet(w, tk.expand(w.shape[0]))

        out = sliding_window_inference(torch.cat([x, cond], 1), roi, sw_batch, predictor, overlap=0.25,
                                       mode="gaussian", progress=False)
        out = out.as_tensor() if hasattr(out, "as_tensor") else out
        x, _ = sch.step(out[:, :f], int(k), x)
    y = cubic + depth_to_space(x, cfg.scale)[0, 0].numpy() * cfg.residual_scale
    return scaler.inverse(y)


def sweep_run(model, method: str | None, steps: int, quick: bool) -> dict:
    """One run of the demo (`evaluate_demo`: the held-out MNI slab, K = 4 samples, seed 0) or, quick, of a
    small reference block: the estimate's PSNR / SSIM, each sample's PSNR, the uncertainty map's mean and its
    Spearman correlation with |error| inside the head mask, and the CPU / wall seconds of the call."""
    from sciffusion.plugins.mri.metrics import psnr
    from sciffusion.plugins.mri.pipeline import evaluate_demo, evaluate_reference

    kw = {"samples": 4, "steps": steps, "method": method, "seed": 0, "keep_samples": True}
    cpu, wall = time.process_time(), time.perf_counter()
    if quick:
        from sciffusion.plugins.mri.io import Volume

        g = np.linspace(-1, 1, 32)
        head = (500 * (np.add.outer(np.add.outer(g**2, g**2), g**2) < 0.7)).astype(np.float32)  # a ball
        run = evaluate_reference(Volume(head, np.eye(4), None, "ball"), model, **kw)
    else:
        run = evaluate_demo(model, **kw)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    r, m = run.result, run.metrics
    per_sample = [psnr(y, run.reference, run.mask) for y in r.samples]
    return {"method": run.settings["method"], "steps": steps, "cpu_s": cpu, "wall_s": wall,
            "psnr": m["methods"]["sciffusion"]["psnr"], "ssim": m["methods"]["sciffusion"]["ssim"],
            "sample_psnr": float(np.mean(per_sample)), "sample_mean_psnr": m["methods"]["sciffusion_sample_mean"]["psnr"],
            "std_mean": float(r.std[run.mask].mean()), "spearman": m["uncertainty_spearman"]}


def steps_sweep(args, started: float) -> str:
    """`--steps-sweep`: the shipped 2x checkpoint on the demo with the core's default sampler at each step
    count, and `--compare METHOD:STEPS`; a section of this page."""
    from sciffusion.plugins.mri.cli import load_model_for
    from sciffusion.plugins.mri.model import SRConfig, SRDenoiser

    torch.manual_seed(0)
    model = SRDenoiser(SRConfig(channels=(8, 8, 16), patch=(8, 8, 8), norm_num_groups=4)).eval() if args.quick \
        else load_model_for((2, 2, 2), None)[0]
    runs = [(None, int(s)) for s in args.steps_sweep.split(",")]
    runs += [(m, int(s)) for m, s in (c.split(":") for c in args.compare.split(",") if c)]
    rows, section = [], ""
    for method, steps in runs:   # the section is rewritten after every run: a stopped sweep keeps its rows
        r = sweep_run(model, method, steps, args.quick)
        rows.append([r["method"] + (" (default)" if method is None else ""), steps, f"{r['psnr']:.2f}",
                     f"{r['ssim']:.4f}", f"{r['sample_psnr']:.2f}", f"{r['sample_mean_psnr']:.2f}",
                     f"{r['std_mean']:.3g}", f"{r['spearman']:.3f}", f"{r['cpu_s']:.0f}", f"{r['wall_s']:.0f}"])
        text = SWEEP_NOTES + "\n" + C.table(
            ["sampler", "steps", "PSNR (dB)", "SSIM", "PSNR of one sample", "PSNR of the mean of 4",
             "mean std", "Spearman(std, abs error)", "CPU s", "wall s"], rows)
        section = C.report_section("mri_superres", C.DOCS / "mri_superres.md",
                                   "Sampler steps on the shipped 2x model", text, args, started)
    return section


SWEEP_NOTES = """The shipped 2x checkpoint on the demo of `python -m recipes.mri_superres` (the held-out MNI slab, K = 4
samples, seed 0, one thread; metrics inside the head mask, intensities over the reference's p99.5). PSNR
and SSIM are those of the estimate (the network's first prediction, E[x0 | low-res]): the same for every
sampler and step count. The steps change the samples: the PSNR of one sample (mean over the 4), of
their mean, the uncertainty map (its mean inside the mask, scanner units, and its Spearman correlation
with the absolute error of the estimate) and the cost.
"""


def main(argv: list[str] | None = None) -> str:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--steps-sweep", default=None,
                   help="e.g. 5,10: instead of the timing comparison, score the shipped 2x model on the demo at these "
                   "step counts with the core's default sampler (and --compare); writes a section of the page")
    p.add_argument("--compare", default="dpmpp_2m:10", help="METHOD:STEPS,... runs beside the sweep")
    args = C.parse(p, argv)
    started = time.perf_counter()
    if args.steps_sweep:
        C.setup(args.threads)
        return steps_sweep(args, started)
    device = C.setup(args.threads)
    if device.type != "cpu":
        print("note: this benchmark runs on the CPU (the plugin's inference takes a device argument; not wired here)")
    device = torch.device("cpu")
    model, lr = build(args.quick)
    steps = args.steps or (2 if args.quick else 5)
    repeats = 1 if args.quick else 3
    roi = tuple(model.config.patch)
    sw_batch = 4
    calls = {
        "core_plugin": lambda: core_plugin(model, lr, steps, roi, sw_batch),
        "monai_loop": lambda: monai_loop(model, lr, steps, roi, sw_batch),
    }
    times = C.interleaved(calls, device, repeats=repeats, warmup=1)
    mem = {k: C.peak_memory(f, device) for k, f in calls.items()}
    med = {k: C.median(v) for k, v in times.items()}
    ratio = med["core_plugin"] / med["monai_loop"]
    mratio = mem["core_plugin"] / mem["monai_loop"] if mem["monai_loop"] > 2**16 else float("nan")
    rows = [[k, f"{med[k]:.2f}", C.fmt(med[k] / med["monai_loop"], 3), C.fmt_bytes(mem[k]), len(times[k])]
            for k in calls]
    lo = lr.shape
    hi = tuple(n * s for n, s in zip(lo, model.config.scale))
    summary = (
        f"Low-resolution volume {lo} -> {hi}, DDIM, {steps} steps, windows of {roi} low-res voxels, overlap "
        f"0.25, Gaussian blending, {sw_batch} windows per network call, one sample, {args.threads} thread(s). "
        "Ratio = time / the MONAI loop's (below 1: the core is faster).\n\n"
        + C.table(["contender", "seconds per volume", "time ratio", "peak memory", "repeats"], rows)
        + f"\n\nHeadline: plugin + core sampler / MONAI loop = **{C.fmt(ratio, 3)}** in time"
        + (f", **{C.fmt(mratio, 3)}** in peak memory." if mratio == mratio else ".")
    )
    loses = []
    if ratio > 1.05:
        loses.append(f"time: {C.fmt(ratio, 3)}x the MONAI loop")
    if mratio == mratio and mratio > 1.1:
        loses.append(f"peak memory: {C.fmt(mratio, 3)}x the MONAI loop")
    why = ("Where the core loses:\n\n" + ("\n".join(f"- {s}" for s in loses) if loses else "- nowhere in this run")
           + "\n\n" + NOTES)
    return C.report("mri_superres", "MRI whole-volume super-resolution: plugin against a MONAI loop", summary,
                    [("Where the core loses, and why", why)], args, started)


NOTES = """What differs: the network work is identical (same UNet, same windows, same blending). Besides it,
`super_resolve` returns more: a trilinear baseline and the cubic upsampling in scanner units, the first
step's prediction (its posterior-mean estimate) and a per-voxel spread, so it runs one more 3-D
interpolation and a few whole-volume passes; the core sampler adds its per-step finite-value check and its
per-call grid set-up (see sampler_overhead.md). On a small volume with few steps these fixed costs show; the
network's share grows with the volume and the step count. CPU memory figures are peak-RSS growth (an
estimate).
"""


if __name__ == "__main__":
    main()
