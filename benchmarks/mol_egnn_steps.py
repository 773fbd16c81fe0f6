"""3-D molecules (EGNN, `qm9_small`): validity and stability of generated molecules against sampler and steps.

    python -m benchmarks.mol_egnn_steps --n 500 --steps 50,100,200 --compare ddpm:50,ddpm:100,ddpm:200

The shipped `qm9_small` checkpoint generates `--n` molecules (the same atom counts in every run, seed 0)
with the core's default sampler at each of `--steps` and with each `--compare METHOD:STEPS`; each run is
scored by the plugin's metrics (atom and molecule stability, RDKit validity, valid and unique,
connected). The page section "Sampler steps" of docs/benchmarks/mol_egnn_choices.md is replaced by the
result.
"""

from __future__ import annotations

import math
import time

import torch

from benchmarks import _common as C

METRICS = ("atom_stability", "molecule_stability", "validity", "valid_and_unique", "connectivity")


def one_run(model, n: int, method: str | None, steps: int, seed: int) -> dict:
    """The metrics of `n` molecules sampled by `method` in `steps` steps, and the CPU seconds of sampling."""
    from sciffusion.plugins import core_sampler
    from sciffusion.plugins.molecules.generate import generate

    cpu = time.process_time()
    gen = generate(model, n, steps, method, seed, "cpu")
    cpu = time.process_time() - cpu
    m = gen.metrics.to_dict()
    return {"method": core_sampler(method), "default": method is None, "steps": steps, "cpu_s": cpu,
            **{k: m[k] for k in METRICS}}


def main(argv: list[str] | None = None) -> str:
    from sciffusion.plugins.molecules.generate import DEFAULT_CHECKPOINT
    from sciffusion.plugins.molecules.train import load_model

    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", default="50,100,200", help="step counts of the core's default sampler")
    p.add_argument("--compare", default="ddpm:200", help="METHOD:STEPS,... runs beside them")
    p.add_argument("--seed", type=int, default=0)
    args = C.parse(p, argv)
    started = time.perf_counter()
    C.setup(args.threads)
    torch.manual_seed(0)
    model = load_model(DEFAULT_CHECKPOINT, "cpu")
    n = 10 if args.quick else args.n
    runs = [(None, int(s)) for s in args.steps.split(",")]
    runs += [(m, int(s)) for m, s in (c.split(":") for c in args.compare.split(",") if c)]
    rows, section = [], ""
    for method, steps in runs:   # the section is rewritten after every run: a stopped sweep keeps its rows
        r = one_run(model, n, method, steps, args.seed)
        rows.append([r["method"] + (" (default)" if r["default"] else ""), steps]
                    + [f"{100 * r[k]:.1f}" for k in METRICS] + [f"{r['cpu_s']:.0f}"])
        text = NOTES.format(n=n, seed=args.seed, se=100 * math.sqrt(0.25 / n)) + "\n" + C.table(
            ["sampler", "steps", "atom stable %", "mol stable %", "valid %", "valid & unique %", "connected %",
             "CPU s"], rows)
        section = C.report_section("mol_egnn_steps", C.DOCS / "mol_egnn_choices.md", "Sampler steps", text, args,
                                   started)
    return section


NOTES = """The shipped `qm9_small` checkpoint, {n} molecules per run (the same atom counts in every run, seed {seed},
one thread), with the core's default sampler and with ancestral DDPM steps (`ddpm`). A fraction's
standard error at this n is at most {se:.1f} points.
"""


if __name__ == "__main__":
    main()
