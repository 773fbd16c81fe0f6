"""Per-step overhead of the sampling loop: core against diffusers, MONAI and hand-written loops.

The network is the identity (`eps_hat = x_t`), so what is timed is everything a sampling loop does outside
the network: the update arithmetic, drawing noise, building timesteps, and the bookkeeping of each library.
Shapes: a batch of 16 volumes `(16, 1, 64, 64, 64)` (4.2M elements, memory-bound elementwise work) and
`(1024, 2)` points (pure Python overhead). One run is a full `N`-step sampling call with the initial noise
draw; the time per step is its wall time over `N`. Set-up that a user does once (building a scheduler
object) is outside the timing; `set_timesteps` (done per sampling call) is inside.

Contenders, on the cosine schedule, `eps` prediction:
- `core_<m>`: `core.sample(model, proc, shape, method=m, steps=N)`;
- `diffusers_*`, `monai_*`: the scheduler loops of `benchmarks.sampler_accuracy` (trained_betas = the same
  betas);
- `minimal_ddim`: the textbook update `x0 = (x - s_t eps) / a_t; x = a_s x0 + s_s eps` with precomputed
  python floats, `minimal_ddpm`: the posterior draw written the same way; `fused_ddim`: DDIM folded into
  one `x = c1 x + c2 eps` (a lower bound no general library reaches).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks import _common as C
from benchmarks.sampler_accuracy import peer_scheduler, run_peer
from sciffusion.core import DiffusionProcess, sample
from sciffusion.core.diffusion.samplers import default_t_max
from sciffusion.core.grids import time_grid

SCHEDULE = "cosine"
GROUPS = {
    "ddim": ("core_ddim", "diffusers_ddim", "monai_ddim", "minimal_ddim", "fused_ddim"),
    "ddpm": ("core_ddpm", "diffusers_ddpm", "monai_ddpm", "minimal_ddpm"),
    "dpmpp_2m": ("core_dpmpp_2m", "diffusers_dpmpp_2m"),
    "unipc": ("core_unipc", "diffusers_unipc"),  # the core's default sampler
}
LIBRARY_PEERS = ("diffusers", "monai")


def identity(x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
    """The trivial network: `eps_hat = x_t`."""
    return x


Coefficients = list[tuple[float, float, float, float, float]]


def _grid_coefficients(proc: DiffusionProcess, steps: int) -> Coefficients:
    """`(t, a_t, s_t, a_s, s_s)` per step of the core's uniform grid from `default_t_max` to 0."""
    ts = time_grid(proc.schedule, steps, "uniform", t_max=default_t_max(proc), t_min=0.0)
    a, s = proc.alpha(ts).tolist(), proc.sigma(ts).tolist()
    return [(float(ts[i]), a[i], s[i], a[i + 1], s[i + 1]) for i in range(steps)]


def minimal_ddim(shape: tuple[int, ...], coef: Coefficients, g: torch.Generator, device: torch.device) -> Tensor:
    """Textbook DDIM with eta = 0 and precomputed python-float coefficients."""
    x = torch.randn(shape, generator=g, device=device)
    for t, a_t, s_t, a_s, s_s in coef:
        eps = identity(x, t)
        x0 = (x - s_t * eps) / a_t
        x = a_s * x0 + s_s * eps if s_s > 0 else x0
    return x


def fused_ddim(shape: tuple[int, ...], coef: Coefficients, g: torch.Generator, device: torch.device) -> Tensor:
    """DDIM folded into `x = c1 x + c2 eps`, `c1 = a_s / a_t`, `c2 = s_s - a_s s_t / a_t`."""
    x = torch.randn(shape, generator=g, device=device)
    for t, a_t, s_t, a_s, s_s in coef:
        eps = identity(x, t)
        x = torch.add(x, eps, alpha=(s_s - a_s * s_t / a_t) / (a_s / a_t)).mul_(a_s / a_t)
    return x


def minimal_ddpm(shape: tuple[int, ...], coef: Coefficients, g: torch.Generator, device: torch.device) -> Tensor:
    """Ancestral DDPM: `x_s = (x - sigma_{t|s}^2 / s_t eps) / a_{t|s} + sigma_{t|s} s_s / s_t z`."""
    x = torch.randn(shape, generator=g, device=device)
    for t, a_t, s_t, a_s, s_s in coef:
        eps = identity(x, t)
        if s_s == 0:
            x = (x - s_t * eps) / a_t
            continue
        a_ts = a_t / a_s
        var_ts = s_t * s_t - a_ts * a_ts * s_s * s_s
        x = (x - (var_ts / s_t) * eps) / a_ts + (math.sqrt(var_ts) * s_s / s_t) * torch.randn(
            shape, generator=g, device=device)
    return x


def contender(name: str, shape: tuple[int, ...], steps: int, device: torch.device) -> Callable[[], Tensor]:
    """A zero-argument callable doing one full sampling run of `name`."""
    g = torch.Generator(device=device).manual_seed(0)
    if name.startswith("core_"):
        proc = DiffusionProcess(SCHEDULE, prediction="eps")
        method = name[len("core_"):]
        return lambda: sample(identity, proc, shape, method=method, steps=steps, generator=g, progress=False,
                              device=device)
    if name in ("minimal_ddim", "fused_ddim", "minimal_ddpm"):
        fn = {"minimal_ddim": minimal_ddim, "fused_ddim": fused_ddim, "minimal_ddpm": minimal_ddpm}[name]
        coef = _grid_coefficients(DiffusionProcess(SCHEDULE, prediction="eps"), steps)
        return lambda: fn(shape, coef, g, device)
    sch = peer_scheduler(name, SCHEDULE, steps)

    def run() -> Tensor:
        sch.set_timesteps(steps, device=device) if name.startswith("diffusers") else sch.set_timesteps(steps)
        return run_peer(name, sch, lambda x, k: identity(x, k), shape, g, device)

    return run


def _div(a: float, b: float) -> float:
    """`a / b`, or nan when the difference of two noisy medians left `b` at zero."""
    return a / b if b > 0 else math.nan


def _show(r: float) -> str:
    return "n/a (noise)" if math.isnan(r) else C.fmt(r, 3)


def main(argv: list[str] | None = None) -> str:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per contender")
    args = C.parse(p, argv)
    started = time.perf_counter()
    device = C.setup(args.threads)
    if args.quick:
        cases = [((1024, 2), 4, 3)]
    else:
        cases = [((1024, 2), 100, 15), ((16, 1, 64, 64, 64), 10, 7)]
    rows, detail_rows, losses = [], [], []
    for shape, steps, repeats in cases:
        repeats = args.repeats or repeats
        names = [n for group in GROUPS.values() for n in group]
        # every contender runs N and 2N steps: per step = (T(2N) - T(N)) / N, fixed cost per call = 2 T(N) - T(2N)
        runs = {(n, k): contender(n, shape, k, device) for n in names for k in (steps, 2 * steps)}
        keyed = {f"{n}@{k}": fn for (n, k), fn in runs.items()}
        times = C.interleaved(keyed, device, repeats=repeats, warmup=1)
        big = math.prod(shape) > 1_000_000 or args.quick
        mem = {n: C.peak_memory(runs[(n, steps)], device) for n in names} if big else {}
        t1 = {n: C.median(times[f"{n}@{steps}"]) for n in names}
        t2 = {n: C.median(times[f"{n}@{2 * steps}"]) for n in names}
        per_step = {n: max(t2[n] - t1[n], 0.0) / steps for n in names}
        fixed = {n: 2 * t1[n] - t2[n] for n in names}
        label = "x".join(map(str, shape))
        for group, members in GROUPS.items():
            core = f"core_{group}"
            peers = [n for n in members if n.startswith(LIBRARY_PEERS)]
            best = min(peers, key=per_step.get)
            minimal = next((n for n in members if n.startswith("minimal")), None)
            r_peer = _div(per_step[core], per_step[best])
            r_min = _div(per_step[core], per_step[minimal]) if minimal else math.nan
            best_call = min(peers, key=t2.get)
            r_call = _div(t2[core], t2[best_call])
            rows.append([label, group, f"{per_step[core] * 1e6:.0f}", f"{best} {per_step[best] * 1e6:.0f}",
                         _show(r_peer), _show(r_min) if minimal else "-",
                         f"{fixed[core] * 1e3:.1f} / {fixed[best] * 1e3:.1f}", _show(r_call),
                         f"{C.fmt_bytes(mem[core])} / {C.fmt_bytes(mem[best])}" if mem else "-"])
            if r_peer > 1.0:
                losses.append(f"{label} {group}: per step, core {C.fmt(r_peer, 3)}x {best}")
            if r_call > 1.0:
                losses.append(f"{label} {group}: per {2 * steps}-step call, core {C.fmt(r_call, 3)}x {best_call}")
            if minimal and r_min > 1.05:
                losses.append(f"{label} {group}: per step, core {C.fmt(r_min, 3)}x the minimal loop")
        for n in names:
            detail_rows.append([label, n, f"{per_step[n] * 1e6:.1f}", f"{fixed[n] * 1e3:.2f}",
                                f"{t2[n] * 1e3:.1f}", f"{C.spread(times[f'{n}@{2 * steps}']) * 100:.0f} %",
                                C.fmt_bytes(mem[n]) if mem else "-"])
    summary = (
        "Time per sampling step outside the network (identity network) and fixed cost per sampling call, "
        f"from medians of interleaved repeats of N- and 2N-step runs, {args.threads} thread(s) for every "
        "contender. Ratios below 1: the core is faster.\n\n"
        + C.table(["shape", "sampler", "core us/step", "best peer us/step", "per step: core / best peer",
                   "per step: core / minimal loop", "fixed ms per call: core / peer",
                   "whole 2N-step call: core / best peer", "peak memory core / peer"], rows)
    )
    why = (
        "Where the core loses (slower than the best peer, or more than 5 % over the minimal loop):\n\n"
        + ("\n".join(f"- {s}" for s in losses) if losses else "- nowhere in this run")
        + "\n\n" + NOTES
    )
    sections = [
        ("Where the core loses, and why", why),
        ("All contenders", "Per step = (T(2N) - T(N)) / N; fixed = 2 T(N) - T(2N) (may come out slightly "
         "negative from noise); spread = half the interquartile range over the median of the 2N-step runs; "
         "peak memory = what one N-step run adds (CPU: growth of peak RSS, see benchmarks/_common.py).\n\n"
         + C.table(["shape", "contender", "us/step", "fixed ms/call", "2N-step call ms", "spread",
                    "peak memory"], detail_rows)),
    ]
    return C.report("sampler_overhead", "Sampler overhead per step", summary, sections, args, started)


NOTES = """Why the core costs what it costs per step (profiled with torch.profiler and cProfile):

- Large tensors: after every step `core.sample` runs `torch.isfinite(x).all()` so that a blow-up is
  reported with its step without a host synchronisation. On the CPU `isfinite` is four elementwise passes
  (`eq`, `abs`, `ne`, and the reduction), about as much memory traffic as the whole DDIM update: on
  16x1x64^3 it is a fifth of the core's step time and most of its gap to the textbook loop. A single
  reduction (`torch.isfinite(x.sum())`, one pass; or the check every k steps) would remove most of it.
  The rest: `denoise` converts the model output to both `x0_hat` and `eps_hat` whatever the sampler needs,
  through per-example `(B,)` coefficients broadcast by `expand`.
- Small tensors (`1024 x 2`): the work is Python. `DiffusionProcess.convert` re-evaluates the schedule
  (`alpha(t)` and `sigma(t)`, each a float64 cosine log-SNR evaluation, `schedules.raw`) on every network
  call, although the step's `Interval` already holds `alpha_t` and `sigma_t` as floats; that is more than
  half of the core's step time. diffusers and MONAI index precomputed tables.
- Fixed cost per call: `sample()` computes `default_t_max` by an 80-iteration bisection of the log-SNR
  (`Schedule.t_from_log_snr`) on every call for `eps` models, and the log-SNR grids bisect again: a few
  ms of CPU per call (see the fixed-cost column), where the peers' `set_timesteps` costs under 1 ms.
  Caching the start time per schedule (it depends on nothing else) would remove most of it.
- MONAI's DDPM numbers are for its loop as written: it steps `k -> k - 1` whatever `N` is (see
  sampler_accuracy.md), so it does the same arithmetic per step as a correct sampler but not the same job.
- CPU timings on a shared machine are noisy (the spread column); the per-step figure is a difference of two
  medians and can come out 0 or negative for the fastest contenders, which then show as "n/a (noise)".
"""


if __name__ == "__main__":
    main()
