"""Gap filling with a diffusion model trained for it, on top of optimal interpolation (kriging).

Each variable is standardised per cell, z = (x - m) / s (m, s the mean and standard deviation of the
training times, `kriging.Kriging`). For a field with missing cells G and observed cells O, simple
kriging gives the Gaussian conditional mean mu(z) and standard deviation sigma(z) of every missing
cell from its nearest observed cells (mu = z and sigma = 0 on O). The network learns the law of the
standardised kriging residual

    r = (z - mu) / max(sigma, floor)    on G (0 on O),

conditioned on the channels [mu (C), sigma (C), M (C), sin(latitude)] (M = 1 where missing): 3C + 1
channels, the field's observed cells and mask carried by mu and M. A member is

    x = m + s (mu + sigma r),  r drawn by the core sampler,  and x = the input exactly on O,

so the ensemble spread is sigma times the spread of r: zero at observations and growing into the
gap with sigma, and where the network learns nothing beyond r ~ N(0, 1) the fill is kriging's
predictive law. The network is the climate UNet (longitude-periodic on a global grid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from sciffusion.core.config import JsonConfig
from sciffusion.plugins.climate.io import ERA5_CREDIT, check_grid
from sciffusion.plugins.climate.kriging import Covariance, Kriging
from sciffusion.plugins.climate.model import ClimateUNet, UNetConfig

FORMAT = "sciffusion-climate-gapfill/1"
DOWNSCALE_FORMATS = ("sciffusion-climate-downscale/1", "sciffusion-climate-downscale/2")


@dataclass(frozen=True)
class GapFillConfig(JsonConfig):
    """What a gap-filling model is: variables, network, diffusion, kriging neighbours, training split."""

    variables: tuple[str, ...]
    widths: tuple[int, ...] = (24, 48, 96)
    schedule: str = "cosine"
    prediction: str = "v"
    neighbours: int = 32
    sd_floor: float = 0.05
    strip_height: int = 64
    train_times: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""


def n_condition_channels(n_variables: int) -> int:
    """3C + 1: kriging mean, kriging standard deviation, missing mask (per variable), sin(latitude)."""
    return 3 * n_variables + 1


def condition(mu: np.ndarray, sigma: np.ndarray, missing: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Channels [mu, sigma, M, sin(lat)] (..., 3C+1, H, W) float32 from (..., C, H, W) arrays; `lat` (H,)."""
    sinlat = np.broadcast_to(np.sin(np.deg2rad(lat))[:, None], mu.shape[-2:])
    sinlat = np.broadcast_to(sinlat, (*mu.shape[:-3], 1, *mu.shape[-2:]))
    return np.concatenate([mu, sigma, missing.astype(mu.dtype), sinlat], axis=-3).astype(np.float32)


def residual_target(z: np.ndarray, mu: np.ndarray, sigma: np.ndarray, missing: np.ndarray,
                    floor: float) -> np.ndarray:
    """r = (z - mu) / max(sigma, floor) where missing and z finite, 0 elsewhere (float32)."""
    ok = missing & np.isfinite(z)
    r = np.where(ok, (np.where(ok, z, 0.0) - mu) / np.maximum(sigma, floor), 0.0)
    return r.astype(np.float32)


def _kriging_state(k: Kriging) -> dict:
    return {"kriging_mean": torch.tensor(np.array(k.mean, np.float32)),
            "kriging_scale": torch.tensor(np.array(k.scale, np.float32)),
            "kriging_covariances": json.dumps([vars(c) for c in k.covariances]),
            "kriging_nonneg": json.dumps(list(k.nonneg)),
            "latitude": torch.tensor(np.array(k.lat, np.float64)),
            "longitude": torch.tensor(np.array(k.lon, np.float64))}


def _kriging_from_state(state: dict) -> Kriging:
    covs = tuple(Covariance(**c) for c in json.loads(state["kriging_covariances"]))
    return Kriging(state["latitude"].numpy().astype(np.float64), state["longitude"].numpy().astype(np.float64),
                   state["kriging_mean"].numpy().astype(np.float64), state["kriging_scale"].numpy().astype(np.float64),
                   covs, tuple(json.loads(state["kriging_nonneg"])))


def read_state(path: str | Path) -> dict:
    """The state dict of a gap-filling checkpoint; one-line errors for other files and for a
    downscaling checkpoint given in its place."""
    from sciffusion.core.train.checkpoint import read_torch_file

    state = read_torch_file(path, "checkpoint")
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt in DOWNSCALE_FORMATS:
        raise ValueError(f"{path} is a downscaling checkpoint; gap filling (--mode infill) needs a gap-filling "
                         f"checkpoint (format {FORMAT}), or use the downscaling model's inpainting with --infill-method repaint")
    if fmt != FORMAT:
        raise ValueError(f"{path} is not a climate gap-filling checkpoint (format {FORMAT})")
    return state


def is_gapfill_checkpoint(path: str | Path | None) -> bool:
    """Whether `path` is a readable gap-filling checkpoint (False for any other or missing file)."""
    try:
        return path is not None and read_state(path) is not None
    except Exception:  # any unreadable or other file is simply not one
        return False


class GapFiller:
    """A trained gap-filling model: config, the kriging it corrects (fitted on the training times)
    and the network (see the module docstring)."""

    def __init__(self, cfg: GapFillConfig, kriging: Kriging, model: ClimateUNet | None = None,
                 periodic: bool = True) -> None:
        self.cfg, self.kriging = cfg, kriging
        c = len(cfg.variables)
        self.model = model if model is not None else ClimateUNet(
            UNetConfig(c, n_condition_channels(c), cfg.widths, periodic=periodic))

    def process(self):
        """The diffusion process of the config's schedule and prediction."""
        from sciffusion.core import DiffusionProcess, get_schedule

        return DiffusionProcess(get_schedule(self.cfg.schedule), prediction=self.cfg.prediction)

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write the model atomically; it loads with torch.load(weights_only=True)."""
        from sciffusion.core.train.checkpoint import atomic_torch_save

        state = {"format": FORMAT, "config": json.dumps(self.cfg.to_dict()),
                 "unet": json.dumps(self.model.cfg.to_dict()),
                 "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                 **_kriging_state(self.kriging), "extra": json.dumps(extra or {}),
                 "credit": ERA5_CREDIT if "ERA5" in self.cfg.source else self.cfg.source}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> GapFiller:
        """Read a model written by `save` (weights only); the network is on the CPU in eval mode."""
        state = read_state(path)
        model = ClimateUNet(UNetConfig.from_dict(json.loads(state["unet"])))
        model.load_state_dict(state["model"])
        model.eval()
        return cls(GapFillConfig.from_dict(json.loads(state["config"])), _kriging_from_state(state), model)

    def check_input(self, ds: xr.Dataset) -> None:
        """Raise if `ds` lacks the model's variables or is on another grid."""
        missing = [v for v in self.cfg.variables if v not in ds.data_vars]
        if missing:
            raise KeyError(f"variable(s) {missing} needed by the checkpoint not found; available: {sorted(map(str, ds.data_vars))}")
        check_grid(ds, self.kriging.lat, self.kriging.lon)

    def kriged(self, fields: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mu, sigma, missing) (T, C, H, W) in standardised units for physical fields with NaN gaps."""
        check_fields(fields, self.cfg.variables)
        mean, var = self.kriging.predict(fields, neighbours=self.cfg.neighbours)
        mu = (mean - self.kriging.mean) / self.kriging.scale
        sigma = np.sqrt(var) / self.kriging.scale
        return mu, sigma, ~np.isfinite(fields)

    def sample(self, fields: np.ndarray, members: int = 8, steps: int = 10, method: str | None = None, seed: int = 0,
               batch_size: int = 8, device: str | None = None, progress: bool = False) -> np.ndarray:
        """Ensemble (member, T, C, H, W) equal to `fields` (T, C, H, W) where finite, drawn in the gaps:
        x = m + s (mu + sigma r) with r from the core `sample` (`method`, None: the core's default; `steps`) conditioned on
        [mu, sigma, M, sin(lat)]; non-negative variables are clipped at 0."""
        from sciffusion.core import sample
        from sciffusion.plugins import core_sampler

        method = core_sampler(method)
        fields = np.asarray(fields)
        mu, sigma, missing = self.kriged(fields)
        cond = torch.from_numpy(condition(mu, sigma, missing, self.kriging.lat))
        dev = torch.device(device or "cpu")
        model = self.model.to(dev).eval()
        process = self.process()
        t_n, c_n = fields.shape[:2]
        pairs = [(k, t) for t in range(t_n) for k in range(members)]   # every (member, time), batched together
        r = np.zeros((members, *fields.shape), np.float32)
        gen = torch.Generator(device=dev).manual_seed(seed)
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s : s + batch_size]
            with torch.no_grad():
                out = sample(model, process, (len(chunk), c_n, *fields.shape[-2:]), method=method, steps=steps,
                             generator=gen, cond=cond[[t for _, t in chunk]].to(dev), progress=progress, device=dev)
            out = out.float().cpu().numpy()
            for i, (k, t) in enumerate(chunk):
                r[k, t] = out[i]
        z = mu[None] + sigma[None] * r
        x = self.kriging.mean + self.kriging.scale * z
        for c, clip in enumerate(self.kriging.nonneg):
            if clip:
                x[:, :, c] = np.maximum(x[:, :, c], 0.0)
        return np.where(missing[None], x, fields[None]).astype(np.result_type(fields.dtype, np.float32))


def check_fields(fields: np.ndarray, variables) -> None:
    """Raise a one-line error naming the variable and time of a field with no observed cell."""
    empty = ~np.isfinite(fields).any(axis=(-2, -1))
    if empty.any():
        t, c = np.argwhere(empty)[0]
        raise ValueError(f"variable '{variables[c]}' has no observed cell at time index {t}: nothing to fill from")


def fill_gaps(ds: xr.Dataset, model: GapFiller | str | Path, members: int = 8, steps: int = 10, seed: int = 0,
              batch_size: int = 8, device: str | None = None, progress: bool = False) -> xr.Dataset:
    """Fill the NaN cells of `ds` (time, latitude, longitude): an ensemble Dataset with a leading
    `member` dimension, equal to `ds` bit for bit where it is finite.

    `model`: a `GapFiller` or its checkpoint path (the trained model), or a `Downscaler` (the
    downscaling model's RePaint-style inpainting, `infill.fill_gaps`).
    Raises when a field has no observed cell or when `ds` has no missing cell."""
    from sciffusion.plugins.climate.downscale import Downscaler
    from sciffusion.plugins.climate.infill import fill_gaps as repaint_fill

    if isinstance(model, str | Path):
        model = GapFiller.load(model)
    variables = tuple(model.cfg.variables)
    model.check_input(ds)
    dtype = np.result_type(*[ds[v].dtype for v in variables])
    fields = np.stack([np.asarray(ds[v].transpose("time", "latitude", "longitude").values, dtype) for v in variables], axis=1)
    if np.isfinite(fields).all():
        raise ValueError("the dataset has no missing values: nothing to fill")
    check_fields(fields, variables)
    if isinstance(model, Downscaler):
        ens = repaint_fill(model, fields, members=members, steps=steps, seed=seed, batch_size=batch_size,
                           device=device, times=ds["time"].values)
    else:
        ens = model.sample(fields, members=members, steps=steps, seed=seed, batch_size=batch_size, device=device,
                           progress=progress)
    out = xr.Dataset(coords={"member": np.arange(members), **{k: ds[k] for k in ("time", "latitude", "longitude")}})
    for c, v in enumerate(variables):
        out[v] = (("member", "time", "latitude", "longitude"), ens[:, :, c].astype(ds[v].dtype, copy=False))
        out[v].attrs = dict(ds[v].attrs)
    out.attrs = {**ds.attrs, "history": f"gaps filled by sciffusion ({members} members)"}
    return out
