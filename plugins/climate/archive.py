"""Archive-scale downscaling into zarr: chunk by chunk, resumable, on any dask cluster.

    run_archive(ArchiveConfig("coarse.zarr", "fine.zarr", checkpoint="model.pt", workers=4))

1. The output store is laid out first (`to_zarr(compute=False)`: metadata and coordinates only),
   one zarr chunk per `time_chunk` times, with the run's settings (`ArchiveConfig.fingerprint`)
   in its attributes and a `chunk_done` flag per time chunk.
2. Each pending time chunk is one task: open the input lazily, downscale that chunk
   (`api.downscale`, so each time's members come from its own seed), write it with a region write,
   then set its flag. Memory is one chunk per worker, whatever the number of times.
3. After a kill, running the same command again skips the chunks whose flag is set: a chunk killed
   half-way is written again, identically. A store made with other settings is refused.

Tasks run in this process by default, or as futures on a `dask.distributed` cluster: a
`LocalCluster` of `workers` single-threaded processes, or the scheduler at `scheduler`. A worker
loads the model once (`api.load_model`) and keeps it for all its tasks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from sciffusion.core.config import JsonConfig
from sciffusion.plugins import core_sampler
from sciffusion.plugins.climate.api import downscale, load_model
from sciffusion.plugins.climate.io import open_fields

RUN_ATTR = "sciffusion_run"


@dataclass(frozen=True)
class ArchiveConfig(JsonConfig):
    """One archive run: input, output store, model and sampling settings, and where to compute."""

    input: str
    out: str
    checkpoint: str
    members: int = 8
    steps: int = 10
    seed: int = 0
    conserve: bool = True
    coarse_gaps: str = "infill"
    time_chunk: int = 8
    workers: int | None = None
    scheduler: str | None = None
    progress: bool = True
    retain_freed_memory: bool = False   # workers of a LocalCluster started here keep freed memory for reuse

    def fingerprint(self, n_times: int) -> dict:
        """What makes two runs write the same store: input, model bytes, sampling settings (with the
        name of the core's default sampler, which `downscale` uses), chunks."""
        digest = hashlib.sha256(Path(self.checkpoint).read_bytes()).hexdigest()[:16]
        keep = ("members", "steps", "seed", "conserve", "coarse_gaps", "time_chunk")
        return {"input": str(Path(self.input).resolve()), "checkpoint_sha256": digest, "n_times": n_times,
                "sampler": core_sampler(),
                **{k: v for k, v in self.to_dict().items() if k in keep}}


def _open(cfg: ArchiveConfig) -> xr.Dataset:
    return open_fields(cfg.input, list(load_model(cfg.checkpoint).cfg.variables))


def check_store(cfg: ArchiveConfig, n_times: int) -> bool:
    """True when `cfg.out` exists and was made by this run's settings (resume); False when it does
    not exist; a ValueError naming the first differing setting when another run made it."""
    out = Path(cfg.out)
    if not out.exists():
        return False
    try:
        attrs = xr.open_zarr(out, consolidated=None).attrs
    except Exception as err:  # not a zarr store at all
        raise ValueError(f"{out}: exists and is not a zarr store made by this recipe ({err}); choose another --out") from err
    want = cfg.fingerprint(n_times)
    got = json.loads(attrs.get(RUN_ATTR, "{}"))
    for key, value in want.items():
        if got.get(key) != value:
            raise ValueError(f"{out}: exists and was made by another run ({key} is {got.get(key)!r}, this run has "
                             f"{value!r}); choose another --out or delete it")
    return True


def chunk_bounds(n_times: int, time_chunk: int) -> list[tuple[int, int]]:
    """(start, stop) of each time chunk."""
    return [(a, min(a + time_chunk, n_times)) for a in range(0, n_times, time_chunk)]


def _lazy(cfg: ArchiveConfig, src: xr.Dataset) -> xr.Dataset:
    return downscale(src, cfg.checkpoint, members=cfg.members, steps=cfg.steps, seed=cfg.seed, conserve=cfg.conserve,
                     coarse_gaps=cfg.coarse_gaps, time_chunk=cfg.time_chunk)


def create_store(cfg: ArchiveConfig, src: xr.Dataset) -> None:
    """Lay the output out (metadata, coordinates, the run's fingerprint and the chunk flags)."""
    out = _lazy(cfg, src)
    out.attrs[RUN_ATTR] = json.dumps(cfg.fingerprint(src.sizes["time"]))
    n = len(chunk_bounds(src.sizes["time"], cfg.time_chunk))
    out["chunk_done"] = ("chunk", np.zeros(n, np.int8), {"long_name": "time chunk written (1)"})
    out["chunk_done"].encoding = {"chunks": (1,)}
    out.to_zarr(cfg.out, mode="w-", compute=False, consolidated=True)


def pending_chunks(cfg: ArchiveConfig) -> list[int]:
    """Indices of the time chunks whose flag is not set."""
    done = xr.open_zarr(cfg.out, consolidated=None)["chunk_done"].values
    return [int(i) for i in np.flatnonzero(done == 0)]


def write_chunk(cfg: ArchiveConfig, index: int) -> int:
    """Downscale time chunk `index` and write it into its region of the store, then set its flag."""
    src = _open(cfg)
    start, stop = chunk_bounds(src.sizes["time"], cfg.time_chunk)[index]
    part = _lazy(cfg, src.isel(time=slice(start, stop))).compute(scheduler="synchronous")
    part = part.drop_vars(["realization", "latitude", "longitude"])
    for name in part.variables:
        part[name].encoding = {}
    part.attrs = {}
    part.to_zarr(cfg.out, region={"time": slice(start, stop)}, mode="r+", consolidated=False)
    flag = xr.Dataset({"chunk_done": ("chunk", np.ones(1, np.int8))})
    flag.to_zarr(cfg.out, region={"chunk": slice(index, index + 1)}, mode="r+", consolidated=False)
    return index


def _client(cfg: ArchiveConfig):
    """A client of the cluster at `cfg.scheduler`, or of a new LocalCluster of `cfg.workers`
    single-threaded processes, whose allocators are tuned with `cfg.retain_freed_memory`
    (`sciffusion.core.memory`; never on a cluster this run did not start)."""
    from distributed import Client, LocalCluster

    if cfg.scheduler:
        return Client(cfg.scheduler), None
    cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    _tune_workers(client, cfg)
    return client, cluster


def _tune_workers(client, cfg: ArchiveConfig) -> None:
    """Run `retain_freed_memory` on every worker of `client` when `cfg.retain_freed_memory`."""
    from sciffusion.core.memory import retain_freed_memory

    if cfg.retain_freed_memory:
        client.run(retain_freed_memory)


def run_archive(cfg: ArchiveConfig, log: Callable[[str], None] = print) -> Path:
    """Downscale every time of `cfg.input` into the zarr store `cfg.out` (see the module docstring)."""
    from tqdm.auto import tqdm

    if not str(cfg.out).rstrip("/").endswith(".zarr"):
        raise ValueError(f"--out {cfg.out}: an archive run writes a zarr store (a path ending in .zarr)")
    if cfg.time_chunk < 1:
        raise ValueError(f"time chunk must be at least 1, got {cfg.time_chunk}")
    src = _open(cfg)
    load_model(cfg.checkpoint).check_input(src, fine=False)
    resume = check_store(cfg, src.sizes["time"])
    if not resume:
        create_store(cfg, src)
    todo = pending_chunks(cfg)
    total = len(chunk_bounds(src.sizes["time"], cfg.time_chunk))
    log(f"{cfg.out}: {'resuming, ' if resume else ''}{len(todo)} of {total} time chunks of {cfg.time_chunk} to write")
    bar = tqdm(total=len(todo), desc="time chunks", unit="chunk", disable=not cfg.progress)
    if cfg.workers is None and cfg.scheduler is None:
        for i in todo:
            write_chunk(cfg, i)
            bar.update()
    else:
        from distributed import as_completed

        client, cluster = _client(cfg)
        try:
            futures = client.map(write_chunk, [cfg] * len(todo), todo, pure=False)
            for fut in as_completed(futures):
                fut.result()
                bar.update()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    bar.close()
    return Path(cfg.out)
