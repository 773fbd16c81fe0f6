"""Kernel estimators: score evaluations per second and peak memory as the data grow from 1e3 to 1e5 points.

- `KernelSmoothingScore` (DKS, OU process on R^2, fixed bandwidth): one score call costs `O(B n d)` and
  runs over data chunks with a running log-sum-exp, so its working memory is `O(B x chunk)`, bounded in `n`.
- `SpectralOISM` (Hermite basis, degree 4): building it averages the basis over the data once, `O(n)`;
  a score call is closed-form, `O(B d K)`, independent of `n`.
- Peer: the same Nadaraya-Watson score written densely by hand,
  `s = (a m - y) / sigma^2`, `m = softmax_i(-|y - a x_i|^2 / (2 sigma^2)) x`, with a `(B, n)` weight matrix
  (memory `O(B n)`); its agreement with the core is checked in every run.

Per call: `B = 256` query points at OU time `t = 0.1`, float32, medians of interleaved repeats, one thread.
The scaling exponent is the least-squares slope of `log(time)` (or memory) against `log(n)`.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from benchmarks import _common as C
from benchmarks.sampler_accuracy import mixture
from sciffusion.core.kernels import KernelSmoothingScore
from sciffusion.core.kernels.oism import SpectralOISM

T_QUERY = 0.1
BANDWIDTH = 0.05


def dense_dks_score(data: Tensor, y: Tensor, t: float) -> Tensor:
    """Hand-written DKS score with the full `(B, n)` weight matrix (OU: `a = e^{-t}`, `sigma^2 = 1 - e^{-2t}`)."""
    a, var = math.exp(-t), -math.expm1(-2 * t)
    logw = -torch.cdist(y, a * data).square() / (2 * var)
    m = torch.softmax(logw, dim=1) @ data
    return (a * m - y) / var


def slope(ns: list[int], ys: list[float]) -> float:
    """Least-squares slope of `log y` against `log n`."""
    lx = [math.log(n) for n in ns]
    ly = [math.log(max(y, 1e-12)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main(argv: list[str] | None = None) -> str:
    p = C.parser(__doc__.splitlines()[0])
    args = C.parse(p, argv)
    started = time.perf_counter()
    device = C.setup(args.threads)
    ns = [1000, 4000] if args.quick else [1000, 3000, 10_000, 30_000, 100_000]
    batch = 64 if args.quick else 256
    repeats = 3 if args.quick else 7
    g = torch.Generator().manual_seed(0)
    source = mixture(2)
    y = source.sample(batch, g).float().to(device)
    rows, res = [], {}
    for n in ns:
        data = source.sample(n, g).float().to(device)
        built: dict = {}
        build_kss = C.time_call(
            lambda b=built, x=data: b.update(kss=KernelSmoothingScore(x, bandwidth=BANDWIDTH)), device)
        build_oism = C.time_call(
            lambda b=built, x=data: b.update(oism=SpectralOISM(x, basis="hermite", degree=4)), device)
        kss, oism = built["kss"], built["oism"]
        calls = {
            "kss": lambda kss=kss: kss.score(y, T_QUERY),
            "oism": lambda oism=oism: oism.score(y, T_QUERY),
            "dense": lambda data=data: dense_dks_score(data, y, T_QUERY),
        }
        times = C.interleaved(calls, device, repeats=repeats, warmup=1)
        mem = {k: C.peak_memory(f, device) for k, f in calls.items()}
        err = float((calls["kss"]() - calls["dense"]()).abs().max())
        med = {k: C.median(v) for k, v in times.items()}
        res[n] = (med, mem, build_kss, build_oism, err)
        rows.append([
            f"{n:,}",
            f"{batch / med['kss']:,.0f}", f"{batch / med['dense']:,.0f}", C.fmt(med["dense"] / med["kss"], 3),
            C.fmt_bytes(mem["kss"]), C.fmt_bytes(mem["dense"]),
            C.fmt(mem["kss"] / mem["dense"], 2) if min(mem["kss"], mem["dense"]) >= 2**16 else "-",
            f"{batch / med['oism']:,.0f}", C.fmt_bytes(mem["oism"]), f"{build_oism * 1e3:.1f}",
            f"{err:.1e}",
        ])
    k_slope = slope(ns, [res[n][0]["kss"] for n in ns])
    d_slope = slope(ns, [res[n][0]["dense"] for n in ns])
    o_slope = slope(ns, [res[n][0]["oism"] for n in ns])
    ob_slope = slope(ns, [res[n][3] for n in ns])
    km_slope = slope(ns, [max(res[n][1]["kss"], 2**16) for n in ns])
    chunk = kss._chunk(batch)
    past = [n for n in ns if n >= chunk]
    km_past = slope(past, [max(res[n][1]["kss"], 2**16) for n in past]) if len(past) >= 2 else math.nan
    dm_slope = slope(ns, [max(res[n][1]["dense"], 2**16) for n in ns])
    big = ns[-1]
    summary = (
        f"Score evaluations per second (B = {batch} queries per call, t = {T_QUERY}) and peak memory of one "
        "call. Speed ratio = dense time / core time (above 1: the core is faster); memory ratio = core / dense "
        "(below 1: the core needs less).\n\n"
        + C.table(["n data", "DKS evals/s", "dense evals/s", "speed core/dense", "DKS memory", "dense memory",
                   "memory core/dense", "OISM evals/s", "OISM memory", "OISM build ms", "max |DKS - dense|"], rows)
        + "\n\nScaling exponents (slope of log cost against log n; theory in brackets): DKS time "
        f"**{k_slope:.2f}** (1), dense time {d_slope:.2f} (1), DKS memory {km_slope:.2f} overall and "
        f"**{'n/a' if math.isnan(km_past) else f'{km_past:.2f}'}** (0) once n exceeds one chunk of {chunk:,} points, dense memory {dm_slope:.2f} (1), OISM score time **{o_slope:.2f}** (0), OISM build time "
        f"{ob_slope:.2f} (1; small n is dominated by fixed costs)."
    )
    losses = []
    for n in ns:
        med, mem, *_ = res[n]
        if med["kss"] > med["dense"] * 1.05:
            losses.append(f"n = {n:,}: DKS {C.fmt(med['kss'] / med['dense'], 3)}x the time of the dense score")
    why = ("Where the core loses:\n\n" + ("\n".join(f"- {s}" for s in losses) if losses else "- nowhere in this run")
           + "\n\n" + NOTES.format(chunk=chunk, big=f"{big:,}"))
    return C.report("kernel_scaling", "Kernel estimators: cost against the number of data points", summary,
                    [("Where the core loses, and why", why)], args, started)


NOTES = """Why:

- The chunked DKS pays for its bounded memory with a loop over data chunks and a running log-sum-exp
  rescale per chunk (`core.kernels._accumulate`; {chunk} data points per chunk at this batch), where the dense
  score does one `cdist`, one softmax and one matrix product. While the dense `(B, n)` matrix fits in
  cache-friendly memory the dense code is as fast or faster; it stops being usable when `B n` floats no
  longer fit (at n = {big} and B = 256 it already holds 100 MB per temporary, and a batch of 4096 queries
  against 1e6 points would need 16 GB).
- OISM's score does not touch the data after construction, so its cost is flat in n; what grows with n is
  the one-off average of the basis over the data.
- CPU memory is the growth of the peak resident set (see benchmarks/_common.py), an estimate that misses
  allocations served from memory the process already held; below 64 KiB it reads as noise.
"""


if __name__ == "__main__":
    main()
