"""What a downscaling model is (`DownscaleConfig`, saved with every checkpoint) and what its network sees (`condition`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sciffusion.core.config import JsonConfig
from sciffusion.plugins.climate.solar import N_FEATURES


@dataclass(frozen=True)
class DownscaleConfig(JsonConfig):
    """What a downscaling model is: variables, factor, network, diffusion, training split."""

    variables: tuple[str, ...]
    factor: int = 4
    widths: tuple[int, ...] = (24, 48, 96)
    schedule: str = "cosine"
    prediction: str = "v"
    strip_height: int = 40
    std_floor: float = 0.1
    solar_channels: bool = False
    local_slope: bool = False
    leave_out: int = 0
    networks: int = 1
    alignments: int = 1
    lat_alignments: int = 1
    loss_weights: tuple[float, ...] = ()
    train_times: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""

    def variable_weights(self) -> np.ndarray:
        """Per-variable loss weights (C,), normalised to mean 1; all 1 when `loss_weights` is empty."""
        if not self.loss_weights:
            return np.ones(len(self.variables))
        w = np.asarray(self.loss_weights, float)
        if w.shape != (len(self.variables),) or not np.all(w > 0):
            raise ValueError(f"loss_weights {self.loss_weights} must be one positive number per variable {self.variables}")
        return w / w.mean()

    def check(self) -> None:
        """Raise on options that cannot describe a model."""
        for name in ("alignments", "lat_alignments"):
            if not 1 <= getattr(self, name) <= self.factor:
                raise ValueError(f"{name}={getattr(self, name)} must be between 1 and the factor {self.factor}")
        if self.leave_out < 0:
            raise ValueError(f"leave_out={self.leave_out} must be >= 0")
        if self.networks < 1:
            raise ValueError(f"networks={self.networks} must be >= 1")
        self.variable_weights()


def n_condition_channels(cfg: DownscaleConfig) -> int:
    """3C + 1 conditioning channels, plus the P - 1 solar features with `solar_channels`."""
    return 3 * len(cfg.variables) + 1 + (N_FEATURES - 1 if cfg.solar_channels else 0)


def condition(b: np.ndarray, m: np.ndarray, s: np.ndarray, lat: np.ndarray,
              solar: np.ndarray | None = None) -> np.ndarray:
    """Conditioning channels [B, m, s/<s>, sin(lat)] for (..., C, H, W) arrays -> (..., 3C+1, H, W),
    followed by the solar features `solar` (..., P-1, H, W) (insolation, sin hour angle) when given."""
    rel = s / np.nanmean(s, axis=(-2, -1), keepdims=True)
    sinlat = np.broadcast_to(np.sin(np.deg2rad(lat))[:, None], b.shape[-2:])
    sinlat = np.broadcast_to(sinlat, (*b.shape[:-3], 1, *b.shape[-2:]))
    m = np.broadcast_to(m, b.shape)
    rel = np.broadcast_to(rel, b.shape)
    parts = [b, m, rel, sinlat] + ([] if solar is None else [solar])
    return np.concatenate(parts, axis=-3).astype(np.float32)
