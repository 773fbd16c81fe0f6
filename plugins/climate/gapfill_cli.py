"""`--mode infill` with the trained gap-filling model (`--infill-method model`, the default).

- with `--input gappy.nc`: the missing cells are the NaNs already in the file; the ensemble is written to
  `--out` (a .nc or .zarr path, or a folder that receives filled.nc); a file with no missing value
  is an error and nothing is written;
- without `--input` (scoring): `--gap-family` masks remove `--gap-fraction` of the area of every
  held-out time of the reference, and the fill is scored on the removed cells against bilinear,
  bicubic and the model's own kriging (`gap_eval.score_gaps`), written to `--out`/metrics.json.

`--infill-method repaint` uses the downscaling model's inpainting instead: for `--input` here, for
scoring in `experiment.run`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sciffusion.core.atomic import atomic_write_text
from sciffusion.plugins.climate import masks
from sciffusion.plugins.climate.gapfill import GapFiller, fill_gaps
from sciffusion.plugins.climate.io import load_times, open_fields
from sciffusion.plugins.climate.output import write

SHIPPED_GAPFILL = Path(__file__).parent / "checkpoints" / "era5_sample_gapfill.pt"


def _log(cfg, msg: str) -> None:
    if not cfg.quiet:
        print(msg, flush=True)


def load_model(cfg):
    """The gap-filling checkpoint `--checkpoint` (default the shipped one), with one-line errors; with
    `--infill-method repaint` the downscaling checkpoint (default the shipped one)."""
    if cfg.infill_method == "repaint":
        from sciffusion.plugins.climate.downscale import Downscaler
        from sciffusion.plugins.climate.experiment import SHIPPED

        return Downscaler.load(Path(cfg.checkpoint) if cfg.checkpoint else SHIPPED)
    path = Path(cfg.checkpoint) if cfg.checkpoint else SHIPPED_GAPFILL
    if not path.exists():
        raise FileNotFoundError(f"gap-filling checkpoint {path} does not exist (train one with "
                                "python -m sciffusion.plugins.climate.gapfill_train, or use --infill-method repaint)")
    return GapFiller.load(path)


def output_path(out: str) -> Path:
    """`out` itself when it ends in .nc or .zarr, else `out`/filled.nc."""
    p = Path(out)
    return p if p.suffix.lower() in (".nc", ".zarr") else p / "filled.nc"


def fill_input(cfg) -> Path:
    """Fill the NaN cells of `cfg.input` and write the ensemble (see the module docstring)."""
    model = load_model(cfg)
    variables = list(cfg.variables) or list(model.cfg.variables)
    if tuple(variables) != tuple(model.cfg.variables):
        raise ValueError(f"the checkpoint fills {list(model.cfg.variables)}, asked for {variables}")
    ds = open_fields(cfg.input, variables)
    if not any(bool(ds[v].isnull().any()) for v in variables):
        raise ValueError(f"{cfg.input} has no missing values in {variables}: nothing to fill, nothing written")
    filled = fill_gaps(ds, model, members=cfg.members, steps=cfg.steps, seed=cfg.seed, device=cfg.device,
                       progress=not cfg.quiet)
    path = write(filled, output_path(cfg.out))
    _log(cfg, f"wrote {path}")
    return path


def score_held_out(cfg) -> dict:
    """Mask the held-out times of the reference, fill them and score the gaps (see the module docstring)."""
    from sciffusion.plugins.climate.experiment import format_table, load_reference
    from sciffusion.plugins.climate.gap_eval import baseline_fills, score_gaps

    model = load_model(cfg)
    ref = load_reference(cfg)
    if tuple(ref.variables) != tuple(model.cfg.variables):
        raise ValueError(f"the checkpoint fills {list(model.cfg.variables)}, the run has {list(ref.variables)}; "
                         f"pass --variables {','.join(model.cfg.variables)}")
    model.check_input(ref.fields)
    seen = set(model.cfg.train_times) & {str(t) for t in ref.times(ref.test_idx)}
    if seen:
        raise ValueError(f"the checkpoint was trained on held-out time(s) {sorted(seen)[:3]}; raise --holdout")
    lat, lon = ref.fields["latitude"].values, ref.fields["longitude"].values
    truth = load_times(ref.fields, ref.test_idx, ref.variables)
    rng = np.random.default_rng(cfg.seed)
    miss = masks.draw(cfg.gap_family, lat, lon, cfg.gap_fraction, rng, n=truth.shape[0])
    gappy = np.where(miss[:, None], np.nan, truth)
    fills = baseline_fills(gappy, lat, lon, cfg.factor, None, 1, rng)
    mean, var = model.kriging.predict(gappy, neighbours=model.cfg.neighbours)
    fills["kriging"] = model.kriging.draw(mean, var, cfg.members, rng).astype(np.float32)
    fills["sciffusion"] = model.sample(gappy, members=cfg.members, steps=cfg.steps, seed=cfg.seed, device=cfg.device,
                                       progress=not cfg.quiet)
    table = score_gaps(fills, truth, miss, lat, ref.variables)
    metrics = {"mode": "infill", "method": "model", "gap_family": cfg.gap_family, "gap_fraction": cfg.gap_fraction,
               "members": cfg.members, "steps": cfg.steps,
               "held_out_times": [str(t) for t in ref.times(ref.test_idx)], "scores": table}
    atomic_write_text(Path(cfg.out) / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    _log(cfg, format_table(table))
    _log(cfg, f"wrote {Path(cfg.out) / 'metrics.json'}")
    return metrics


def run_infill(cfg) -> dict | Path:
    """`--mode infill`: fill `--input` (either method), or score the model on the held-out times."""
    if cfg.train:
        raise ValueError("--train with --mode infill trains the downscaling model for --infill-method repaint; "
                         "train a gap-filling model with python -m sciffusion.plugins.climate.gapfill_train")
    if cfg.gap_family not in masks.FAMILIES:
        raise ValueError(f"unknown --gap-family {cfg.gap_family!r}; choose one of {list(masks.FAMILIES)}")
    return fill_input(cfg) if cfg.input else score_held_out(cfg)
