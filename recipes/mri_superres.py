"""MRI/CT super-resolution with a conditional diffusion model.

    python -m recipes.mri_superres                                   # demo: MNI152, held-out slab, 2x
    python -m recipes.mri_superres --input scan.nii.gz --scale 2     # your scan: sr + uncertainty map
    python -m recipes.mri_superres --reference hr.nii.gz --scale 1,1,4   # degrade, super-resolve, score
    python -m recipes.mri_superres --train --train-data a.nii.gz b.nii.gz --scale 2 --train-steps 2000

Outputs in --out: sr.nii.gz, uncertainty.nii.gz, trilinear.nii.gz, lowres.nii.gz, metrics.json
(with a reference), slices.png, config.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m recipes.mri_superres", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", help="low-resolution scan to super-resolve (NIfTI or DICOM file/folder)")
    src.add_argument("--reference", help="high-resolution volume: degrade it, super-resolve, report metrics")
    p.add_argument("--volume", type=int, default=None, help="volume index of a 4-D file")
    p.add_argument("--scale", default="2", help="2 (isotropic) or per axis such as 1,1,4 (default 2)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one for --scale)")
    p.add_argument("--samples", type=int, default=4, help="K samples: their std is the uncertainty map")
    p.add_argument("--steps", type=int, default=10, help="sampler steps (default 10)")
    p.add_argument("--sampler", default="dpmpp_2m", help="core sampler (dpmpp_2m, ddim, heun, ...)")
    p.add_argument("--estimate", default="posterior_mean", choices=["posterior_mean", "sample_mean"],
                   help="point estimate: the denoiser's E[y | low-res] (default) or the mean of the K samples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default="mri_superres_out", help="output folder (default ./mri_superres_out)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--train", action="store_true", help="train a new model (then run the demo with it)")
    p.add_argument("--train-data", nargs="*", default=None,
                   help="high-resolution NIfTI volumes to train on (default: the MNI152 template minus the held-out slab)")
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=4)
    return p


def _table(metrics: dict) -> str:
    rows = [f"{'method':<12} {'PSNR (dB)':>10} {'SSIM':>8}"]
    for name, m in metrics["methods"].items():
        rows.append(f"{name:<12} {m['psnr']:>10.2f} {m['ssim']:>8.4f}")
    if metrics.get("uncertainty_spearman") is not None:
        rows.append(f"Spearman(std, |error|) = {metrics['uncertainty_spearman']:.3f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit status (2 for bad input, with the message on stderr)."""
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch

    from sciffusion.plugins.mri.data import heldout_crop, mni_volume
    from sciffusion.plugins.mri.degrade import crop_to_multiple, parse_scale
    from sciffusion.plugins.mri.io import VolumeError, load_volume
    from sciffusion.plugins.mri.model import default_checkpoint, load_checkpoint
    from sciffusion.plugins.mri.pipeline import (
        evaluate_reference,
        super_resolve_volume,
        write_outputs,
    )

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    try:
        scale = parse_scale(args.scale, "--scale")
        out = Path(args.out)
        if args.train:
            from sciffusion.plugins.mri.model import SRConfig
            from sciffusion.plugins.mri.train import train_on_mni, train_sr

            ckpt = out / "train" / "model.pt"
            if args.train_data:
                vols = [load_volume(p, args.volume).data for p in args.train_data]
                patch = tuple(32 if f == 1 else max(4, (48 // f) // 4 * 4) for f in scale)
                train_sr(vols, SRConfig(scale=scale, patch=patch), out / "train", steps=args.train_steps,
                         batch_size=args.batch_size, seed=args.seed, progress=not args.quiet,
                         export=ckpt, device=args.device)
            else:
                train_on_mni(scale, out / "train", steps=args.train_steps, batch_size=args.batch_size,
                             seed=args.seed, progress=not args.quiet, export=ckpt, device=args.device)
            args.checkpoint = str(ckpt)
            say(f"trained checkpoint: {ckpt}")
        ckpt = Path(args.checkpoint) if args.checkpoint else default_checkpoint(scale)
        if args.checkpoint is None and not ckpt.is_file():
            raise VolumeError(f"{ckpt}: no shipped checkpoint for scale {','.join(map(str, scale))}; "
                              "train one with --train or pass --checkpoint")
        model = load_checkpoint(ckpt, scale)
        common = {"samples": args.samples, "steps": args.steps, "method": args.sampler, "seed": args.seed,
                  "estimate": args.estimate, "device": args.device, "progress": not args.quiet}
        if args.input:
            vol = load_volume(args.input, args.volume)
            say(f"input {vol.path}: {vol.data.shape} voxels of {np.round(vol.zooms, 3)} mm -> scale {scale}")
            run = super_resolve_volume(vol, model, **common)
        elif args.reference:
            ref = load_volume(args.reference, args.volume)
            say(f"reference {ref.path}: {ref.data.shape} voxels of {np.round(ref.zooms, 3)} mm, scale {scale}")
            run = evaluate_reference(ref, model, **common)
        else:
            ref = mni_volume(1)
            crop, region = heldout_crop(crop_to_multiple(ref.data, scale).shape)
            say(f"demo: {ref.path}, held-out slab y index {crop[1].start + 8}..{crop[1].stop - 8}, scale {scale}")
            run = evaluate_reference(ref, model, crop=crop, eval_region=region, **common)
            run.settings["demo"] = "MNI152 held-out slab (axis 1, [112, 160)); metrics inside it"
        files = write_outputs(run, out, {"checkpoint": str(ckpt), "argv": sys.argv[1:] if argv is None else argv})
    except (VolumeError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if run.metrics:
        say(_table(run.metrics))
        if args.quiet is False:
            say(json.dumps({"mask_voxels": run.metrics["mask_voxels"]}))
    say(f"wrote {', '.join(p.name for p in files.values())} to {out}/ in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
