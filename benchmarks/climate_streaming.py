"""Archive-scale downscaling streams: flat peak memory in the number of times, the same zarr with any
number of dask workers, and a killed run that resumes to the same zarr.

    python -m benchmarks.climate_streaming [--quick] [--steps 1] [--long 480]

Each run is `python -m recipes.climate_downscale --input SYN.zarr --out OUT.zarr` in a child process
with the shipped checkpoint (the ERA5 sample's 1 degree grid, factor 4), K = 2 members, on synthetic
coarse fields of the sample's coarse grid (45 x 90) and variables, hourly times. Peak memory is the
child's peak resident set (`os.wait4`, ru_maxrss). Identity compares every value of every variable.
The kill test starts a run, waits until half of its time chunks are flagged written, kills it with
SIGKILL, runs the same command again and compares with an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from benchmarks import _common as C

VARIABLES = ("t2m", "u10", "v10", "msl", "tp")


def synthetic(path: Path, n_times: int, seed: int = 0) -> Path:
    """Smooth random coarse fields on the shipped checkpoint's coarse grid, written as zarr (one time per chunk)."""
    from sciffusion.plugins.climate import SHIPPED, Downscaler

    grids = Downscaler.load(SHIPPED).grids
    rng = np.random.default_rng(seed)
    la = np.deg2rad(grids.lat_c)[None, :, None]
    lo = np.deg2rad(grids.lon_c)[None, None, :]
    t = np.arange(n_times)[:, None, None]
    wave = np.sin(2 * lo + 0.1 * t) * np.cos(la)
    base = {"t2m": 288 - 30 * np.sin(la) ** 2 + 5 * wave, "u10": 6 * np.sin(2 * la) + 3 * wave, "v10": 3 * wave,
            "msl": 101300 + 800 * wave, "tp": np.clip(2e-4 * (wave + 0.3), 0, None)}
    shape = (n_times, len(grids.lat_c), len(grids.lon_c))
    data = {v: (("time", "latitude", "longitude"), (base[v] + (0 if v == "tp" else 0.1) * rng.normal(size=shape)).astype(np.float32))
            for v in VARIABLES}
    ds = xr.Dataset(data, coords={"time": pd.date_range("2026-03-25", periods=n_times, freq="h"),
                                  "latitude": grids.lat_c, "longitude": grids.lon_c})
    ds.chunk({"time": 1}).to_zarr(path, mode="w")
    return path


def recipe(inp: Path, out: Path, steps: int, extra: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "recipes.climate_downscale", "--input", str(inp), "--out", str(out), "--members", "2",
            "--steps", str(steps), "--quiet", *(extra or [])]


def run_child(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd` to the end; (peak RSS in bytes, wall seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=C.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss * 1024.0, time.perf_counter() - start


def same(a: Path, b: Path) -> bool:
    with xr.open_zarr(a) as x, xr.open_zarr(b) as y:
        return all(np.array_equal(x[v].values, y[v].values, equal_nan=True) for v in VARIABLES)


def kill_at_half(cmd: list[str], out: Path, n_chunks: int) -> int:
    """Start `cmd`, SIGKILL it once half of the chunk flags of `out` are set; the flags set by then."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=C.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    done = 0
    while proc.poll() is None:
        time.sleep(0.5)
        try:
            with xr.open_zarr(out, consolidated=False) as ds:
                done = int(ds["chunk_done"].values.sum())
        except Exception:  # the store is not laid out yet
            continue
        if done >= n_chunks // 2:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
    return done


def main(argv: list[str] | None = None) -> str:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--short", type=int, default=24, help="times of the short synthetic input (default 24)")
    p.add_argument("--long", type=int, default=480, help="times of the long synthetic input (default 480)")
    p.add_argument("--steps", type=int, default=1, help="sampler steps (default 1)")
    p.add_argument("--time-chunk", type=int, default=8, help="times per chunk (default 8)")
    args = C.parse(p, argv)
    if args.quick:
        args.short, args.long = 4, 8
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="climate_streaming_"))
    chunk = ["--time-chunk", str(args.time_chunk if not args.quick else 2)]
    try:
        rows = []
        for n in (args.short, args.long):
            inp = synthetic(tmp / f"in{n}.zarr", n)
            peak, wall = run_child(recipe(inp, tmp / f"out{n}.zarr", args.steps, chunk))
            rows.append((n, peak, wall))
        ratio = rows[1][1] / rows[0][1]
        inp = tmp / f"in{args.short}.zarr"
        local = tmp / f"out{args.short}.zarr"
        for w in (1, 2):
            run_child(recipe(inp, tmp / f"w{w}.zarr", args.steps, [*chunk, "--workers", str(w)]))
        n_chunks = -(-args.short // int(chunk[1]))
        killed = tmp / "killed.zarr"
        flags = kill_at_half(recipe(inp, killed, args.steps, chunk), killed, n_chunks)
        run_child(recipe(inp, killed, args.steps, chunk))
        checks = [("`--workers 1` (LocalCluster) = local run", same(tmp / "w1.zarr", local)),
                  ("`--workers 2` (LocalCluster) = `--workers 1`", same(tmp / "w2.zarr", tmp / "w1.zarr")),
                  (f"killed after {flags} of {n_chunks} chunks, resumed = uninterrupted", same(killed, local))]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = C.table(["times", "peak RSS", "wall"], [(n, C.fmt_bytes(m), f"{w:.0f} s") for n, m, w in rows])
    summary += f"\n\nPeak memory ratio {args.long} / {args.short} times: **{ratio:.3f}** (target at most 1.2)."
    ident = C.table(["check", "result"], [(name, "identical" if ok else "DIFFERENT") for name, ok in checks])
    sections = [("Identity and resume", ident),
                ("Setup", f"K = 2 members, {args.steps} sampler step(s), {chunk[1]} times per chunk, shipped checkpoint, "
                          "one thread per process; peak RSS of the recipe's process (the LocalCluster runs keep "
                          "their workers in other processes and are not in the memory table).")]
    return C.report("climate_streaming", "Climate: archive downscaling streams", summary, sections, args, started)


if __name__ == "__main__":
    main()
