"""Downscale a coarse file with a checkpoint (`--input`): the whole file into one netCDF, or, into
a zarr store, chunk by chunk with dask (`archive.run_archive`: resumable, on any cluster)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from sciffusion.plugins.climate import output
from sciffusion.plugins.climate.downscale import Downscaler
from sciffusion.plugins.climate.experiment import SHIPPED, ExperimentConfig, _log
from sciffusion.plugins.climate.io import load_times, open_fields


def downscale_input(cfg: ExperimentConfig) -> Path:
    """Downscale every time of a coarse `cfg.input` with a checkpoint: into the zarr store `out` when
    it ends in .zarr (`archive.run_archive`: chunked, resumable, dask), else into `out`/downscaled.nc."""
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else SHIPPED
    if str(cfg.out).rstrip("/").endswith(".zarr"):
        from sciffusion.plugins.climate.archive import ArchiveConfig, run_archive

        if not ckpt.exists():
            raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
        return run_archive(ArchiveConfig(cfg.input, cfg.out, str(ckpt), members=cfg.members, steps=cfg.steps,
                                         seed=cfg.seed, conserve=cfg.conserve, coarse_gaps=cfg.coarse_gaps,
                                         time_chunk=cfg.time_chunk, workers=cfg.workers, scheduler=cfg.scheduler,
                                         progress=not cfg.quiet, retain_freed_memory=cfg.retain_freed_memory),
                           log=lambda msg: _log(cfg, msg))
    bundle = Downscaler.load(ckpt)
    coarse_ds = open_fields(cfg.input, list(cfg.variables) or list(bundle.cfg.variables))
    bundle.check_input(coarse_ds, fine=False)
    coarse = load_times(coarse_ds, slice(None), bundle.cfg.variables)
    times = coarse_ds["time"].values if "time" in coarse_ds.coords else None
    ens = bundle.sample(coarse, members=cfg.members, steps=cfg.steps, seed=cfg.seed, device=cfg.device, times=times,
                        conserve=cfg.conserve, precision=cfg.precision)
    template = xr.Dataset(
        {v: (("time", "latitude", "longitude"), np.zeros((coarse.shape[0], len(bundle.grids.lat), len(bundle.grids.lon)), np.float32),
             dict(coarse_ds[v].attrs)) for v in bundle.cfg.variables},
        coords={"time": coarse_ds["time"].values, "latitude": ("latitude", bundle.grids.lat, dict(coarse_ds["latitude"].attrs)),
                "longitude": ("longitude", bundle.grids.lon, dict(coarse_ds["longitude"].attrs))},
        attrs=dict(coarse_ds.attrs),
    )
    result = output.ensemble_dataset(ens, template, bundle.cfg.variables, source=f"sciffusion climate downscale ({ckpt})")
    path = output.write(result, Path(cfg.out) / "downscaled.nc")
    _log(cfg, f"wrote {path}")
    return path
