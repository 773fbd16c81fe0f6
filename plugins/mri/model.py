"""The conditional denoiser: MONAI's 3-D `DiffusionModelUNet` on space-to-depth volumes.

What diffuses is the scaled residual over cubic interpolation,

    x_0 = S2D((y - cubic(l)) / r),          cond = S2D(cubic(l)),

where `y` is the (normalised) high-resolution volume, `l` the low-resolution one, `r` the residual
scale of the config and `S2D` the space-to-depth rearrangement that folds each block of
`f_x f_y f_z` high-resolution voxels into channels: `(B, 1, f_x x, f_y y, f_z z) -> (B, F, x, y, z)`
with `F = f_x f_y f_z`. The UNet sees `concat(x_t, cond)` (2F channels) at the low-resolution grid,
which is `F` times cheaper than running it on the refined grid, and predicts `F` channels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn

from sciffusion.core.config import JsonConfig
from sciffusion.core.train.checkpoint import CheckpointError, atomic_torch_save, read_torch_file

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
FORMAT = "sciffusion-mri-sr/1"


@dataclass(frozen=True)
class SRConfig(JsonConfig):
    """Everything needed to rebuild a model and its data pipeline; round-trips through JSON."""

    scale: tuple[int, int, int] = (2, 2, 2)
    channels: tuple[int, ...] = (32, 48, 64)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    schedule: str = "cosine"
    prediction: str = "v"
    residual_scale: float = 0.05  # r: residuals (in normalised intensity) are divided by r
    fwhm: float = 1.0  # slice-profile FWHM in units of the factor (degrade.degrade)
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    patch: tuple[int, int, int] = (24, 24, 24)  # low-resolution patch for training
    time_scale: float = 1000.0  # t in [0, 1] is fed to the UNet's sinusoidal embedding as t * 1000
    notes: dict = field(default_factory=dict)
    conditioned: bool = False  # told the degradation (noise, slice profile): `conditioning.degradation_vector`

    @property
    def factor(self) -> int:
        """F = f_x f_y f_z, the number of refined voxels per low-resolution voxel."""
        return self.scale[0] * self.scale[1] * self.scale[2]



def space_to_depth(x: Tensor, scale: tuple[int, int, int]) -> Tensor:
    """`(B, C, f_x x, f_y y, f_z z) -> (B, C F, x, y, z)`."""
    fx, fy, fz = scale
    return rearrange(x, "b c (x i) (y j) (z k) -> b (c i j k) x y z", i=fx, j=fy, k=fz)


def depth_to_space(x: Tensor, scale: tuple[int, int, int]) -> Tensor:
    """Inverse of `space_to_depth`: `(B, C F, x, y, z) -> (B, C, f_x x, f_y y, f_z z)`."""
    fx, fy, fz = scale
    return rearrange(x, "b (c i j k) x y z -> b c (x i) (y j) (z k)", i=fx, j=fy, k=fz)


class SRDenoiser(nn.Module):
    """`model(x_t, t, cond) -> prediction` for the core samplers; x_t: `(B, F, x, y, z)`.

    `cond` is the image condition `S2D(cubic(l))` of `x_t`'s shape, or the pair `(image, d)` with
    `d` the degradation vector (`conditioning.degradation_vector`, `(D,)` or `(B, D)`; None for
    unknown). A conditioned model (`config.conditioned`) adds `g(d)` to the UNet's time embedding,
    `emb = T(t) + g(d)` with `g` = Linear-SiLU-Linear whose last layer starts at zero, so a conditioned
    model holding an unconditioned model's UNet weights computes exactly that model's output until
    training moves `g`. An unconditioned model ignores `d`.
    """

    def __init__(self, config: SRConfig) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.config = config
        f = config.factor
        self.unet = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=2 * f,
            out_channels=f,
            num_res_blocks=config.num_res_blocks,
            channels=tuple(config.channels),
            attention_levels=(False,) * len(config.channels),
            norm_num_groups=config.norm_num_groups,
        )
        if config.conditioned:
            from sciffusion.plugins.mri.conditioning import DEGRADATION_DIM

            dim = self.unet.time_embed[-1].out_features
            self.degradation_embed = nn.Sequential(nn.Linear(DEGRADATION_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))
            nn.init.zeros_(self.degradation_embed[-1].weight)
            nn.init.zeros_(self.degradation_embed[-1].bias)

    @property
    def multiple(self) -> int:
        """Spatial sizes (low-resolution grid) must be multiples of this (one halving per level)."""
        return 2 ** (len(self.config.channels) - 1)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | tuple | None = None) -> Tensor:
        """Predict the config's target (`v` by default) from `concat(x_t, image)` at time `t` (B,),
        told the degradation `d` when conditioned (`cond = (image, d)`; `d` None or absent: unknown)."""
        image, d = cond if isinstance(cond, (tuple, list)) else (cond, None)
        if image is None:
            raise ValueError("SRDenoiser needs cond = S2D(cubic(low-res)) of x_t's shape")
        t = t.reshape(-1).to(x_t.dtype).expand(x_t.shape[0]) * self.config.time_scale
        x = torch.cat([x_t, image.to(x_t.dtype)], dim=1)
        if not self.config.conditioned:
            return self.unet(x, t)
        if d is None:
            from sciffusion.plugins.mri.conditioning import degradation_vector

            d = degradation_vector(None, None)
        d = d.to(device=x.device, dtype=x.dtype).reshape(-1, d.shape[-1]).expand(x.shape[0], -1)
        return self._unet(x, t, self.degradation_embed(d))

    def _unet(self, x: Tensor, t: Tensor, extra: Tensor) -> Tensor:
        """MONAI `DiffusionModelUNet.forward` (no context, no class labels) with `emb = T(t) + extra`."""
        from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

        u = self.unet
        emb = u.time_embed(get_timestep_embedding(t, u.block_out_channels[0]).to(dtype=x.dtype))
        emb = emb + extra.to(emb.dtype)
        h = u.conv_in(x)
        skips = [h]
        for block in u.down_blocks:
            h, res = block(hidden_states=h, temb=emb, context=None)
            skips.extend(res)
        h = u.middle_block(hidden_states=h, temb=emb, context=None)
        for block in u.up_blocks:
            n = len(block.resnets)
            h = block(hidden_states=h, res_hidden_states_list=skips[-n:], temb=emb, context=None)
            skips = skips[:-n]
        return u.out(h)


def save_checkpoint(model: SRDenoiser, path: str | Path, extra: dict | None = None) -> Path:
    """Write `{format, config, state_dict, extra}` atomically; loadable with `weights_only=True`."""
    blob = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "extra": json.dumps(extra or {}),
    }
    atomic_torch_save(blob, path)
    return path


def load_weights(model: SRDenoiser, source: SRDenoiser) -> SRDenoiser:
    """Copy `source`'s weights into `model` (fine-tuning start); returns `model`.

    The two must have the same UNet. A conditioned `model` may start from an unconditioned `source`:
    its degradation embedding then keeps its initialisation (zero output), so it starts as `source`.
    """
    state = source.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("degradation_embed.")] + list(unexpected)
    if bad:
        raise ValueError(f"the initial weights do not fit this model (first mismatched key: {bad[0]})")
    return model


def load_checkpoint(path: str | Path, scale: tuple[int, int, int] | None = None) -> SRDenoiser:
    """Load a checkpoint written by `save_checkpoint`; `scale` (if given) must match its scale."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    blob = read_torch_file(path, "MRI checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an MRI super-resolution checkpoint (format {FORMAT!r} expected)")
    config = SRConfig.from_dict(json.loads(blob["config"]), source=f"{path} config")
    if scale is not None and tuple(scale) != tuple(config.scale):
        raise ValueError(
            f"{path}: checkpoint was trained for scale {','.join(map(str, config.scale))}, "
            f"but scale {','.join(map(str, scale))} was asked for"
        )
    model = SRDenoiser(config)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model


def default_checkpoint(scale: tuple[int, int, int]) -> Path:
    """Path of the shipped checkpoint for `scale`, e.g. `checkpoints/mri_sr_2x2x2.pt`."""
    return CHECKPOINT_DIR / f"mri_sr_{'x'.join(map(str, scale))}.pt"
