"""The checkpoint format of a downscaling model: plain tensors and JSON strings, read with
`torch.load(weights_only=True)`, so loading runs no pickled code.

Format 2 stores the residual mean as solar coefficients `resid_coef` (C, P, H, W); format 1
(read, never written) stored the per-cell mean `resid_mean` (C, H, W), which is the intercept
of the same fit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from sciffusion.core.train.checkpoint import read_torch_file
from sciffusion.plugins.climate.downscale.config import DownscaleConfig
from sciffusion.plugins.climate.downscale.grids import Grids
from sciffusion.plugins.climate.io import ERA5_CREDIT
from sciffusion.plugins.climate.model import ClimateUNet, NetworkEnsemble, UNetConfig
from sciffusion.plugins.climate.normalise import Normaliser
from sciffusion.plugins.climate.solar import N_FEATURES

if TYPE_CHECKING:
    from sciffusion.plugins.climate.downscale.bundle import Downscaler

FORMAT = "sciffusion-climate-downscale/2"
FORMAT_V1 = "sciffusion-climate-downscale/1"  # per-cell mean residual, read for old checkpoints


def to_state(bundle: Downscaler, extra: dict | None = None) -> dict:
    """The bundle as a dict of tensors and JSON strings (residual statistics in float16)."""
    return {
        "format": FORMAT,
        "config": json.dumps(bundle.cfg.to_dict()),
        "normaliser": bundle.norm.to_json(),
        "unet": json.dumps(bundle.model.cfg.to_dict()),
        "latitude": torch.from_numpy(bundle.grids.lat),
        "longitude": torch.from_numpy(bundle.grids.lon),
        "resid_coef": torch.from_numpy(bundle.coef).to(torch.float16),
        "resid_diurnal": torch.from_numpy(bundle.diurnal),
        "resid_std": torch.from_numpy(bundle.std).to(torch.float16),
        "model": {k: v.detach().cpu() for k, v in bundle.model.state_dict().items()},
        "credit": ERA5_CREDIT if "ERA5" in bundle.cfg.source else bundle.cfg.source,
        **({} if bundle.missing is None else {"missing": torch.from_numpy(bundle.missing)}),
        "extra": json.dumps(extra or {}),
    }


def read_state(path: str | Path, map_location: str = "cpu") -> dict:
    """The state dict in `path` (`read_torch_file`: weights only); a one-line error naming the file
    when it is missing, unreadable or not a climate downscaling checkpoint."""
    state = read_torch_file(path, "checkpoint", map_location)
    if isinstance(state, dict) and str(state.get("format", "")).startswith("sciffusion-climate-gapfill/"):
        raise ValueError(f"{path} is a gap-filling checkpoint; it fills gaps (--mode infill), it does not downscale")
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, FORMAT_V1):
        raise ValueError(f"{path} is not a climate downscaling checkpoint (format {FORMAT})")
    return state


def _array(t: torch.Tensor, dtype=np.float32) -> np.ndarray:
    """A stored tensor as a host numpy array, wherever `map_location` put it."""
    return t.detach().cpu().numpy().astype(dtype)


def _residual_mean(state: dict) -> tuple[np.ndarray, np.ndarray]:
    """(coef (C, P, H, W), diurnal (C,)); a format-1 mean becomes the intercept of the fit."""
    if state["format"] == FORMAT_V1:
        mean = _array(state["resid_mean"])
        coef = np.zeros((mean.shape[0], N_FEATURES, *mean.shape[1:]), np.float32)
        coef[:, 0] = mean
        return coef, np.zeros(mean.shape[0], bool)
    return _array(state["resid_coef"]), _array(state["resid_diurnal"], bool)


def from_state(state: dict) -> dict:
    """The `Downscaler` constructor's arguments from a state dict (the network in eval mode, on the CPU)."""
    cfg = DownscaleConfig.from_dict(json.loads(state["config"]))
    ucfg = UNetConfig.from_dict(json.loads(state["unet"]))
    model = ClimateUNet(ucfg) if cfg.networks == 1 else NetworkEnsemble([ClimateUNet(ucfg) for _ in range(cfg.networks)])
    model.load_state_dict(state["model"])
    model.eval()
    coef, diurnal = _residual_mean(state)
    return {
        "cfg": cfg,
        "norm": Normaliser.from_dict(json.loads(state["normaliser"])),
        "grids": Grids(_array(state["latitude"], np.float64), _array(state["longitude"], np.float64), cfg.factor),
        "coef": coef,
        "std": _array(state["resid_std"]),
        "diurnal": diurnal,
        "model": model,
        "missing": _array(state["missing"], bool) if "missing" in state else None,
    }
