"""The MRI super-resolution command line: `main(argv)` parses it, `run(args)` does it.

Installed as `sciffusion-mri-superres`; `python -m recipes.mri_superres` from a checkout calls the
same `main`. Every decision lives here: the scale (`--scale`, or
`--target-spacing` from the header's voxel sizes), the checkpoint that serves it (the shipped one,
possibly through an axis permutation), training, and the single-scan, reference, demo and cohort modes.
Bad input raises `VolumeError`/`ValueError`/`FileNotFoundError`, which `run` turns into one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from sciffusion.core.devices import DEVICE_HELP, resolve_device
from sciffusion.plugins.mri.conditioning import NOISE_HELP, PROFILE_HELP
from sciffusion.plugins.mri.io import Volume, VolumeError

INTEGER_TOLERANCE = 0.02  # relative distance of a spacing ratio from an integer that still counts as one


def target_spacing_scale(zooms: tuple[float, ...], target: float, name: str = "input") -> tuple[int, int, int]:
    """Per-axis integer factors `f_i = zoom_i / target` that bring the voxels to `target` mm.

    Axes already at or below `target` keep `f_i = 1` (never reduced). A ratio that is not an integer
    (within 2 %), or a target coarser than every voxel size (nothing to refine: it would only
    reduce resolution), raises `VolumeError` naming the axis and the usable targets.
    """
    if not target > 0:
        raise VolumeError(f"--target-spacing must be > 0 mm, got {target}")
    out = []
    for axis, z in enumerate(zooms):
        r = z / target
        if r <= 1 + INTEGER_TOLERANCE:
            out.append(1)
            continue
        n = round(r)
        if abs(r - n) > INTEGER_TOLERANCE * r:
            ok = ", ".join(f"{z / k:.4g}" for k in (int(np.floor(r)), int(np.ceil(r))) if k >= 1)
            raise VolumeError(f"{name}: voxel size {z:.4g} mm along axis {axis} is {r:.3g} x the target spacing "
                              f"{target:g} mm, not an integer factor; no resampling is done: use "
                              f"--target-spacing {ok} or an explicit --scale")
        out.append(int(n))
    if out == [1, 1, 1]:
        raise VolumeError(f"{name}: voxel sizes {' x '.join(f'{z:.4g}' for z in zooms)} mm are already at or below "
                          f"--target-spacing {target:g} mm: nothing to refine (this command never reduces resolution)")
    return tuple(out)


def checkpoint_for(scale: tuple[int, int, int], checkpoint: str | None) -> Path:
    """The checkpoint to use: `checkpoint` if given, else the shipped one for `scale` or a permutation of it."""
    from sciffusion.plugins.mri.model import default_checkpoint

    if checkpoint:
        return Path(checkpoint)
    for perm in itertools.permutations(scale):
        if default_checkpoint(perm).is_file():
            return default_checkpoint(perm)
    raise VolumeError(f"{default_checkpoint(scale)}: no shipped checkpoint for scale {','.join(map(str, scale))} "
                      "(or a permutation of it); train one with --train or pass --checkpoint")


def load_model_for(scale: tuple[int, int, int], checkpoint: str | None):
    """Load the checkpoint for `scale` and check that it serves it (same factors, axes possibly permuted)."""
    from sciffusion.plugins.mri.model import load_checkpoint
    from sciffusion.plugins.mri.pipeline import axis_permutation

    path = checkpoint_for(scale, checkpoint)
    model = load_checkpoint(path)
    axis_permutation(scale, model.config.scale, str(path))
    return model, path


def scale_for(vol: Volume, args: argparse.Namespace, say=print) -> tuple[int, int, int]:
    """`--target-spacing` from the header (announced), else `--scale`."""
    from sciffusion.plugins.mri.degrade import parse_scale

    if getattr(args, "target_spacing", None) is not None:
        scale = target_spacing_scale(vol.zooms, args.target_spacing, vol.path)
        say(f"{vol.path}: voxel sizes {' x '.join(f'{z:.4g}' for z in vol.zooms)} mm -> target "
            f"{args.target_spacing:g} mm: scale {','.join(map(str, scale))}")
        return scale
    return parse_scale(args.scale, "--scale")


def train(args: argparse.Namespace, scale: tuple[int, int, int], out: Path, say=print) -> Path:
    """`--train`: blind or fixed-profile training on `--train-data` or the MNI152 template; returns the export."""
    from sciffusion.plugins.mri.blind import BlindFamily
    from sciffusion.plugins.mri.io import load_volume
    from sciffusion.plugins.mri.model import SRConfig
    from sciffusion.plugins.mri.train import train_on_mni, train_sr

    ckpt = Path(args.export) if getattr(args, "export", None) else out / "train" / "model.pt"
    run_dir = Path(args.train_dir) if getattr(args, "train_dir", None) else out / "train"
    family = BlindFamily(p_synth=args.synth) if args.blind else None
    if args.synth and not args.blind:
        raise ValueError("--synth needs --blind (synthetic contrasts are part of the blind family)")
    if args.conditioned and not args.blind:
        raise ValueError("--conditioned needs --blind (the model is told the degradation the blind family draws)")
    if not 0.0 <= args.p_unknown <= 1.0:
        raise ValueError(f"--p-unknown must be in [0, 1], got {args.p_unknown}")
    if not 0.0 <= args.terminal_fraction < 1.0:
        raise ValueError(f"--terminal-fraction must be in [0, 1), got {args.terminal_fraction}")
    common = {"steps": args.train_steps, "batch_size": args.batch_size, "seed": args.seed, "progress": not args.quiet,
              "export": ckpt, "device": args.device, "family": family, "init": args.init, "lr": args.lr,
              "p_terminal": args.terminal_fraction, "p_unknown": args.p_unknown}
    if args.train_data:
        vols = [load_volume(p, args.volume).data for p in args.train_data]
        patch = tuple(32 if f == 1 else max(4, (48 // f) // 4 * 4) for f in scale)
        train_sr(vols, SRConfig(scale=scale, patch=patch, conditioned=args.conditioned), run_dir, **common)
    else:
        train_on_mni(scale, run_dir, conditioned=args.conditioned, **common)
    say(f"trained checkpoint: {ckpt}")
    return ckpt


def table(metrics: dict) -> str:
    """The metrics of a reference run as a small text table."""
    rows = [f"{'method':<12} {'PSNR (dB)':>10} {'SSIM':>8}"]
    for name, m in metrics["methods"].items():
        rows.append(f"{name:<12} {m['psnr']:>10.2f} {m['ssim']:>8.4f}")
    if metrics.get("uncertainty_spearman") is not None:
        rows.append(f"Spearman(std, |error|) = {metrics['uncertainty_spearman']:.3f}")
    return "\n".join(rows)


def inference_options(args: argparse.Namespace) -> dict:
    """The settings of `infer.super_resolve` beyond the sampler from the command line: the GPU ones
    (`--sw-batch-size`, `--precision`), what a conditioned model is told (`--noise-sigma`,
    `--slice-profile`) and whether the output is made consistent with the scan (`--data-consistency`)."""
    if args.sw_batch_size is not None and args.sw_batch_size < 1:
        raise ValueError(f"--sw-batch-size must be >= 1, got {args.sw_batch_size}")
    return {"sw_batch_size": args.sw_batch_size, "precision": args.precision, "conditioning": conditioning_of(args),
            "consistency": args.data_consistency == "on"}


def conditioning_of(args: argparse.Namespace):
    """`conditioning.Conditioning` from `--noise-sigma` and `--slice-profile` (bad values: ValueError)."""
    from sciffusion.plugins.mri.conditioning import (
        Conditioning,
        parse_noise_sigma,
        parse_slice_profile,
    )

    return Conditioning(parse_noise_sigma(args.noise_sigma), parse_slice_profile(args.slice_profile or "auto"))


def note_unconditioned(args: argparse.Namespace, model, ckpt, say) -> None:
    """Say what --noise-sigma/--slice-profile still do when the checkpoint is not conditioned on them."""
    if model.config.conditioned or (args.noise_sigma == "auto" and args.slice_profile in (None, "unknown")):
        return
    used = args.slice_profile not in (None, "unknown") and args.data_consistency == "on"
    say(f"note: {ckpt} is not conditioned on the degradation; --noise-sigma and --slice-profile "
        + ("only set the data-consistency step" if used else "are ignored"))


def _super_resolve(args: argparse.Namespace, vol: Volume | None, model, scale: tuple[int, int, int], say):
    """The `Run` of one scan (`--input`), one reference (`--reference`) or the MNI152 demo."""
    from sciffusion.plugins.mri.pipeline import (
        evaluate_demo,
        evaluate_reference,
        super_resolve_volume,
    )

    common = {"samples": args.samples, "steps": args.steps, "method": args.sampler, "seed": args.seed,
              "estimate": args.estimate, "device": args.device, "progress": not args.quiet, "scale": scale,
              "adapt": args.adapt, **inference_options(args)}
    if args.input:
        say(f"input {vol.path}: {vol.data.shape} voxels of {np.round(vol.zooms, 3)} mm -> scale {scale}")
        run = super_resolve_volume(vol, model, **common)
        say_profile_estimate(run.settings.get("slice_profile_estimate"), say)
        return run
    if args.slice_profile is None:
        common["conditioning"] = reference_conditioning(common["conditioning"], model, say)
    if args.reference:
        say(f"reference {vol.path}: {vol.data.shape} voxels of {np.round(vol.zooms, 3)} mm, scale {scale}")
        return evaluate_reference(vol, model, **common)
    run = evaluate_demo(model, **common)
    say(f"demo: {run.settings['demo']}, scale {scale}")
    return run


def say_profile_estimate(record: dict | None, say) -> None:
    """One line on what `--slice-profile auto` resolved to (nothing when it was not asked for)."""
    if record is None:
        return
    if record["estimated"] is None:
        say(f"slice profile: unknown ({record['why']})")
    else:
        say(f"slice profile: {record['estimated']}, estimated from the in-plane axes (--slice-profile sets it)")


def reference_conditioning(told, model, say):
    """`--reference` and the demo degrade the reference themselves (Gaussian of FWHM `fwhm * f`), so
    unless `--slice-profile` is given, the model and the data-consistency step are told that profile."""
    from dataclasses import replace

    from sciffusion.plugins.mri.conditioning import profile_text
    from sciffusion.plugins.mri.degrade import SliceProfile

    profile = SliceProfile("gaussian", fwhm=model.config.fwhm)
    say(f"slice profile: {profile_text(profile)}, the one the reference is degraded with "
        "(--slice-profile unknown hides it)")
    return replace(told, profile=profile)


def single(args: argparse.Namespace, say=print) -> int:
    """One scan (`--input`), one reference (`--reference`) or the MNI152 demo."""
    from sciffusion.plugins.mri.degrade import parse_scale
    from sciffusion.plugins.mri.io import load_volume
    from sciffusion.plugins.mri.pipeline import write_outputs

    t0 = time.time()
    out = Path(args.out)
    vol = load_volume(args.input or args.reference, args.volume) if (args.input or args.reference) else None
    if args.target_spacing is not None and not args.input:
        raise VolumeError("--target-spacing needs --input (a scan whose header gives its voxel sizes)")
    scale = scale_for(vol, args, say) if args.input else parse_scale(args.scale, "--scale")
    if args.train:
        args.checkpoint = str(train(args, scale, out, say))
    model, ckpt = load_model_for(scale, args.checkpoint)
    note_unconditioned(args, model, ckpt, say)
    run = _super_resolve(args, vol, model, scale, say)
    files = write_outputs(run, out, {"checkpoint": str(ckpt), "argv": list(args.argv)})
    if run.metrics:
        say(table(run.metrics))
    say(f"wrote {', '.join(p.name for p in files.values())} to {out}/ in {time.time() - t0:.0f} s")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the recipe for parsed `args`; returns the exit status (2 for bad input, one line on stderr)."""
    import torch

    from sciffusion.plugins.mri.adapt import AdaptError

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.adapt < 0:
            raise ValueError(f"--adapt: the number of steps must be >= 0, got {args.adapt}")
        inference_options(args)  # a bad value fails here, before any scan or training
        if args.input_dir:
            from sciffusion.plugins.mri.cohort import run_cohort

            return run_cohort(args, say)
        return single(args, say)
    except (VolumeError, AdaptError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2



USAGE = """MRI/CT super-resolution with a conditional diffusion model.

    sciffusion-mri-superres                                   # demo: MNI152, held-out slab, 2x
    sciffusion-mri-superres --input scan.nii.gz --scale 2     # your scan: sr + uncertainty map
    sciffusion-mri-superres --reference hr.nii.gz --scale 1,1,4   # degrade, super-resolve, score
    sciffusion-mri-superres --input thick.nii.gz --target-spacing 1          # factors from the header
    sciffusion-mri-superres --input thick.nii.gz --scale 4,1,1 --adapt 100   # scan-specific fine-tuning
    sciffusion-mri-superres --input-dir study/ --target-spacing 1 --out sr/  # a folder or BIDS dataset
    sciffusion-mri-superres --train --blind --scale 2 --train-steps 2000     # blind degradations, MNI152

(`python -m recipes.mri_superres ...` from a checkout is the same command.)
Outputs in --out: sr.nii.gz, uncertainty.nii.gz, trilinear.nii.gz, lowres.nii.gz, metrics.json
(with a reference), slices.png, config.json.
"""


def build_parser(prog: str = "sciffusion-mri-superres") -> argparse.ArgumentParser:
    """The command line (see `USAGE`)."""
    p = argparse.ArgumentParser(prog=prog, description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", help="low-resolution scan to super-resolve (NIfTI or DICOM file/folder)")
    src.add_argument("--reference", help="high-resolution volume: degrade it, super-resolve, report metrics")
    src.add_argument("--input-dir", help="every NIfTI in a folder (or a BIDS dataset's anat scans): one output "
                     "folder per scan and summary.tsv; resumes; shares scans among torchrun processes")
    p.add_argument("--volume", type=int, default=None, help="volume index of a 4-D file")
    p.add_argument("--scale", default="2", help="2 (isotropic) or per axis such as 1,1,4 or 4,1,1 (default 2)")
    p.add_argument("--target-spacing", type=float, default=None,
                   help="mm: per-axis factors from the header's voxel sizes (integer ratios only)")
    p.add_argument("--slice-profile", default=None,
                   help="told to a conditioned checkpoint, and sets the data-consistency step (default for --input: "
                   "auto; with --reference and the demo the default is the profile the reference is degraded "
                   f"with): {PROFILE_HELP}")
    p.add_argument("--noise-sigma", default="auto", help=f"for a conditioned checkpoint: {NOISE_HELP}")
    p.add_argument("--data-consistency", choices=("on", "off"), default="on",
                   help="with a known or estimated --slice-profile: make the output agree with the input scan up to its noise "
                   "(any checkpoint; default on)")
    p.add_argument("--adapt", type=int, default=0,
                   help="fine-tune on the scan's own in-plane data for N steps first (thick-slice inputs)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one for --scale)")
    p.add_argument("--samples", type=int, default=4, help="K samples: their std is the uncertainty map")
    p.add_argument("--steps", type=int, default=5, help="sampler steps (default 5)")
    p.add_argument("--sampler", default=None,
                   help="core sampler (default: the core's default sampler; or dpmpp_2m, ddim, heun, ...)")
    p.add_argument("--estimate", default="posterior_mean", choices=["posterior_mean", "sample_mean"],
                   help="point estimate: the denoiser's E[y | low-res] (default) or the mean of the K samples")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--sw-batch-size", type=int, default=None,
                   help="sliding windows per UNet forward (default: 2 on the CPU; on CUDA as many as a quarter "
                   "of the free GPU memory holds, at most 16)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="UNet autocast at inference (default auto: bf16 on GPUs with native bf16, fp16 on "
                   "older GPUs, fp32 on the CPU); the sampler's arithmetic stays fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default="mri_superres_out", help="output folder (default ./mri_superres_out)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_training_arguments(p)
    return p


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", action="store_true", help="train a new model (then run the demo with it)")
    p.add_argument("--train-data", nargs="*", default=None,
                   help="high-resolution NIfTI volumes to train on (default: the MNI152 template minus the held-out slab)")
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4, help="training learning rate")
    p.add_argument("--terminal-fraction", type=float, default=0.25,
                   help="fraction of training examples at t = 1, where the prediction is the default point estimate")
    p.add_argument("--blind", action="store_true", help="train on the blind degradation family")
    p.add_argument("--synth", type=float, default=0.0,
                   help="with --blind: probability of a synthetic contrast from the MNI152 tissue maps")
    p.add_argument("--conditioned", action="store_true",
                   help="with --blind: a model told each patch's noise level and slice profile (inference: "
                   "--noise-sigma, --slice-profile); it may start (--init) from an unconditioned checkpoint")
    p.add_argument("--p-unknown", type=float, default=0.25,
                   help="with --conditioned: probability that the noise, and separately the profile, is hidden "
                   "from the model in training (so that it also works blind)")
    p.add_argument("--init", default=None, help="start training from this checkpoint's weights")
    p.add_argument("--train-dir", default=None, help="training run folder (checkpoints, resume; default OUT/train)")
    p.add_argument("--export", default=None, help="where the trained EMA weights go (default OUT/train/model.pt)")


def main(argv: list[str] | None = None, prog: str = "sciffusion-mri-superres") -> int:
    """Parse the command line and `run` it; returns the exit status (2 with one line for bad input).

    As a program it opts in to `sciffusion.core.memory.retain_freed_memory` (glibc keeps freed
    buffers for the next sampling or training step); the library functions never change it.
    """
    from sciffusion.core import memory

    args = build_parser(prog).parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args.device = str(resolve_device(args.device))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"device: {args.device}", flush=True)
    memory.retain_freed_memory()
    return run(args)
