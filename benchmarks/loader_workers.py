"""Loader workers: climate downscaling training through the core `Trainer` with 0, 1 and 2 DataLoader workers.

    python -m benchmarks.loader_workers [--quick] [--steps 40] [--rounds 2]

Workload: the climate recipe's `--train` path (`plugins.climate.downscale.training.build`: the ERA5 sample,
factor 4, its default variables, strips of the training times in every block alignment, the UNet of widths
24/48/96) trained for `--steps` steps from the same weights with `TrainConfig(num_workers=W,
persistent_workers=True)`, W = 0, 1, 2, in interleaved rounds, after one untimed warm-up run of each;
every run starts with an empty cache of prepared times.

Measured per step, after the first three: the wall time between consecutive loss calls (steps/s); the CPU
seconds of the training process (what the workers take off it); and, per run, the CPU seconds of the
worker processes (`RUSAGE_CHILDREN`, counted when the persistent workers end with the run), so that the
total CPU per step shows what the workers cost. On a machine shared with other jobs, wall time is
inflated by the load; the CPU columns are not.
"""

from __future__ import annotations

import copy
import itertools
import resource
import tempfile
import time

from benchmarks import _common as C

WORKERS = (0, 1, 2)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def prepare(quick: bool):
    """(UNet, process, dataset) of the climate --train path on the ERA5 sample."""
    from sciffusion.plugins.climate.downscale.training import build
    from sciffusion.plugins.climate.experiment import ExperimentConfig, load_reference, model_config

    cfg = ExperimentConfig(quiet=True, widths=(8, 16) if quick else (24, 48, 96))
    ref = load_reference(cfg)
    dcfg = model_config(cfg, ref.fields, ref.variables, ref.train_idx, ref.source)
    bundle, data = build(ref.fields, dcfg, ref.train_idx)
    return bundle.model, bundle.process(), data


def run(model, process, data, workers: int, steps: int, batch: int) -> dict[str, list[float] | float]:
    """One training run; wall and main-process CPU intervals between steps, worker CPU of the run."""
    from sciffusion.core.train.trainer import TrainConfig, Trainer
    from sciffusion.plugins.climate.downscale.training import weighted_loss

    wall, cpu = [], []

    def loss_fn(m, p, b):
        wall.append(time.perf_counter())
        cpu.append(time.process_time())
        return weighted_loss(m, p, b)

    data._cache.clear()  # every run prepares its strips from scratch, in whichever process loads them
    before = _children_cpu()
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(steps=steps, batch_size=batch, lr=7e-4, checkpoint_every=10**9, log_every=10**9,
                          out_dir=out, device="cpu", num_workers=workers, persistent_workers=True)
        Trainer(model, process, data, cfg, loss_fn=loss_fn, progress=False).fit(resume=False)
    diffs = {k: [b - a for a, b in itertools.pairwise(v[3:])] for k, v in (("wall", wall), ("cpu", cpu))}
    return {**diffs, "workers_cpu": _children_cpu() - before}


def main(argv: list[str] | None = None) -> str:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps per run")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    args = C.parse(p, argv)
    started = time.perf_counter()
    C.setup(args.threads)
    steps = args.steps or (6 if args.quick else 40)
    rounds = args.rounds or (1 if args.quick else 2)
    batch = 2 if args.quick else 8
    model, process, data = prepare(args.quick)
    res = {w: {"wall": [], "cpu": [], "workers_cpu": 0.0, "steps": 0} for w in WORKERS}
    for w in WORKERS:  # untimed warm-up
        run(copy.deepcopy(model), process, data, w, 2 if args.quick else 4, batch)
    for r in range(rounds):
        for w in WORKERS[r % 3:] + WORKERS[: r % 3]:
            got = run(copy.deepcopy(model), process, data, w, steps, batch)
            res[w]["wall"] += got["wall"]
            res[w]["cpu"] += got["cpu"]
            res[w]["workers_cpu"] += got["workers_cpu"]
            res[w]["steps"] += steps
    rows = []
    base_sps = 1.0 / C.median(res[0]["wall"])
    for w in WORKERS:
        sps = 1.0 / C.median(res[w]["wall"])
        main_cpu = C.median(res[w]["cpu"])
        worker_cpu = res[w]["workers_cpu"] / res[w]["steps"]
        rows.append([w, C.fmt(sps, 3), C.fmt(sps / base_sps, 3), f"{main_cpu * 1000:.0f}",
                     f"{worker_cpu * 1000:.0f}", f"{(main_cpu + worker_cpu) * 1000:.0f}", len(res[w]["wall"])])
    summary = (
        f"{steps} steps per run, {rounds} interleaved round(s), batch {batch} strips, {args.threads} torch "
        "thread(s) in the training process. steps/s: median wall interval between steps; CPU ms: the training "
        "process's median per step, and the workers' total over the run divided by its steps.\n\n"
        + C.table(["workers", "steps/s (wall)", "vs 0 workers", "training process CPU ms/step",
                   "workers CPU ms/step", "total CPU ms/step", "intervals"], rows)
    )
    return C.report("loader_workers", "Loader workers in climate training", summary, [("Reading", NOTES)],
                    args, started)


NOTES = """With workers, the strips are prepared in other processes while the training process runs the
UNet: its CPU time per step falls by the preparation cost, and on a machine with a free core the steps
come faster. Each worker keeps its own cache of prepared times (persistent workers keep it for the whole
run), so a worker prepares a time the first time it meets it, once per worker: the total CPU rises by
that duplicated preparation early in a run. On a GPU the training process only launches kernels, so the
preparation is what the workers hide.
"""


if __name__ == "__main__":
    main()
