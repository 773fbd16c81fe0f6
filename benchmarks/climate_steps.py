"""Climate downscaling: fair CRPS and spread/skill of the shipped ERA5-sample model against sampler steps.

    python -m benchmarks.climate_steps --steps 5,10 --compare dpmpp_2m:5,dpmpp_2m:10 --noise-seed 1

The shipped checkpoint downscales the coarsened truth of the held-out times of `python -m
recipes.climate_downscale` (its data, split, K = 8 members, seed 0, members conserving the coarse input)
with the core's default sampler at each of `--steps`, and with each `--compare METHOD:STEPS`. For every
variable: the fair CRPS and spread/skill over the held-out times (`metrics.score_all`), and the CRPS change
against the first `--compare` run. `--noise-seed S` adds the default sampler at the first step count with
sampling seed S: the CRPS change it shows is the size of a difference that sampling noise alone makes.
The page section "Sampler steps" of docs/benchmarks/climate_downscale.md is replaced by the result.
With `--cache DIR` each run's scores are kept in DIR (one JSON file per run) and reused, so runs can be
spread over processes (each with `--no-write`) and the table made by one last call that finds them all.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import _common as C


def held_out(quick: bool):
    """(bundle, truth (T, C, H, W), coarse, times, variables) of the recipe's held-out times (quick: one)."""
    from sciffusion.plugins.climate.experiment import (
        SHIPPED,
        ExperimentConfig,
        coarse_fields,
        load_bundle,
        load_reference,
    )
    from sciffusion.plugins.climate.io import load_times

    cfg = ExperimentConfig(quiet=True)
    ref = load_reference(cfg)
    bundle = load_bundle(cfg, SHIPPED, ref.fields, ref.variables)
    idx = ref.test_idx[:1] if quick else ref.test_idx
    truth = load_times(ref.fields, idx, ref.variables)
    return bundle, truth, coarse_fields(truth, bundle.grids, fill=False), ref.times(idx), ref.variables


def scores(bundle, truth, coarse, times, variables, members: int, method: str | None, steps: int, seed: int) -> dict:
    """Fair CRPS and spread/skill per variable of one ensemble, and the CPU / wall seconds of sampling it."""
    from sciffusion.plugins import core_sampler
    from sciffusion.plugins.climate.metrics import score_all

    cpu, wall = time.process_time(), time.perf_counter()
    ens = bundle.sample(coarse, members=members, steps=steps, method=method, seed=seed, times=times)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    ens = np.where(np.isnan(truth)[None], np.nan, ens)
    per = {v: score_all(ens[:, :, i], truth[:, i], bundle.grids.lat, None) for i, v in enumerate(variables)}
    return {"method": core_sampler(method), "steps": steps, "seed": seed, "cpu_s": cpu, "wall_s": wall,
            "crps": {v: s["crps"] for v, s in per.items()}, "spread_skill": {v: s["spread_skill"] for v, s in per.items()}}


def runs_of(args) -> list[tuple[str | None, int, int]]:
    """(method, steps, seed): the default sampler at each step count, the comparisons, the noise run."""
    steps = [int(s) for s in args.steps.split(",") if s]
    runs = [(None, s, args.seed) for s in steps]
    runs += [(m, int(s), args.seed) for m, s in (c.split(":") for c in args.compare.split(",") if c)]
    if args.noise_seed is not None:
        runs.append((None, steps[0], args.noise_seed))
    return runs


def tables(results: list[dict], variables) -> str:
    """Fair CRPS (change against the first comparison run, or the first run), spread/skill, seconds."""
    base = next((r for r in results if r["method_given"]), results[0])
    head = ["sampler", "steps", "seed"]
    crps, ss = [], []
    for r in results:
        name = [r["method"] + ("" if r["method_given"] else " (default)"), r["steps"], r["seed"]]
        crps.append(name + [f"{r['crps'][v]:.4g} ({100 * (r['crps'][v] / base['crps'][v] - 1):+.1f} %)"
                            for v in variables] + [f"{r['cpu_s']:.0f}"])
        ss.append(name + [f"{r['spread_skill'][v]:.2f}" for v in variables])
    ref = f"{base['method']}, {base['steps']} steps, seed {base['seed']}"
    return (f"Fair CRPS (change against {ref}) and CPU seconds of the sampling:\n\n"
            + C.table(head + list(variables) + ["CPU s"], crps)
            + "\n\nSpread/skill (1: the spread matches the error):\n\n" + C.table(head + list(variables), ss))


def main(argv: list[str] | None = None) -> str:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", default="5,10", help="step counts of the core's default sampler")
    p.add_argument("--compare", default="dpmpp_2m:5,dpmpp_2m:10", help="METHOD:STEPS,... runs beside them")
    p.add_argument("--noise-seed", type=int, default=None, help="one more default run with this sampling seed")
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=None, help="folder keeping each run's scores for reuse")
    args = C.parse(p, argv)
    started = time.perf_counter()
    C.setup(args.threads)
    torch.manual_seed(0)
    from sciffusion.plugins import core_sampler

    bundle, truth, coarse, times, variables = held_out(args.quick)
    members = 2 if args.quick else args.members
    results = []
    for method, steps, seed in runs_of(args):
        name = core_sampler(method) + ("" if method else "-default")
        key = Path(args.cache or ".") / f"{name}_{steps}_{seed}_{members}x{len(times)}.json"
        if args.cache and key.exists():
            r = json.loads(key.read_text())
        else:
            r = scores(bundle, truth, coarse, times, variables, members, method, steps, seed)
            r["method_given"] = method is not None
            if args.cache:
                C.atomic_write(key, json.dumps(r))
        print(r, flush=True)
        results.append(r)
    noise = "" if args.noise_seed is None else f"; the run with seed {args.noise_seed} shows how large those are"
    text = NOTES.format(t=len(times), k=members, noise=noise) + "\n" + tables(results, variables)
    return C.report_section("climate_steps", C.DOCS / "climate_downscale.md", "Sampler steps", text, args, started)


NOTES = """The shipped checkpoint on the {t} held-out times of `python -m recipes.climate_downscale` (K = {k} members
conserving the coarse input, one thread), with the core's default sampler and with DPM-Solver++(2M)
(`dpmpp_2m`). Runs with the same seed start from the same noise, so their differences are smaller than
the differences between seeds{noise}.
"""


if __name__ == "__main__":
    main()
