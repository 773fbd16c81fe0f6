"""Per-variable normalisation, fitted on training times and stored with the model.

    z = (T(x) - mu) / s,   T(x) = x                     for most variables,
                           T(x) = log(1 + x / eps)      for precipitation (x >= 0),

with mu, s the latitude-weighted mean and standard deviation of T(x) over the training
times. The statistics are a frozen dataclass that round-trips through JSON, so a checkpoint
carries exactly the transform it was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from sciffusion.core.config import JsonConfig
from sciffusion.plugins.climate.grid import lat_weights

PRECIP_NAMES = ("tp", "pr", "precip", "precipitation", "tprate", "mtpr", "prcp", "rain")


def is_precipitation(name: str, attrs: dict | None = None) -> bool:
    """True for precipitation by short name or CF standard_name (e.g. 'precipitation_flux')."""
    std = str((attrs or {}).get("standard_name", ""))
    return name.lower() in PRECIP_NAMES or "precipitation" in std


@dataclass(frozen=True)
class VariableStats(JsonConfig):
    """Normalisation of one variable: transform ('none' | 'log1p'), its scale eps, mean and std."""

    name: str
    mean: float
    std: float
    transform: str = "none"
    eps: float = 1.0
    units: str = ""


@dataclass(frozen=True)
class Normaliser(JsonConfig):
    """Normalisation of several variables (channel order = `names`)."""

    variables: tuple[VariableStats, ...]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variables]

    def _coeffs(self, x, channel_axis: int):
        shape = [1] * x.ndim
        shape[channel_axis] = len(self.variables)
        mean = np.array([v.mean for v in self.variables]).reshape(shape)
        std = np.array([v.std for v in self.variables]).reshape(shape)
        if isinstance(x, torch.Tensor):
            return torch.as_tensor(mean, dtype=x.dtype, device=x.device), torch.as_tensor(std, dtype=x.dtype, device=x.device)
        return mean.astype(x.dtype), std.astype(x.dtype)

    def _select(self, x, c: int, channel_axis: int):
        return x.select(channel_axis, c) if isinstance(x, torch.Tensor) else np.take(x, c, axis=channel_axis)

    def forward(self, x, channel_axis: int = -3):
        """z = (T(x) - mu) / s for an array/tensor with channels on `channel_axis`."""
        y = self.transform(x, channel_axis)
        mean, std = self._coeffs(y, channel_axis)
        return (y - mean) / std

    def transform(self, x, channel_axis: int = -3):
        """Apply T per channel (log1p for precipitation, identity otherwise)."""
        parts = []
        for c, v in enumerate(self.variables):
            xc = self._select(x, c, channel_axis)
            if v.transform == "log1p":
                xc = torch.log1p(torch.clamp(xc, min=0) / v.eps) if isinstance(xc, torch.Tensor) else np.log1p(np.clip(xc, 0, None) / v.eps)
            parts.append(xc)
        return torch.stack(parts, channel_axis) if isinstance(x, torch.Tensor) else np.stack(parts, channel_axis)

    def inverse(self, z, channel_axis: int = -3):
        """x = T^{-1}(mu + s z); precipitation comes back non-negative."""
        mean, std = self._coeffs(z, channel_axis)
        y = z * std + mean
        parts = []
        for c, v in enumerate(self.variables):
            yc = self._select(y, c, channel_axis)
            if v.transform == "log1p":
                yc = v.eps * (torch.expm1(yc).clamp(min=0) if isinstance(yc, torch.Tensor) else np.clip(np.expm1(yc), 0, None))
            parts.append(yc)
        return torch.stack(parts, channel_axis) if isinstance(z, torch.Tensor) else np.stack(parts, channel_axis)


def fit_normaliser(
    ds: xr.Dataset, variables: Sequence[str], times: Sequence[int] | slice, precip_eps: float = 1e-4
) -> Normaliser:
    """Fit latitude-weighted mean/std of T(x) for each variable over the training `times`.

    Computed with dask reductions, so only the training chunks are read. `precip_eps` is the
    scale of the log transform in the variable's units (1e-4 m = 0.1 mm for ERA5 `tp`).
    """
    sub = ds.isel(time=times)
    w = xr.DataArray(lat_weights(ds["latitude"].values), dims="latitude")
    stats = []
    for name in variables:
        attrs = dict(ds[name].attrs)
        da = sub[name].astype(np.float64)
        transform, eps = "none", 1.0
        if is_precipitation(name, attrs):
            transform, eps = "log1p", float(precip_eps)
            da = np.log1p(da.clip(min=0) / eps)
        wb = w.broadcast_like(da).where(da.notnull())
        mean = float((da * wb).sum() / wb.sum())
        var = float((((da - mean) ** 2) * wb).sum() / wb.sum())
        if not np.isfinite(mean):
            raise ValueError(f"variable '{name}': no finite values in the training times")
        std = float(np.sqrt(var)) if var > 0 else 1.0
        stats.append(VariableStats(name, mean, std, transform, eps, str(attrs.get("units", ""))))
    return Normaliser(tuple(stats))
