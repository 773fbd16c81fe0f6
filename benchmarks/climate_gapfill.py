"""Gap filling on the ERA5 sample, scored on the gaps only, for each mask family.

    python -m benchmarks.climate_gapfill            # writes docs/benchmarks/climate_gapfill.md and .png
    python -m benchmarks.climate_gapfill --quick    # tiny run (a test uses it); writes under --out only

Times 0..17 fit the baselines (statistical downscaler, kriging mean, scale and covariance); every mask
family removes `--fraction` of the area of each held-out time 18..23 and the fills are scored on the
removed cells: bilinear, bicubic, statistical, kriging (simple kriging, marginal Gaussian draws), the
shipped downscaling model used by inpainting (`infill.fill_gaps`, RePaint-style replacement) and the
trained gap-filling model (`gapfill.GapFiller`, kriging plus a learned residual) when its checkpoint
exists (`--gapfill-checkpoint`, default the shipped one).
ERA5 single-level data. Source: ECMWF.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sciffusion.plugins.climate import masks
from sciffusion.plugins.climate.baselines import StatisticalDownscaler
from sciffusion.plugins.climate.gap_eval import (
    baseline_fills,
    gaussian_crps,
    plot_spread_distance,
    score_gaps,
    spread_by_distance,
)
from sciffusion.plugins.climate.grid import coarse_coords, coarsen, interpolate, trim_to_factor
from sciffusion.plugins.climate.io import ERA5_CREDIT, load_times, open_fields
from sciffusion.plugins.climate.kriging import Kriging

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks"
VARIABLES = ("t2m", "u10", "v10", "msl", "tp")
UNITS = {"t2m": "K", "u10": "m/s", "v10": "m/s", "msl": "Pa", "tp": "m"}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one variable on a 3x thinned grid, 2 held-out times, no model")
    p.add_argument("--fraction", type=float, default=0.2, help="missing area fraction of every field")
    p.add_argument("--members", type=int, default=16, help="members of the statistical and kriging ensembles")
    p.add_argument("--model-members", type=int, default=4, help="members of the diffusion fill (0: skip the model)")
    p.add_argument("--steps", type=int, default=10, help="sampler steps of the diffusion fill")
    p.add_argument("--neighbours", type=int, default=32, help="observed cells per kriging prediction")
    p.add_argument("--gapfill-checkpoint", type=Path, default=None,
                   help="trained gap-filling model (default: the shipped one; skipped when absent)")
    p.add_argument("--gapfill-members", type=int, default=8, help="members of the trained model's fill (0: skip it)")
    p.add_argument("--gapfill-steps", type=int, default=6, help="sampler steps of the trained model's fill")
    p.add_argument("--families", default=",".join(masks.FAMILIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="mask families scored in parallel processes (fork)")
    p.add_argument("--out", type=Path, default=DOCS, help="folder for climate_gapfill.md and climate_gapfill.png")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv = argv
    if args.quick and args.out == DOCS:
        args.out = Path("climate_gapfill_quick")   # a quick run never overwrites the measured page
    return args


def load(args) -> tuple:
    """(ds, variables, train fields, test fields, test times) of the ERA5 sample, trimmed to factor 4."""
    variables = ("t2m",) if args.quick else VARIABLES
    ds, _ = trim_to_factor(open_fields(None, list(variables)), 4)
    if args.quick:
        ds = ds.isel(latitude=slice(0, None, 3), longitude=slice(0, None, 3))
    n = ds.sizes["time"]
    train_idx = list(range(n - 6))
    test_idx = list(range(n - 6, n))[: 2 if args.quick else 6]
    return (ds, variables, load_times(ds, train_idx, variables), load_times(ds, test_idx, variables),
            ds["time"].values[test_idx])


def diffusion_fill(args, ds, variables, gappy, times):
    """The shipped model's inpainting fill, or None when skipped or not applicable to this grid."""
    if args.quick or args.model_members < 1:
        return None
    from sciffusion.plugins.climate.downscale import Downscaler
    from sciffusion.plugins.climate.experiment import SHIPPED
    from sciffusion.plugins.climate.infill import fill_gaps

    bundle = Downscaler.load(SHIPPED)
    bundle.check_input(ds)
    if tuple(bundle.cfg.variables) != tuple(variables) or set(bundle.cfg.train_times) & {str(t) for t in times}:
        return None
    return fill_gaps(bundle, gappy, members=args.model_members, steps=args.steps, seed=args.seed, times=times)


def gapfill_model(args, variables, test_times):
    """The trained gap-filling model, or None when skipped, absent or not applicable to this run."""
    from sciffusion.plugins.climate.gapfill import GapFiller
    from sciffusion.plugins.climate.gapfill_cli import SHIPPED_GAPFILL

    path = args.gapfill_checkpoint or SHIPPED_GAPFILL
    if args.quick or args.gapfill_members < 1 or not path.exists():
        return None
    model = GapFiller.load(path)
    if tuple(model.cfg.variables) != tuple(variables) or set(model.cfg.train_times) & {str(t) for t in test_times}:
        return None
    return model


def run_family(args, family, i, ds, variables, truth, times, stat, krig, gapfiller=None) -> tuple[dict, dict, dict]:
    """Scores, seconds per method and spread-distance curves (kriging, and the trained model) for one mask family."""
    lat, lon = ds["latitude"].values, ds["longitude"].values
    rng = np.random.default_rng([args.seed, i])
    miss = masks.draw(family, lat, lon, args.fraction, rng, n=truth.shape[0])
    gappy = np.where(miss[:, None], np.nan, truth)
    seconds = {}
    t0 = time.process_time()
    fills = baseline_fills(gappy, lat, lon, 4, stat, args.members, rng)
    seconds["baselines"] = time.process_time() - t0
    t0 = time.process_time()
    mean, var = krig.predict(gappy, neighbours=args.neighbours)
    fills["kriging"] = krig.draw(mean, var, args.members, rng).astype(np.float32)
    seconds["kriging"] = time.process_time() - t0
    t0 = time.process_time()
    model = diffusion_fill(args, ds, variables, gappy, times)
    if model is not None:
        fills["sciffusion (RePaint)"] = model
        seconds["sciffusion (RePaint)"] = time.process_time() - t0
    if gapfiller is not None:
        t0 = time.process_time()
        fills["sciffusion (trained)"] = gapfiller.sample(gappy, members=args.gapfill_members, steps=args.gapfill_steps,
                                                        seed=args.seed)
        seconds["sciffusion (trained)"] = time.process_time() - t0
    table = score_gaps(fills, truth, miss, lat, variables)
    score_truth = np.where(miss[:, None], truth, np.nan)
    for c, v in enumerate(variables):
        table[v]["kriging"]["crps_exact"] = gaussian_crps(mean[:, c], var[:, c], score_truth[:, c], lat)
    dist = np.stack([masks.distance_to_observed(m, lat, lon) for m in miss])
    edges = np.linspace(0, 1500, 16)
    curves = {name: {v: spread_by_distance(fills[name][:, :, c], score_truth[:, c], np.where(miss, dist, np.nan), lat, edges)
                     for c, v in enumerate(variables)}
              for name in ("kriging", "sciffusion (trained)") if name in fills}
    return table, seconds, curves


_STATE: dict = {}   # what forked workers read (set before the pool starts, so nothing large is pickled)


def _family_job(i: int) -> tuple[dict, dict, dict]:
    s = _STATE
    return run_family(s["args"], s["families"][i], i, *s["data"])


def run_families(args, families, data) -> list[tuple[dict, dict, dict]]:
    """`run_family` for every family, in `args.jobs` forked processes (results identical to one process:
    every family draws from its own seeded generators)."""
    _STATE.update(args=args, families=families, data=data)
    if args.jobs <= 1:
        return [_family_job(i) for i in range(len(families))]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(min(args.jobs, len(families))) as pool:
        return pool.map(_family_job, range(len(families)))


def fit(train, ds, variables, seed):
    """The statistical downscaler and the kriging model, both from the training fields only."""
    lat, lon = ds["latitude"].values, ds["longitude"].values
    lat_c, lon_c = coarse_coords(lat, lon, 4)
    bic = interpolate(coarsen(train.astype(np.float64), 4, lat), lat_c, lon_c, lat, lon, "bicubic")
    nonneg = [v == "tp" for v in variables]
    stat = StatisticalDownscaler.fit(train, bic, nonneg)
    krig = Kriging.fit(train, lat, lon, nonneg=nonneg, seed=seed)
    return stat, krig


def fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e-2 else f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def family_table(table: dict, variables) -> str:
    lines = ["| variable | method | RMSE | fair CRPS | spread/skill | observed exact |", "|---|---|---|---|---|---|"]
    for v in variables:
        for j, (name, s) in enumerate(table[v].items()):
            crps = fmt(s["crps"]) + (f" (exact {fmt(s['crps_exact'])})" if "crps_exact" in s else "")
            ss = "-" if np.isnan(s["spread_skill"]) else f"{s['spread_skill']:.2f}"
            lines.append(f"| {f'{v} ({UNITS[v]})' if j == 0 else ''} | {name} | {fmt(s['rmse'])} | {crps} | {ss} | "
                         f"{'yes' if s['observed_exact'] else 'no'} |")
    return "\n".join(lines)


def page(args, results, krig, variables, seconds_total, figure) -> str:
    cmd = " ".join(["python -m benchmarks.climate_gapfill", *args.argv]).strip()
    cov_rows = "\n".join(f"| {v} | {c.model} | {c.range_km:.0f} | {c.sill:.3f} | {c.nugget:.3f} |"
                         for v, c in zip(variables, krig.covariances, strict=True))
    parts = [
        "# Gap filling on the ERA5 sample, per mask family\n",
        f"`{cmd}` ({seconds_total / 60:.1f} min CPU in all, one thread per process). {ERA5_CREDIT}\n",
        f"Times 0..17 fit the baselines; each held-out time 18..23 loses {args.fraction:.0%} of its area to a mask "
        "of the family (see [the gap-filling guide](../climate_gapfill.md)), and the fills are scored on the removed "
        f"cells only (latitude-weighted). Ensembles: {args.members} members for the statistical and kriging fills, "
        f"{args.model_members} for the RePaint fill ({args.steps} steps), {args.gapfill_members} for the trained model "
        f"({args.gapfill_steps} steps of the default sampler). Kriging uses the {args.neighbours} nearest "
        "observed cells and draws each cell from its predictive Gaussian independently; its CRPS in brackets is the "
        "closed form of that Gaussian (what infinitely many members would score).\n",
        "Fitted covariances of the standardised training anomalies (chordal distance):\n",
        "| variable | model | range (km) | sill | nugget |\n|---|---|---|---|---|\n" + cov_rows + "\n",
    ]
    for family, (table, seconds) in results.items():
        secs = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        parts.append(f"## {family}\n\nCPU time: {secs}.\n\n{family_table(table, variables)}\n")
    for name, fig in figure.items():
        parts.append(f"## Spread against distance to the nearest observed cell ({name})\n\n![spread and RMSE of the {name} "
                     f"ensemble against distance]({fig.name})\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> str:
    args = parse(argv)
    t_start = time.process_time()
    ds, variables, train, truth, times = load(args)
    stat, krig = fit(train, ds, variables, args.seed)
    gapfiller = gapfill_model(args, variables, times)
    results, curves = {}, {}
    families = args.families.split(",")
    outcomes = run_families(args, families, (ds, variables, truth, times, stat, krig, gapfiller))
    for family, (table, seconds, fam_curves) in zip(families, outcomes, strict=True):
        results[family] = (table, seconds)
        for name, per_var in fam_curves.items():
            for v in variables:
                curves.setdefault(name, {v: {} for v in variables})[v][family] = per_var[v]
        print(f"{family}\n{family_table(table, variables)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    files = {"kriging": "climate_gapfill.png", "sciffusion (trained)": "climate_gapfill_trained.png"}
    figure = {name: plot_spread_distance(args.out / files[name], c, UNITS,
                                         f"{name} spread (solid) and RMSE (dashed) in the gaps. {ERA5_CREDIT}")
              for name, c in curves.items()}
    children = os.times()
    cpu = time.process_time() - t_start + children.children_user + children.children_system
    text = page(args, results, krig, variables, cpu, figure)
    (args.out / "climate_gapfill.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
