"""xarray in, xarray out: `downscale(ds, model)` on coarse fields of any length, lazily.

    out = downscale(xr.open_zarr("coarse.zarr"), "model.pt", members=4)   # nothing computed yet
    out.to_zarr("fine.zarr")                                              # streams, chunk by chunk

The coarse dataset is split along its time chunks; each chunk becomes one `xr.map_blocks` task
that loads its coarse fields, samples the ensemble and returns (realization, time, latitude,
longitude) for those times only, so memory is bounded by one chunk whatever the length. Each time
draws its members from its own seed, `time_seed(seed, t)`, so the output does not depend on the
chunking, the scheduler or the number of workers. A model given as a path is loaded once per
process (`load_model`) and every task of that process shares it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from sciffusion.plugins import core_sampler
from sciffusion.plugins.climate.downscale import Downscaler
from sciffusion.plugins.climate.io import open_fields
from sciffusion.plugins.climate.output import global_attrs
from sciffusion.plugins.climate.solar import has_clock_times

DIMS = ("realization", "time", "latitude", "longitude")
CARRIED_ENCODING = ("dtype", "_FillValue", "units", "calendar")
_MODELS: dict[tuple[str, float], Downscaler] = {}
_LOCK = threading.Lock()


def load_model(path: str | os.PathLike) -> Downscaler:
    """The checkpoint at `path`, loaded once per process (cached by path and modification time)."""
    path = Path(path).resolve()
    key = (str(path), path.stat().st_mtime)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = Downscaler.load(path)
        return _MODELS[key]


def time_seed(seed: int, time) -> int:
    """Seed of one time's members: a hash of (seed, the time in ns since 1970, or its value)."""
    value = np.asarray(time)
    as_int = int(value.astype("datetime64[ns]").astype(np.int64)) if value.dtype.kind == "M" else int(np.round(float(value) * 1e6))
    return int(np.random.SeedSequence([int(seed), as_int % (2**63)]).generate_state(1, np.uint64)[0] % (2**63))


def _resolve(model: Downscaler | str | os.PathLike) -> Downscaler:
    return model if isinstance(model, Downscaler) else load_model(model)


def _block(coarse: xr.Dataset, model, members: int, steps: int, seed: int, conserve: bool,
           coarse_gaps: str, method: str, batch_size: int, device: str | None) -> xr.Dataset:
    """One time chunk: (time, latitude, longitude) coarse fields -> the fine ensemble Dataset."""
    bundle = _resolve(model)
    variables = list(bundle.cfg.variables)
    values = np.stack([np.asarray(coarse[v].values, np.float64) for v in variables], axis=1)
    times = coarse["time"].values
    ens = bundle.sample(values, members=members, steps=steps, seed=seed, method=method, batch_size=batch_size,
                        device=device, times=times if has_clock_times(times) else None, conserve=conserve,
                        coarse_gaps=coarse_gaps, time_seeds=[time_seed(seed, t) for t in times])
    coords = {"realization": np.arange(members, dtype=np.int32), "time": times,
              "latitude": bundle.grids.lat, "longitude": bundle.grids.lon}
    return xr.Dataset({v: (DIMS, ens[:, :, i]) for i, v in enumerate(variables)}, coords=coords)


def _template(coarse: xr.Dataset, bundle: Downscaler, members: int) -> xr.Dataset:
    """A lazy (dask) output of the right shape, chunks, coordinates and attributes."""
    h, w = len(bundle.grids.lat), len(bundle.grids.lon)
    chunks = ((members,), coarse.chunks["time"], (h,), (w,))
    data = {v: (DIMS, da.zeros((members, coarse.sizes["time"], h, w), chunks=chunks, dtype=np.float32),
                dict(coarse[v].attrs)) for v in bundle.cfg.variables}
    coords = {
        "realization": ("realization", np.arange(members, dtype=np.int32), {"long_name": "ensemble member", "standard_name": "realization"}),
        "time": ("time", coarse["time"].values, dict(coarse["time"].attrs)),
        "latitude": ("latitude", bundle.grids.lat, dict(coarse["latitude"].attrs)),
        "longitude": ("longitude", bundle.grids.lon, dict(coarse["longitude"].attrs)),
    }
    return xr.Dataset(data, coords=coords)


def _carry_encoding(out: xr.Dataset, ds: xr.Dataset) -> None:
    """Copy the input's storage encodings that still apply (float dtype, fill value, time units)."""
    for name in out.variables:
        if name not in ds.variables:
            continue
        enc = {k: v for k, v in ds[name].encoding.items() if k in CARRIED_ENCODING}
        if "dtype" in enc and np.dtype(enc["dtype"]).kind != "f":
            enc.pop("dtype")
            enc.pop("_FillValue", None)   # a packed integer's fill value means nothing for floats
        out[name].encoding = enc


def downscale(ds: xr.Dataset, model: Downscaler | str | os.PathLike, members: int = 8, steps: int = 10,
              seed: int = 0, conserve: bool = True, coarse_gaps: str = "infill", method: str | None = None,
              batch_size: int = 8, device: str | None = None, time_chunk: int | None = None) -> xr.Dataset:
    """Fine-grid ensemble (realization, time, latitude, longitude) of the coarse fields in `ds`.

    Lazy on dask-backed input: one `xr.map_blocks` task per time chunk of `ds` (or of
    `time_chunk` times when given); compute, `.to_zarr` or `.to_netcdf` runs them. Variables,
    their attributes, the coordinates' attributes, the global attributes (with `history`,
    `Conventions` and `source` added) and the storage encodings that still apply are carried over.
    The coarse grid must be the checkpoint's (`Downscaler.check_input`); latitude comes out in the
    order it went in. Members follow `Downscaler.sample` (conserving, NaN where the model never
    saw data, missing coarse cells handled by `coarse_gaps`); each time's draws depend only on
    (`seed`, its time), not on the chunking.
    """
    bundle = _resolve(model)
    method = core_sampler(method)
    coarse = open_fields(ds, list(bundle.cfg.variables))
    bundle.check_input(coarse, fine=False)
    if time_chunk is not None:
        coarse = coarse.chunk({"time": time_chunk})
    coarse = coarse.chunk({"latitude": -1, "longitude": -1})
    kwargs = {"model": model if not isinstance(model, (str, os.PathLike)) else str(Path(model).resolve()),
              "members": members, "steps": steps, "seed": seed, "conserve": conserve, "coarse_gaps": coarse_gaps,
              "method": method, "batch_size": batch_size, "device": device}
    out = xr.map_blocks(_block, coarse, kwargs=kwargs, template=_template(coarse, bundle, members))
    for v in bundle.cfg.variables:
        out[v].attrs = dict(coarse[v].attrs)
    out.attrs = global_attrs(ds, f"sciffusion climate downscale ({bundle.cfg.source or 'checkpoint'})",
                             history=f"sciffusion.plugins.climate.downscale(members={members}, steps={steps}, "
                                     f"sampler={method}, seed={seed})")
    _carry_encoding(out, ds)
    if _latitude_decreases(ds):
        out = out.isel(latitude=slice(None, None, -1))
    return out


def _latitude_decreases(ds: xr.Dataset) -> bool:
    for name in ("latitude", "lat"):
        if name in ds.coords and ds[name].ndim == 1 and ds[name].size > 1:
            return bool(ds[name].values[1] < ds[name].values[0])
    return False
