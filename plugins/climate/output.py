"""Ensembles out as CF-style `xarray.Dataset` objects, written atomically to netCDF or zarr.

The output has dims (realization, time, latitude, longitude); the input's coordinates, units
and attributes are kept, and `Conventions`, `history`, `source` (and the ERA5 credit where the
data is ERA5) are added to the global attributes.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from sciffusion.plugins.climate.io import ERA5_CREDIT

CONVENTIONS = "CF-1.8"


def ensemble_dataset(
    ensemble: np.ndarray,
    template: xr.Dataset,
    variables: Sequence[str],
    source: str,
    history: str | None = None,
    extra_attrs: dict | None = None,
) -> xr.Dataset:
    """Wrap (realization, time, channel, lat, lon) values on `template`'s grid and time axis.

    `template` is the fine-grid dataset the values belong to (its coords and attrs are copied).
    """
    k, t, c, h, w = ensemble.shape
    if c != len(variables):
        raise ValueError(f"ensemble has {c} channels but {len(variables)} variable names were given")
    if (t, h, w) != (template.sizes["time"], template.sizes["latitude"], template.sizes["longitude"]):
        raise ValueError(
            f"ensemble grid (time={t}, latitude={h}, longitude={w}) does not match the template "
            f"{dict(template.sizes)}"
        )
    coords = {
        "realization": ("realization", np.arange(k, dtype=np.int32), {"long_name": "ensemble member", "standard_name": "realization"}),
    }
    for name in ("time", "latitude", "longitude"):
        coords[name] = (name, template[name].values, dict(template[name].attrs))
    data = {}
    for i, name in enumerate(variables):
        attrs = dict(template[name].attrs) if name in template else {}
        data[name] = (("realization", "time", "latitude", "longitude"), ensemble[:, :, i].astype(np.float32), attrs)
    out = xr.Dataset(data, coords=coords)
    out.attrs = global_attrs(template, source, history, extra_attrs)
    return out


def global_attrs(template: xr.Dataset, source: str, history: str | None = None,
                 extra_attrs: dict | None = None) -> dict:
    """The input's global attributes with a `history` line prepended, `Conventions`, `source`
    (ours; the input's after it) and the ERA5 credit where the input is ERA5."""
    attrs = {key: val for key, val in template.attrs.items() if isinstance(val, (str, int, float, np.number))}
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"{stamp}: {history or ' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}"
    attrs["history"] = f"{line}\n{attrs['history']}" if attrs.get("history") else line
    attrs["Conventions"] = CONVENTIONS
    prior = attrs.get("source")
    attrs["source"] = f"{source}; input: {prior}" if prior else source
    if is_era5(template):
        attrs["credit"] = ERA5_CREDIT
    attrs.update(extra_attrs or {})
    return attrs


def is_era5(ds: xr.Dataset) -> bool:
    """True when the dataset's attributes say it is ERA5 (so the credit line is required)."""
    text = " ".join(str(v) for v in ds.attrs.values()).lower()
    return "era5" in text or "ecmwf" in text


def write(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write to `.nc` (netCDF4 via h5netcdf) or `.zarr`, atomically: a temp path, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = ds.copy()
    for name in ds.variables:
        ds[name].encoding = {}
    suffix = path.suffix.lower()
    if suffix not in (".nc", ".zarr"):
        raise ValueError(f"output {path}: expected a .nc or .zarr path")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        if suffix == ".nc":
            ds.to_netcdf(tmp, engine="h5netcdf")
            os.replace(tmp, path)
        else:
            ds.to_zarr(tmp, mode="w", consolidated=True)
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return path
