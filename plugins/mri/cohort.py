"""Cohort mode (`--input-dir`): every scan of a folder or BIDS dataset, resumable, shared among processes.

Scans: with a `dataset_description.json` at the top (BIDS), the NIfTI files under
`sub-*/[ses-*/]anat/`; otherwise every `.nii`/`.nii.gz` directly in the folder. Each scan gets the
folder `OUT/<name>/` (`<name>`: the file name without its NIfTI suffix) holding the usual outputs and
`status.json`, written last: `{"status": "done" | "failed", ...}`. A rerun skips scans whose status
is "done" (so a killed run resumes) and retries the others. Under `torchrun` (or any launcher
setting `RANK`/`WORLD_SIZE`) process `r` of `W` takes scans `r, r + W, ...`, on GPU `LOCAL_RANK`
when `--device cuda`. A bad file is recorded as failed, with its error, and the others go on.
After its share, every process rewrites `OUT/summary.tsv` from all the status files (the last to
finish writes the complete table).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

from sciffusion.core.atomic import atomic_write_text
from sciffusion.plugins.mri.io import NIFTI_SUFFIXES, VolumeError

COLUMNS = ("scan", "status", "scale", "input_shape", "voxel_mm", "seconds", "output", "error")


def scan_name(path: Path) -> str:
    """File name without `.nii`/`.nii.gz`."""
    n = path.name
    for suf in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if n.lower().endswith(suf):
            return n[: -len(suf)]
    return n


def find_scans(folder: str | Path) -> list[Path]:
    """The NIfTI scans of `folder` (BIDS anat scans when it is a BIDS dataset), sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        raise VolumeError(f"{root}: --input-dir is not a folder")
    if (root / "dataset_description.json").is_file():
        cands = list(root.glob("sub-*/anat/*")) + list(root.glob("sub-*/ses-*/anat/*"))
    else:
        cands = list(root.iterdir())
    scans = sorted(p for p in cands if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES))
    if not scans:
        raise VolumeError(f"{root}: no NIfTI files (.nii, .nii.gz)" + (" under sub-*/anat" if (
            root / "dataset_description.json").is_file() else ""))
    names = [scan_name(p) for p in scans]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise VolumeError(f"{root}: several scans share the name {dup[0]} (e.g. .nii and .nii.gz); keep one")
    return scans


def shard() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) without one."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _write_json(obj: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def is_done(out: Path) -> bool:
    """True when `out/status.json` says the scan finished."""
    try:
        return json.loads((out / "status.json").read_text()).get("status") == "done"
    except (OSError, ValueError):
        return False


def process_scan(path: Path, out: Path, args: argparse.Namespace, models: dict, device: str, say=print) -> dict:
    """Super-resolve one scan into `out`; returns its status record (never raises for a bad scan)."""
    from sciffusion.plugins.mri.cli import inference_options, load_model_for, scale_for
    from sciffusion.plugins.mri.io import load_volume
    from sciffusion.plugins.mri.pipeline import super_resolve_volume, write_outputs

    rec = {"scan": str(path), "status": "failed", "output": str(out)}
    t0 = time.time()
    try:
        vol = load_volume(path, args.volume)
        rec.update(input_shape="x".join(map(str, vol.data.shape)), voxel_mm="x".join(f"{z:.4g}" for z in vol.zooms))
        scale = scale_for(vol, args, say)
        rec["scale"] = ",".join(map(str, scale))
        key = tuple(sorted(scale))
        if key not in models:
            models[key] = load_model_for(scale, args.checkpoint)
        model, ckpt = models[key]
        run = super_resolve_volume(vol, model, samples=args.samples, steps=args.steps, method=args.sampler,
                                   seed=args.seed, device=device, estimate=args.estimate, scale=scale,
                                   adapt=args.adapt, **inference_options(args))
        write_outputs(run, out, {"checkpoint": str(ckpt), "argv": list(args.argv)})
        rec["status"] = "done"
    except (VolumeError, ValueError, FileNotFoundError) as err:
        rec["error"] = str(err)
    except Exception as err:  # one scan's failure must not stop the cohort
        rec["error"] = f"{type(err).__name__}: {err} ({traceback.format_exc(limit=1).splitlines()[-1]})"
    rec["seconds"] = round(time.time() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(rec, out / "status.json")
    return rec


def write_summary(scans: list[Path], out_root: Path) -> Path:
    """`summary.tsv`: one row per scan from its status file (`pending` when it has none yet)."""
    rows = ["\t".join(COLUMNS)]
    for p in scans:
        try:
            rec = json.loads((out_root / scan_name(p) / "status.json").read_text())
        except (OSError, ValueError):
            rec = {"scan": str(p), "status": "pending"}
        rows.append("\t".join(str(rec.get(c, "")).replace("\t", " ").replace("\n", " ") for c in COLUMNS))
    path = out_root / "summary.tsv"
    return atomic_write_text(path, "\n".join(rows) + "\n")


def run_cohort(args: argparse.Namespace, say=print) -> int:
    """`--input-dir`: process this process's share of the scans; 0 when all of its scans are done, else 1."""
    if args.train or args.reference or args.input:
        raise ValueError("--input-dir cannot be combined with --train, --input or --reference")
    scans = find_scans(args.input_dir)
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    rank, world, local = shard()
    device = args.device
    if device == "cuda" and world > 1:
        device = f"cuda:{local}"
    mine = scans[rank::world]
    say(f"cohort {args.input_dir}: {len(scans)} scans, process {rank} of {world} takes {len(mine)}")
    models: dict = {}
    failed = 0
    for p in mine:
        out = out_root / scan_name(p)
        if is_done(out):
            say(f"skip {p.name}: done")
            continue
        rec = process_scan(p, out, args, models, device, say)
        failed += rec["status"] != "done"
        say(f"{p.name}: {rec['status']} in {rec['seconds']} s" + (f" ({rec['error']})" if "error" in rec else ""))
    summary = write_summary(scans, out_root)
    say(f"summary: {summary}")
    return 1 if failed else 0
