"""MRI/CT super-resolution with a conditional diffusion model.

    python -m recipes.mri_superres                                   # demo: MNI152, held-out slab, 2x
    python -m recipes.mri_superres --input scan.nii.gz --scale 2     # your scan: sr + uncertainty map
    python -m recipes.mri_superres --reference hr.nii.gz --scale 1,1,4   # degrade, super-resolve, score
    python -m recipes.mri_superres --input thick.nii.gz --target-spacing 1          # factors from the header
    python -m recipes.mri_superres --input thick.nii.gz --scale 4,1,1 --adapt 100   # scan-specific fine-tuning
    python -m recipes.mri_superres --input-dir study/ --target-spacing 1 --out sr/  # a folder or BIDS dataset
    python -m recipes.mri_superres --train --blind --scale 2 --train-steps 2000     # blind degradations, MNI152

Outputs in --out: sr.nii.gz, uncertainty.nii.gz, trilinear.nii.gz, lowres.nii.gz, metrics.json
(with a reference), slices.png, config.json.
"""

from __future__ import annotations

import argparse
import sys

from sciffusion.core.devices import DEVICE_HELP, resolve_device


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m recipes.mri_superres", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", help="low-resolution scan to super-resolve (NIfTI or DICOM file/folder)")
    src.add_argument("--reference", help="high-resolution volume: degrade it, super-resolve, report metrics")
    src.add_argument("--input-dir", help="every NIfTI in a folder (or a BIDS dataset's anat scans): one output "
                     "folder per scan and summary.tsv; resumes; shares scans among torchrun processes")
    p.add_argument("--volume", type=int, default=None, help="volume index of a 4-D file")
    p.add_argument("--scale", default="2", help="2 (isotropic) or per axis such as 1,1,4 or 4,1,1 (default 2)")
    p.add_argument("--target-spacing", type=float, default=None,
                   help="mm: per-axis factors from the header's voxel sizes (integer ratios only)")
    p.add_argument("--adapt", type=int, default=0,
                   help="fine-tune on the scan's own in-plane data for N steps first (thick-slice inputs)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one for --scale)")
    p.add_argument("--samples", type=int, default=4, help="K samples: their std is the uncertainty map")
    p.add_argument("--steps", type=int, default=10, help="sampler steps (default 10)")
    p.add_argument("--sampler", default="dpmpp_2m", help="core sampler (dpmpp_2m, ddim, heun, ...)")
    p.add_argument("--estimate", default="posterior_mean", choices=["posterior_mean", "sample_mean"],
                   help="point estimate: the denoiser's E[y | low-res] (default) or the mean of the K samples")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default="mri_superres_out", help="output folder (default ./mri_superres_out)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
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
    p.add_argument("--init", default=None, help="start training from this checkpoint's weights")
    p.add_argument("--train-dir", default=None, help="training run folder (checkpoints, resume; default OUT/train)")
    p.add_argument("--export", default=None, help="where the trained EMA weights go (default OUT/train/model.pt)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run it (`sciffusion.plugins.mri.cli.run`); returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args.device = str(resolve_device(args.device))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"device: {args.device}", flush=True)
    from sciffusion.plugins.mri.cli import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
