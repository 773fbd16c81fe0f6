"""What `python -m recipes.mri_superres` does, given its parsed arguments (`run(args)`).

The recipe only parses the command line; every decision lives here: the scale (`--scale`, or
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
    if not 0.0 <= args.terminal_fraction < 1.0:
        raise ValueError(f"--terminal-fraction must be in [0, 1), got {args.terminal_fraction}")
    common = {"steps": args.train_steps, "batch_size": args.batch_size, "seed": args.seed, "progress": not args.quiet,
              "export": ckpt, "device": args.device, "family": family, "init": args.init, "lr": args.lr,
              "p_terminal": args.terminal_fraction}
    if args.train_data:
        vols = [load_volume(p, args.volume).data for p in args.train_data]
        patch = tuple(32 if f == 1 else max(4, (48 // f) // 4 * 4) for f in scale)
        train_sr(vols, SRConfig(scale=scale, patch=patch), run_dir, **common)
    else:
        train_on_mni(scale, run_dir, **common)
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


def single(args: argparse.Namespace, say=print) -> int:
    """One scan (`--input`), one reference (`--reference`) or the MNI152 demo."""
    from sciffusion.plugins.mri.data import heldout_crop, mni_volume
    from sciffusion.plugins.mri.degrade import crop_to_multiple, parse_scale
    from sciffusion.plugins.mri.io import load_volume
    from sciffusion.plugins.mri.pipeline import (
        evaluate_reference,
        super_resolve_volume,
        write_outputs,
    )

    t0 = time.time()
    out = Path(args.out)
    vol = load_volume(args.input or args.reference, args.volume) if (args.input or args.reference) else None
    if args.target_spacing is not None and not args.input:
        raise VolumeError("--target-spacing needs --input (a scan whose header gives its voxel sizes)")
    scale = scale_for(vol, args, say) if args.input else parse_scale(args.scale, "--scale")
    if args.train:
        args.checkpoint = str(train(args, scale, out, say))
    model, ckpt = load_model_for(scale, args.checkpoint)
    common = {"samples": args.samples, "steps": args.steps, "method": args.sampler, "seed": args.seed,
              "estimate": args.estimate, "device": args.device, "progress": not args.quiet, "scale": scale,
              "adapt": args.adapt}
    if args.input:
        say(f"input {vol.path}: {vol.data.shape} voxels of {np.round(vol.zooms, 3)} mm -> scale {scale}")
        run = super_resolve_volume(vol, model, **common)
    elif args.reference:
        say(f"reference {vol.path}: {vol.data.shape} voxels of {np.round(vol.zooms, 3)} mm, scale {scale}")
        run = evaluate_reference(vol, model, **common)
    else:
        ref = mni_volume(1)
        crop, region = heldout_crop(crop_to_multiple(ref.data, scale).shape)
        say(f"demo: {ref.path}, held-out slab y index {crop[1].start + 8}..{crop[1].stop - 8}, scale {scale}")
        run = evaluate_reference(ref, model, crop=crop, eval_region=region, **common)
        run.settings["demo"] = "MNI152 held-out slab (axis 1, [112, 160)); metrics inside it"
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
        if args.input_dir:
            from sciffusion.plugins.mri.cohort import run_cohort

            return run_cohort(args, say)
        return single(args, say)
    except (VolumeError, AdaptError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

