"""Shared pieces of the benchmarks: honest timing, peak memory, machine description, markdown output.

Timing: on CUDA a pair of CUDA events around the call (the wall time of queued GPU work, read after a
synchronisation); on the CPU the process's CPU time (`time.process_time`) around the call. Every contender
runs with the same single intra-op thread, so CPU time is the work done; wall time on a machine shared with
other jobs mostly measures the neighbours (it swung by 25 % between runs here). Contenders are interleaved (the order
rotates every round) and repeated, and the median is reported, because the benchmark machine may be shared.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`; on the CPU
(Linux) the growth of the peak resident set size `VmHWM` over the resident size before the call, after
resetting the peak through `/proc/self/clear_refs`. The CPU figure counts pages the call touched that the
allocator did not already hold. To make that count honest, free heap memory is first handed back to the
kernel (glibc `malloc_trim`), so memory an earlier contender freed counts again when it is reused; the
allocator is otherwise left at its defaults, so the timings see what users see.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from sciffusion.core.atomic import atomic_write_bytes, atomic_write_text

REPO = Path(__file__).resolve().parent.parent


def _malloc_trim() -> None:
    """Hand free heap memory back to the kernel (glibc `malloc_trim`), so that reusing it faults pages in
    again and counts in the peak resident set; a no-op elsewhere."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
DOCS = REPO / "docs" / "benchmarks"


# ----- set-up ------------------------------------------------------------------------------------
def setup(threads: int = 1, seed: int = 0) -> torch.device:
    """Fix the intra-op thread count for every contender, seed torch, and return the device to run on."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parser(description: str) -> argparse.ArgumentParser:
    """The common command line: `--quick`, `--threads`, `--no-write` (print only), `--out` (docs folder)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the benchmark runs (a test uses it)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for every contender")
    p.add_argument("--no-write", action="store_true", help="print the tables, write nothing under docs/")
    p.add_argument("--out", type=Path, default=DOCS, help="folder for the markdown page and the figures")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv` (default: the command line) and keep it for the page's regenerating command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv = argv
    return args


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} logical CPUs", f"torch {torch.__version__} ({torch.get_num_threads()} thread(s))"]
    if torch.cuda.is_available():
        parts.insert(1, f"GPU {torch.cuda.get_device_name(0)}")
    for mod in ("diffusers", "monai"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    try:
        load = os.getloadavg()
        parts.append(f"load average {load[0]:.1f} at start")
    except OSError:
        pass
    parts.append(f"python {platform.python_version()}, {platform.system()} {platform.release()}")
    return "; ".join(parts)


def command_line(name: str, argv: Sequence[str] | None = None) -> str:
    """The command that regenerates the page: `python -m benchmarks.<name> <args>`."""
    argv = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m benchmarks." + name, *argv]).strip()


# ----- timing ------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for queued work on `device` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds taken by `fn()`: CUDA events on a GPU, CPU seconds of this process on the CPU."""
    if device.type == "cuda":
        sync(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def clock(device: torch.device) -> float:
    """A timestamp for step intervals: CPU seconds of this process on the CPU, synchronised wall time on a GPU."""
    if device.type == "cuda":
        sync(device)
        return time.perf_counter()
    return time.process_time()


def interleaved(
    contenders: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time every contender `repeats` times, interleaved round by round with a rotating order.

    Returns the list of times per contender (after `warmup` untimed rounds).
    """
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    sync(device)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            out[n].append(time_call(contenders[n], device))
    return out


def median(xs: Sequence[float]) -> float:
    """The median of `xs`."""
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> float:
    """Half the interquartile range over the median (a robust relative spread); 0 for fewer than 4 values."""
    if len(xs) < 4:
        return 0.0
    q = statistics.quantiles(xs, n=4)
    m = statistics.median(xs)
    return float((q[2] - q[0]) / 2 / m) if m > 0 else 0.0


# ----- memory ------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def peak_memory(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak memory in bytes that `fn()` adds over what was held before it (see the module docstring)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    _malloc_trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kb("VmRSS")
    except OSError:
        base = None
    if base is None:  # not Linux: lifetime peak only, from resource
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return float(max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    fn()
    peak = _status_kb("VmHWM") or base
    return float(max(0, peak - base) * 1024)


# ----- output ------------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(x: float, digits: int = 3) -> str:
    """A number with `digits` significant digits."""
    if x != x:
        return "nan"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def fmt_bytes(b: float) -> str:
    """Bytes as MiB (or KiB below 1 MiB)."""
    return f"{b / 2**20:.1f} MiB" if b >= 2**20 else f"{b / 2**10:.0f} KiB"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write through a temporary file in the same folder and `os.replace` it into place."""
    if isinstance(data, bytes):
        atomic_write_bytes(path, data)
    else:
        atomic_write_text(path, data)


def report(
    name: str,
    title: str,
    summary: str,
    sections: Sequence[tuple[str, str]],
    args: argparse.Namespace,
    started: float,
) -> str:
    """Print the page and (unless `--no-write`) write it to `<out>/<name>.md` with machine and command.

    `summary` is the ratio table printed first; `sections` are `(heading, markdown)` pairs.
    """
    head = [
        f"# {title}",
        "",
        f"Measured {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC on: {machine()}.",
        "",
        f"Regenerate with `{command_line(name, getattr(args, 'argv', None))}` ({time.perf_counter() - started:.0f} s "
        f"wall, {time.process_time():.0f} s CPU for this run"
        + (", quick mode: sizes too small to quote" if args.quick else "") + "). The machine was shared with "
        "other jobs: wall times are inflated by the load above; on the CPU the timings are CPU seconds of "
        "the benchmark process (one thread), medians of interleaved repeats.",
        "",
    ]
    body = [summary, ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text.rstrip(), ""]
    page = "\n".join(head + body)
    print(page)
    if args.no_write or (args.quick and Path(args.out).resolve() == DOCS.resolve()):
        return page  # a quick run never replaces the measured tables
    atomic_write(Path(args.out) / f"{name}.md", page)
    return page


def report_section(name: str, page: Path, heading: str, text: str, args: argparse.Namespace, started: float) -> str:
    """Print a `## heading` section (with machine and regenerating command) and (unless `--no-write` or a
    quick run into docs/) put it into `page`: it replaces the section of that heading, up to the next `## `
    heading, or is appended. For a measurement that extends a page another command made."""
    section = "\n".join([
        f"## {heading}", "",
        f"Measured {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC on: {machine()}. Made by "
        f"`{command_line(name, getattr(args, 'argv', None))}` ({time.perf_counter() - started:.0f} s wall, "
        f"{time.process_time():.0f} s CPU" + (", quick mode: sizes too small to quote" if args.quick else "") + ").",
        "", text.rstrip(), "",
    ])
    print(section)
    if args.no_write or (args.quick and Path(args.out).resolve() == DOCS.resolve()):
        return section
    path = Path(args.out) / page.name
    old = path.read_text() if path.exists() else ""
    match = re.search(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", old, flags=re.M | re.S)
    if match:
        rest = old[match.end():]
        new = old[: match.start()] + section + ("\n" + rest if rest else "")
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + section
    atomic_write(path, new)
    return section
