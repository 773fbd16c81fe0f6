"""The GPU check: the CUDA test subset, then each plugin's main work on CUDA against the same work on the CPU.

Run on a machine with a GPU (under 10 minutes on one data-centre GPU):

    python -m benchmarks.gpu_check                 # writes docs/benchmarks/gpu.md

It runs `python -m pytest -m cuda` (every device-parametrised test on CUDA), then times, on the GPU and
on the CPU (all cores), the same calls:

- MRI: `infer.super_resolve` with the shipped 2x checkpoint on a 96^3 crop of the MNI152 template
  degraded 2x (both devices), and the whole 1 mm brain at 2x on the GPU alone (time and peak memory);
- molecules: `graph_pipeline.sample_graphs` with the shipped QM9 graph model (molecules per second);
- climate: `api.downscale` of the ERA5 sample's coarse fields with the shipped checkpoint.

Each row gives both times and the CPU / GPU ratio (how many times faster the GPU is). Timings are wall
clock around one call after one warm-up call, with `torch.cuda.synchronize()` before the clock stops.
`--device cpu --quick` runs the harness on a machine without a GPU (both columns are then the CPU; the
numbers mean nothing, it checks that the script works).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks import _common as C


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="the accelerator to check (default cuda)")
    p.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1, help="threads of the CPU reference")
    p.add_argument("--quick", action="store_true", help="tiny sizes, no test run: checks the harness only")
    p.add_argument("--skip-tests", action="store_true", help="do not run `pytest -m cuda`")
    p.add_argument("--no-write", action="store_true", help="print the page only")
    p.add_argument("--out", default=str(C.DOCS), help="folder of the page (default docs/benchmarks)")
    return p


def run_cuda_tests(timeout: int = 420) -> str:
    """`python -m pytest -m cuda -q` in the repository; its summary line (or why it did not finish)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
    try:
        done = subprocess.run(cmd, cwd=C.REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"did not finish in {timeout} s"
    lines = [ln for ln in done.stdout.splitlines() if re.search(r"\d+ (passed|failed|error|skipped)", ln)]
    return (lines[-1].strip("= ") if lines else "no summary") + f" (exit status {done.returncode})"


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(seconds, peak device memory in bytes or nan) of one call, after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else float("nan")
    return seconds, peak


# ----- the three workloads --------------------------------------------------------------------------
def mri_work(device: torch.device, quick: bool, whole: bool = False) -> Callable[[], object]:
    """Super-resolve a 2x-degraded crop (or the whole MNI152 brain) with the shipped 2x checkpoint."""
    from sciffusion.plugins.mri.data import mni_volume
    from sciffusion.plugins.mri.degrade import crop_to_multiple, degrade
    from sciffusion.plugins.mri.infer import super_resolve
    from sciffusion.plugins.mri.model import default_checkpoint, load_checkpoint

    model = load_checkpoint(default_checkpoint((2, 2, 2)))
    vol = crop_to_multiple(mni_volume(1).data, (2, 2, 2))
    if not whole:
        n = 32 if quick else 96
        c = [s // 2 - n // 2 for s in vol.shape]
        vol = vol[c[0]:c[0] + n, c[1]:c[1] + n, c[2]:c[2] + n]
    low = degrade(vol, model.config.scale)
    return lambda: super_resolve(model, low, samples=2, steps=2 if quick else 5, device=device)


def molecule_work(device: torch.device, quick: bool) -> tuple[Callable[[], object], int]:
    """Sample molecules with the shipped QM9 graph model; returns (call, number of molecules)."""
    from sciffusion.plugins.molecules.graph_diffusion import load_graph_model
    from sciffusion.plugins.molecules.graph_pipeline import sample_graphs

    path = Path(__file__).resolve().parent.parent / "plugins" / "molecules" / "checkpoints" / "qm9_graph.pt"
    model = load_graph_model(path, device=device)
    n = 32 if quick else 2048
    return (lambda: sample_graphs(model, n, steps=5 if quick else 100, batch_size=n)), n


def climate_work(device: torch.device, quick: bool) -> Callable[[], object]:
    """Downscale the ERA5 sample's coarse fields with the shipped checkpoint (K members, 10 steps)."""
    from sciffusion.plugins.climate.api import downscale, load_model
    from sciffusion.plugins.climate.grid import coarsen_dataset
    from sciffusion.plugins.climate.io import era5_sample_path, open_fields

    path = Path(__file__).resolve().parent.parent / "plugins" / "climate" / "checkpoints" / "era5_sample_x4.pt"
    model = load_model(path)
    fine = open_fields(era5_sample_path(), list(model.cfg.variables))
    fine = fine.sel(latitude=model.grids.lat, longitude=model.grids.lon).isel(time=slice(0, 2 if quick else 24))
    coarse = coarsen_dataset(fine, model.cfg.factor).astype(np.float32)
    members, steps = (2, 2) if quick else (8, 10)
    return lambda: downscale(coarse, model, members=members, steps=steps, device=str(device)).compute()


# ----- the page -----------------------------------------------------------------------------------------
def compare(name: str, build: Callable[[torch.device], Callable[[], object]], device: torch.device,
            cpu_threads: int) -> list[str]:
    """One table row: the same call on `device` and on the CPU."""
    dev_s, peak = timed(build(device), device)
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_threads)
    try:
        cpu_s, _ = timed(build(torch.device("cpu")), torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    mem = C.fmt_bytes(peak) if peak == peak else "n/a"
    return [name, C.fmt(dev_s), C.fmt(cpu_s), C.fmt(cpu_s / dev_s), mem]


def rows(args: argparse.Namespace, device: torch.device) -> list[list[str]]:
    """Every workload's row; the whole brain runs on the accelerator alone."""
    quick = args.quick
    out = [compare("MRI 2x, 96^3 crop, K = 2, 5 steps", lambda d: mri_work(d, quick), device, args.cpu_threads)]
    if not quick:
        s, peak = timed(mri_work(device, quick, whole=True), device)
        out.append(["MRI 2x, whole 1 mm brain, K = 2, 5 steps", C.fmt(s), "not run", "", C.fmt_bytes(peak)])
    n_mol = molecule_work(torch.device("cpu"), quick)[1]
    out.append(compare(f"molecules, {n_mol} graphs, 100 steps", lambda d: molecule_work(d, quick)[0], device,
                       args.cpu_threads))
    out.append(compare("climate ERA5 sample x4, 24 times, K = 8, 10 steps", lambda d: climate_work(d, quick),
                       device, args.cpu_threads))
    return out


def main(argv: Sequence[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible here; run it on a GPU machine "
              "(or `--device cpu --quick` to check the harness)", file=sys.stderr)
        raise SystemExit(2)
    started = time.perf_counter()
    tests = "not run (--quick or --skip-tests)" if args.quick or args.skip_tests else run_cuda_tests()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table = C.table(["work", f"{device.type} (s)", f"CPU, {args.cpu_threads} threads (s)", "CPU / device",
                     "peak device memory"], rows(args, device))
    summary = f"Device: {name}. `python -m pytest -m cuda`: {tests}.\n\n{table}"
    sections = [("What runs", __doc__.split("\n\n", 2)[2].strip())]
    return C.report("gpu", "GPU check", summary, sections, args, started)


if __name__ == "__main__":
    main()
