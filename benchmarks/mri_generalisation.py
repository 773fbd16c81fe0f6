"""MRI super-resolution on a brain it never saw: Colin27, six slice-profile x noise cells, 2x and 1x1x4.

Colin27 (`ch2bet.nii.gz`, Debian `mricron-data`; validation only, never trained on) is degraded whole by
each cell's slice profile (Gaussian FWHM f, box of width f = block mean, Gaussian FWHM 0.6 f, along
every reduced axis, `degrade.degrade_profile`) and noise (none, or Rician at SNR 20 relative to the mean
foreground intensity of the low-resolution volume, `degrade.add_noise`); three 96^3 crops of the brain
are super-resolved separately (`infer.super_resolve`) and scored inside the head mask of the reference
crop (PSNR, SSIM; `metrics`). Reported per cell: the mean over the crops for trilinear, cubic
B-spline and sciffusion, sciffusion minus cubic, and Spearman(std, |error|). `--mni` adds the MNI152
held-out slab at 2x with the same sampler settings (the no-regression check). `--quick` runs a tiny
random model on one 32^3 MNI crop (checks the harness; the numbers mean nothing).

A model conditioned on the degradation (`SRConfig.conditioned`) is run once per setting of
`--conditioning`: `known` tells it each cell's slice profile and true noise std, `auto` the profile
and the noise std estimated from the low-resolution crop (`conditioning.estimate_noise_sigma`, what
`--noise-sigma auto` does), `estimated` the noise std estimated likewise and the slice profile estimated
from the cell's whole low-resolution volume (`profile_estimate`, what `--slice-profile auto` does for a
user's whole scan; thick-slice scales only, unknown at 2x), `unknown` nothing (blind). With `--data-consistency on` (the default) the
same settings also tell the data-consistency step (`consistency`) the profile and the noise, for any
model: `known`, `auto` and `estimated` make every output agree with the crop's low-resolution input up to its noise,
`unknown` leaves it as the network made it. An unconditioned model with `--data-consistency off` is
run once, told nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import _common as C
from sciffusion.plugins import core_sampler

PROFILES = {"Gaussian FWHM f": ("gaussian", 1.0), "box (block mean)": ("box", 1.0),
            "Gaussian FWHM 0.6 f": ("gaussian", 0.6)}
NOISE = {"none": None, "Rician SNR 20": 20.0}
# 96^3 crops of Colin27's 181 x 217 x 181 grid (starts are multiples of 4): posterior, central, anterior
CROPS = ((44, 24, 44), (44, 64, 52), (44, 104, 40))
SIZE = 96


SETTINGS = ("known", "auto", "estimated", "unknown")


def cell_lowres(hr: np.ndarray, scale: tuple[int, int, int], profile: str, snr: float | None,
                seed: int) -> tuple[np.ndarray, float]:
    """The whole low-resolution volume of one cell (slice profile along every reduced axis, then noise)
    and its noise std `sigma = S / snr` (0 without noise; `degrade.add_noise`)."""
    from sciffusion.plugins.mri.degrade import (
        SliceProfile,
        add_noise,
        degrade_profile,
        signal_level,
    )

    kind, fwhm = PROFILES[profile]
    lr = degrade_profile(hr, scale, SliceProfile(kind, fwhm=fwhm, width=1.0))
    return add_noise(lr, snr, "rician", seed), 0.0 if snr is None else signal_level(lr) / snr


def cell_conditioning(setting: str, profile: str, sigma: float, lr: np.ndarray, scale: tuple[int, int, int]):
    """What the model and the data-consistency step are told in one cell (see the module docstring);
    `estimated` resolves `--slice-profile auto` on the cell's whole low-resolution volume `lr`."""
    from sciffusion.plugins.mri.conditioning import AUTO, BLIND, Conditioning, profile_text
    from sciffusion.plugins.mri.degrade import SliceProfile
    from sciffusion.plugins.mri.profile_estimate import resolve_auto_profile

    if setting == "estimated":
        told, _ = resolve_auto_profile(Conditioning(AUTO, AUTO), lr, scale)
        print(f"  slice profile {profile}: estimated {profile_text(told.profile)}", flush=True)
        return told
    kind, fwhm = PROFILES[profile]
    prof = SliceProfile(kind, fwhm=fwhm, width=1.0)
    return {"known": Conditioning(sigma, prof), "auto": Conditioning("auto", prof), "unknown": BLIND}[setting]


def score_crop(model, hr: np.ndarray, lr: np.ndarray, start: tuple[int, ...], size: int, samples: int,
               steps: int, adapt=None, conditioning=None, consistency: bool = True) -> dict:
    """Super-resolve one crop of `lr` and score it against the same crop of `hr` inside the head mask."""
    from sciffusion.plugins.mri.infer import super_resolve
    from sciffusion.plugins.mri.metrics import evaluate, uncertainty_correlation
    from sciffusion.plugins.mri.transforms import foreground_mask

    f = model.config.scale
    ref = hr[tuple(slice(s, s + size) for s in start)]
    low = lr[tuple(slice(s // fi, (s + size) // fi) for s, fi in zip(start, f))]
    if adapt is not None:
        model = adapt(model, low)
    r = super_resolve(model, low, samples=samples, steps=steps, seed=0, conditioning=conditioning,
                      consistency=consistency)
    mask = foreground_mask(ref)
    out = evaluate({"trilinear": r.trilinear, "cubic": r.cubic, "sciffusion": r.mean}, ref, mask)
    out["spearman"] = uncertainty_correlation(r.std, r.mean, ref, mask) if samples > 1 else float("nan")
    return out


def run_scale(model, hr: np.ndarray, crops, size: int, samples: int, steps: int, adapt=None,
              log: Path | None = None, setting: str | None = None, consistency: bool = True) -> list[dict]:
    """One row per cell: the metrics averaged over the crops (each row also appended to `log`, JSON lines,
    so that an interrupted run keeps the cells it finished). `setting`: what the model (if conditioned)
    and the data-consistency step (if `consistency`) are told."""
    from sciffusion.plugins.mri.degrade import crop_to_multiple

    hr = crop_to_multiple(hr, model.config.scale)
    rows = []
    for k, (profile, snr) in enumerate((p, s) for p in PROFILES for s in NOISE.values()):
        lr, sigma = cell_lowres(hr, model.config.scale, profile, snr, seed=k)
        told = None if setting is None else cell_conditioning(setting, profile, sigma, lr, model.config.scale)
        per = [score_crop(model, hr, lr, c, size, samples, steps, adapt, told, consistency) for c in crops]
        row = {"profile": profile, "noise": "none" if snr is None else f"Rician SNR {snr:g}"}
        if setting is not None:
            row["setting"] = setting
        for m in ("trilinear", "cubic", "sciffusion"):
            for q in ("psnr", "ssim"):
                row[f"{m}_{q}"] = float(np.mean([p[m][q] for p in per]))
        row["spearman"] = float(np.mean([p["spearman"] for p in per]))
        rows.append(row)
        if log is not None:
            with open(log, "a") as fh:
                fh.write(json.dumps({"scale": list(model.config.scale), **row}) + "\n")
        print(f"  {setting or '':<8} {row['profile']:<20} {row['noise']:<14} cubic {row['cubic_psnr']:.2f} "
              f"sciffusion {row['sciffusion_psnr']:.2f}", flush=True)
    return rows


def adapt_rows(model, hr: np.ndarray, crops, size: int, n_steps: int, cells: list[int],
               setting: str | None = None) -> list[list]:
    """`--adapt N` on the thick-slice model: the same crops with and without scan-specific fine-tuning.

    One sample, one sampler step (the estimate is the first step's prediction), so only the
    adaptation differs; the adaptation's CPU seconds are reported per crop. With a `setting` both
    runs are told the same (`cell_conditioning`, data consistency on) and the adaptation pairs use
    the profile it gives.
    """
    from sciffusion.plugins.mri.adapt import adapt_model
    from sciffusion.plugins.mri.degrade import crop_to_multiple

    hr = crop_to_multiple(hr, model.config.scale)
    cell_list = [(p, s) for p in PROFILES for s in NOISE.values()]
    rows = []
    for k in cells:
        profile, snr = cell_list[k]
        lr, sigma = cell_lowres(hr, model.config.scale, profile, snr, seed=k)
        told = None if setting is None else cell_conditioning(setting, profile, sigma, lr, model.config.scale)
        told_profile = None if told is None else told.profile  # resolved: a SliceProfile or None
        plain = [score_crop(model, hr, lr, c, size, 1, 1, conditioning=told, consistency=told is not None)
                 for c in crops]
        secs = []

        def adapt(m, low, secs=secs, profile=told_profile):
            t0 = time.process_time()
            out = adapt_model(m, low, n_steps, seed=0, profile=profile)
            secs.append(time.process_time() - t0)
            return out

        adapted = [score_crop(model, hr, lr, c, size, 1, 1, adapt=adapt, conditioning=told,
                              consistency=told is not None) for c in crops]
        cub = np.mean([p["cubic"]["psnr"] for p in plain])
        a, b = np.mean([p["sciffusion"]["psnr"] for p in plain]), np.mean([p["sciffusion"]["psnr"] for p in adapted])
        rows.append([profile, "none" if snr is None else f"Rician SNR {snr:g}", f"{cub:.2f}", f"{a:.2f}", f"{b:.2f}",
                     f"{b - a:+.2f}", f"{np.mean(secs):.0f}"])
        print(f"  adapt {profile} {snr}: plain {a:.2f} adapted {b:.2f} ({np.mean(secs):.0f} s)", flush=True)
    return rows


def scale_table(rows: list[dict]) -> tuple[str, dict]:
    """The markdown table of one scale and the target checks."""
    body = []
    for r in rows:
        d = r["sciffusion_psnr"] - r["cubic_psnr"]
        body.append([r["profile"], r["noise"], f"{r['trilinear_psnr']:.2f} / {r['trilinear_ssim']:.4f}",
                     f"{r['cubic_psnr']:.2f} / {r['cubic_ssim']:.4f}",
                     f"{r['sciffusion_psnr']:.2f} / {r['sciffusion_ssim']:.4f}", f"{d:+.2f}", C.fmt(r["spearman"], 3)])
    deltas = [r["sciffusion_psnr"] - r["cubic_psnr"] for r in rows]
    checks = {"mean_gain_db": float(np.mean(deltas)), "min_gain_db": float(np.min(deltas)),
              "ssim_above_cubic_everywhere": all(r["sciffusion_ssim"] > r["cubic_ssim"] for r in rows),
              "mean_spearman": float(np.mean([r["spearman"] for r in rows]))}
    body.append(["**mean of the six cells**", "", "", "", "", f"**{checks['mean_gain_db']:+.2f}**",
                 C.fmt(checks["mean_spearman"], 3)])
    head = ["slice profile", "noise", "trilinear PSNR / SSIM", "cubic PSNR / SSIM", "sciffusion PSNR / SSIM",
            "sciffusion - cubic (dB)", "Spearman(std, abs error)"]
    return C.table(head, body), checks


def mni_slab(model, samples: int, steps: int, setting: str | None = None, consistency: bool = True) -> dict:
    """The MNI152 held-out slab (never trained on), same settings: `pipeline.evaluate_demo` (Gaussian
    FWHM f, no noise; that is what `known` tells a conditioned model)."""
    from sciffusion.plugins.mri.conditioning import BLIND, Conditioning
    from sciffusion.plugins.mri.degrade import SliceProfile
    from sciffusion.plugins.mri.pipeline import evaluate_demo

    prof = SliceProfile("gaussian", fwhm=model.config.fwhm)
    told = {None: None, "known": Conditioning(0.0, prof), "auto": Conditioning("auto", prof), "unknown": BLIND}[setting]
    return evaluate_demo(model, samples=samples, steps=steps, conditioning=told,
                         consistency=consistency).metrics["methods"]


def load_inputs(args):
    """(reference volume, crops, crop size, models per scale, description) for full or quick mode."""
    from sciffusion.plugins.mri.model import (
        SRConfig,
        SRDenoiser,
        default_checkpoint,
        load_checkpoint,
    )

    if args.quick:
        from sciffusion.plugins.mri.data import mni_volume

        torch.manual_seed(0)
        hr = mni_volume(2).data[16:64, 24:72, 16:64]
        models = {s: SRDenoiser(SRConfig(scale=s, channels=(8, 16), patch=p, norm_num_groups=8)).eval()
                  for s, p in (((2, 2, 2), (8, 8, 8)), ((1, 1, 4), (16, 16, 4))) if s in args.scales}
        if args.quick_conditioned:
            models = {s: SRDenoiser(SRConfig(**{**m.config.to_dict(), "conditioned": True})).eval()
                      for s, m in models.items()}
        return hr, ((8, 8, 8),), 32, models, "MNI152 2 mm, one 32^3 crop, random tiny models"
    from sciffusion.plugins.mri.colin27 import load_colin27

    hr = load_colin27().data
    ckpts = {(2, 2, 2): args.checkpoint_2x or default_checkpoint((2, 2, 2)),
             (1, 1, 4): args.checkpoint_1x1x4 or default_checkpoint((1, 1, 4))}
    models = {s: load_checkpoint(p, scale=s) for s, p in ckpts.items() if s in args.scales}
    desc = "Colin27, " + ", ".join(f"{Path(str(ckpts[s])).name} for {'x'.join(map(str, s))}" for s in models)
    return hr, CROPS, SIZE, models, desc


def main(argv: list[str] | None = None) -> str:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=2, help="K samples per crop (their spread is the uncertainty)")
    p.add_argument("--steps", type=int, default=3, help="sampler steps (the estimate is the first step's)")
    p.add_argument("--checkpoint-2x", default=None)
    p.add_argument("--checkpoint-1x1x4", default=None)
    p.add_argument("--only", choices=["2x2x2", "1x1x4"], default=None, help="one scale only")
    p.add_argument("--mni", action="store_true", help="also the MNI152 held-out slab at 2x")
    p.add_argument("--name", default="mri_generalisation", help="page name under --out")
    p.add_argument("--crops", type=int, default=None, help="use the first K crops only")
    p.add_argument("--adapt", type=int, default=0,
                   help="instead of the cell table: 1x1x4 with and without N steps of --adapt")
    p.add_argument("--cells", default="0,1,2,3,4,5", help="with --adapt: cell indices (profile-major, 0..5)")
    p.add_argument("--conditioning", default="known,auto,unknown",
                   help="for a conditioned model: what it is told, one table each (known, auto, unknown)")
    p.add_argument("--quick-conditioned", action="store_true", help="with --quick: tiny conditioned models")
    p.add_argument("--data-consistency", choices=("on", "off"), default="on",
                   help="make outputs agree with the scan where the profile is told (any model; default on)")
    args = C.parse(p, argv)
    consistency = args.data_consistency == "on"
    args.scales = [(2, 2, 2), (1, 1, 4)] if args.only is None else [tuple(int(v) for v in args.only.split("x"))]
    started = time.perf_counter()
    C.setup(args.threads)
    hr, crops, size, models, desc = load_inputs(args)
    crops = crops[: args.crops] if args.crops else crops
    if args.adapt:
        return adapt_page(args, hr, crops, size, models, desc, started)
    settings = parse_settings(args.conditioning)
    sections, checks = [], {}
    for scale, model in models.items():
        for setting in _settings_for(model, settings, consistency):
            s = "x".join(map(str, scale)) + ("" if setting is None else f", told {setting}")
            print(f"scale {s}", flush=True)
            t0 = time.process_time()
            log = None if args.no_write or args.quick else Path(args.out) / f"{args.name}.jsonl"
            if log is not None:
                log.parent.mkdir(parents=True, exist_ok=True)
            rows = run_scale(model, hr, crops, size, args.samples, args.steps, log=log, setting=setting,
                             consistency=consistency)
            tab, checks[s] = scale_table(rows)
            sections.append((f"{s}", tab + f"\n\n{time.process_time() - t0:.0f} s CPU for this table."))
    if args.mni and (2, 2, 2) in models and not args.quick:
        model = models[(2, 2, 2)]
        for setting in _settings_for(model, settings, consistency):
            m = mni_slab(model, args.samples, args.steps, setting, consistency)
            told = "" if setting is None else f", told {setting}"
            sections.append((f"MNI152 held-out slab, 2x (same settings{told})", C.table(
                ["method", "PSNR (dB)", "SSIM"], [[k, f"{v['psnr']:.2f}", f"{v['ssim']:.4f}"] for k, v in m.items()])
                + f"\n\nsciffusion - cubic: {m['sciffusion']['psnr'] - m['cubic']['psnr']:+.2f} dB."))
    summary = (f"{desc}; {len(crops)} crops of {size}^3 voxels, K = {args.samples} samples, {args.steps} "
               f"{core_sampler()} steps, estimate = the denoiser's posterior mean, data consistency "
               f"{args.data_consistency}, {args.threads} thread(s). Each cell: "
               "PSNR (dB) / SSIM inside the head mask, the mean over the crops.\n\n"
               + C.table(["scale", "mean gain over cubic (dB)", "smallest gain (dB)", "SSIM above cubic in every cell",
                          "mean Spearman"],
                         [[s, f"{c['mean_gain_db']:+.2f}", f"{c['min_gain_db']:+.2f}",
                           "yes" if c["ssim_above_cubic_everywhere"] else "no", C.fmt(c["mean_spearman"], 3)]
                          for s, c in checks.items()]))
    sections.append(("How the cells are made", __doc__.split("\n\n", 1)[1].strip()))
    return _report(args, "MRI super-resolution on an unseen brain (Colin27)", summary, sections, started)


def _settings_for(model, settings: list[str], consistency: bool) -> list[str | None]:
    """What to tell `model`: every setting when it is conditioned or the data-consistency step is on
    (the step uses the profile and noise it is told), else nothing (`None`)."""
    return settings if model.config.conditioned or consistency else [None]


def parse_settings(text: str) -> list[str]:
    """`--conditioning`: a comma-separated subset of `SETTINGS`."""
    out = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in out if t not in SETTINGS]
    if bad or not out:
        raise SystemExit(f"--conditioning: expected a comma-separated subset of {', '.join(SETTINGS)}, got {text!r}")
    return out


def _report(args, title: str, summary: str, sections, started: float) -> str:
    """`C.report` under the page name `--name`, with the regenerating command naming this module."""
    page = C.report(args.name, title, summary, sections, args, started)
    if args.name == "mri_generalisation":
        return page
    fixed = page.replace(f"python -m benchmarks.{args.name}", "python -m benchmarks.mri_generalisation")
    path = Path(args.out) / f"{args.name}.md"
    if path.is_file() and path.read_text() == page:
        C.atomic_write(path, fixed)
    return fixed


def adapt_page(args, hr, crops, size, models, desc, started) -> str:
    """The page of `--adapt N`: gain and cost of scan-specific fine-tuning at 1x1x4."""
    model = models.get((1, 1, 4))
    if model is None:
        raise SystemExit("--adapt measures the 1x1x4 model: do not pass --only 2x2x2")
    t0 = time.process_time()
    setting = _settings_for(model, parse_settings(args.conditioning), args.data_consistency == "on")[0]
    rows = adapt_rows(model, hr, crops, size, args.adapt, [int(c) for c in args.cells.split(",")], setting)
    told = "told nothing" if setting is None else f"both runs told `{setting}` (the first of `--conditioning`)"
    summary = (f"{desc}; {len(crops)} crop(s) of {size}^3, `--adapt {args.adapt}` (batch 2, AdamW 5e-5), one "
               f"sample, one sampler step, {args.threads} thread(s), {told}; PSNR (dB) inside the head mask, "
               "mean over the crops; adaptation cost in CPU seconds per crop.\n\n"
               + C.table(["slice profile", "noise", "cubic", "sciffusion", f"sciffusion + adapt {args.adapt}",
                          "gain of adapt (dB)", "adapt CPU s"], rows)
               + f"\n\n{time.process_time() - t0:.0f} s CPU in all.")
    return _report(args, "MRI super-resolution: scan-specific adaptation on Colin27 (1x1x4)", summary, [], started)


if __name__ == "__main__":
    main()
