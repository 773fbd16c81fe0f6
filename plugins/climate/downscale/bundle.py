"""`Downscaler`: a trained downscaling model with everything needed to apply it to new coarse fields."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from sciffusion.plugins.climate.downscale import checkpoint
from sciffusion.plugins.climate.downscale.config import DownscaleConfig, n_condition_channels
from sciffusion.plugins.climate.downscale.grids import Grids
from sciffusion.plugins.climate.downscale.statistics import residual_features
from sciffusion.plugins.climate.grid import (
    fill_by_neighbours,
    match_block_means,
    scale_to_block_means,
)
from sciffusion.plugins.climate.io import check_grid
from sciffusion.plugins.climate.model import ClimateUNet, NetworkEnsemble, UNetConfig
from sciffusion.plugins.climate.normalise import Normaliser
from sciffusion.plugins.climate.solar import has_clock_times


class Downscaler:
    """A trained downscaling model with everything needed to apply it to new coarse fields.

    It holds the config, the normaliser, the grids, the residual statistics (solar coefficients
    `coef` (C, P, H, W) of the mean, std `std` (C, H, W), which variables are `diurnal`), the
    network (a `NetworkEnsemble` of `cfg.networks` of them when more than one) and the cells
    never observed in training (`missing`, NaN in every output)."""

    def __init__(self, cfg: DownscaleConfig, norm: Normaliser, grids: Grids, coef: np.ndarray,
                 std: np.ndarray, diurnal: np.ndarray, model: ClimateUNet | NetworkEnsemble | None = None,
                 missing: np.ndarray | None = None) -> None:
        self.cfg, self.norm, self.grids = cfg, norm, grids
        # (C, H, W) cells never observed in the training times: NaN in every output
        self.missing = None if missing is None or not np.any(missing) else np.asarray(missing, bool)
        self.coef, self.std = coef.astype(np.float32), std.astype(np.float32)
        self.diurnal = np.asarray(diurnal, bool)
        self.model = model if model is not None else self.new_model(cfg, grids.periodic)

    @staticmethod
    def new_model(cfg: DownscaleConfig, periodic: bool) -> ClimateUNet | NetworkEnsemble:
        """A freshly initialised network of the config, or `cfg.networks` of them (`NetworkEnsemble`)."""
        ucfg = UNetConfig(len(cfg.variables), n_condition_channels(cfg), cfg.widths, periodic=periodic)
        if cfg.networks == 1:
            return ClimateUNet(ucfg)
        return NetworkEnsemble([ClimateUNet(ucfg) for _ in range(cfg.networks)])

    def process(self):
        """The diffusion process of the config's schedule and prediction."""
        from sciffusion.core import DiffusionProcess, get_schedule

        return DiffusionProcess(get_schedule(self.cfg.schedule), prediction=self.cfg.prediction)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write the bundle atomically (`checkpoint.to_state`); loads with torch.load(weights_only=True)."""
        from sciffusion.core.train.checkpoint import atomic_torch_save

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(checkpoint.to_state(self, extra), path)
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str = "cpu") -> Downscaler:
        """Read a bundle written by `save` (weights only, no pickled code); the network is on the CPU."""
        return cls(**checkpoint.from_state(checkpoint.read_state(path, map_location)))

    def check_input(self, ds: xr.Dataset, fine: bool = True) -> None:
        """Raise if `ds` lacks the model's variables or is on another grid (fine or coarse)."""
        missing = [v for v in self.cfg.variables if v not in ds.data_vars]
        if missing:
            raise KeyError(f"variable(s) {missing} needed by the checkpoint not found; available: {sorted(map(str, ds.data_vars))}")
        if fine:
            check_grid(ds, self.grids.lat, self.grids.lon)
        else:
            check_grid(ds, self.grids.lat_c, self.grids.lon_c, what="checkpoint's coarse grid")

    # ------------------------------------------------------------------ sampling
    def features(self, times: np.ndarray | None, n: int) -> np.ndarray:
        """Solar features f_t (n, P, H, W) for n times (`times` datetime64 UTC or None); raises when the
        model needs the time of day (a diurnal residual mean or solar channels) and `times` lacks it."""
        if self.diurnal.any() or self.cfg.solar_channels:
            names = [v for v, d in zip(self.cfg.variables, self.diurnal) if d]
            what = f"the residual mean of {names}" if names else "the network's solar channels"
            if times is None or not has_clock_times(times):
                raise ValueError(f"{what} follows the time of day: pass times= "
                                 "(datetime64, UTC) for the fields to downscale")
            if len(times) != n:
                raise ValueError(f"got {len(times)} times for {n} fields")
        return residual_features(times, self.grids.lat, self.grids.lon, n)

    def match_coarse(self, fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """Fine fields (n, C, H, W) corrected so that C(x) = X, the coarse fields (n, C, h, w), exactly:
        a smooth additive correction (`match_block_means`) for variables on an affine scale, a
        per-block rescaling (`scale_to_block_means`, mass-conserving) for the non-negative (log1p) ones."""
        out = np.array(fine, dtype=np.float64)
        for c, v in enumerate(self.norm.variables):
            if v.transform == "log1p":
                out[:, c] = scale_to_block_means(out[:, c], coarse[:, c], self.cfg.factor, self.grids.lat)
            else:
                out[:, c] = match_block_means(out[:, c], coarse[:, c], self.cfg.factor, self.grids.lat,
                                              self.grids.block_mean_correction)
        return out

    def bicubic_z(self, coarse: np.ndarray) -> np.ndarray:
        """B(z_coarse) for physical coarse fields (T, C, h, w) without gaps -> normalised (T, C, H, W)."""
        return self.grids.up(self.norm.forward(coarse.astype(np.float64)))

    def fill_coarse(self, coarse: np.ndarray, coarse_gaps: str = "infill") -> np.ndarray:
        """Coarse fields (T, C, h, w) with their missing cells filled from the neighbouring blocks
        (`grid.fill_by_neighbours`; the model then samples the fine cells under them), or, with
        `coarse_gaps="report"`, a ValueError naming the variable and how many cells are missing."""
        if coarse_gaps not in ("infill", "report"):
            raise ValueError(f"coarse_gaps must be 'infill' or 'report', got {coarse_gaps!r}")
        gaps = ~np.isfinite(coarse)
        if not gaps.any():
            return coarse
        if coarse_gaps == "report":
            c = int(np.argwhere(gaps.any(axis=(0, 2, 3)))[0, 0])
            t = int(np.argwhere(gaps[:, c].any(axis=(-2, -1)))[0, 0])
            raise ValueError(f"coarse input: variable '{self.cfg.variables[c]}' has {int(gaps[:, c].sum())} missing "
                             f"cells (first at time index {t}); infill them with --coarse-gaps infill")
        return fill_by_neighbours(coarse, periodic=self.grids.periodic)


    def sample(self, coarse: np.ndarray, members: int = 8, steps: int = 10, method: str | None = None,
               seed: int = 0, batch_size: int = 8, device: str | None = None,
               known: np.ndarray | None = None, mask: np.ndarray | None = None,
               progress: bool = False, times: np.ndarray | None = None, conserve: bool = True,
               coarse_gaps: str = "infill", time_seeds: Sequence[int] | None = None,
               precision: str = "auto") -> np.ndarray:
        """Ensemble of fine fields (member, T, C, H, W) in physical units from coarse (T, C, h, w).

        A member is z = B + m + s x0 in normalised units, with x0 drawn by the core sampler
        conditioned on [B, m, s/<s>, sin(latitude)] (`sampling.sample_ensemble`); member k by
        network k mod N of a model with N networks (`NetworkEnsemble`).
        `conserve`: every member's area-weighted block means equal the coarse fields (`match_coarse`);
        without it, members are the sampler's output (non-negative variables capped per cell by
        their block's total). Missing coarse cells are filled or reported (`fill_coarse`); cells
        never observed in training (`missing`) are NaN.

        `times` (T,) datetime64 UTC: needed when a variable's residual mean follows the time of
        day (`diurnal`). `known`/`mask` (T, C, H, W), physical units and 1 where known, turn
        sampling into inpainting (core `sample(known=, mask=)`): observed cells are kept, the
        rest is drawn. `time_seeds` (T,): draw each time's members from its own seed.
        `precision`: the UNet's autocast (`core.devices.autocast_dtype`; `auto` is fp32 on the CPU).
        """
        from sciffusion.plugins.climate.downscale.sampling import SamplingOptions, sample_ensemble

        opts = SamplingOptions(members=members, steps=steps, method=method, seed=seed, batch_size=batch_size,
                               device=device, progress=progress, conserve=conserve, coarse_gaps=coarse_gaps,
                               time_seeds=time_seeds, precision=precision)
        return sample_ensemble(self, coarse, opts, times=times, known=known, mask=mask)
