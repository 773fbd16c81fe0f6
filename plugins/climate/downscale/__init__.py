"""Probabilistic downscaling: training pairs, the model bundle, ensemble sampling.

Notation (per variable, normalised units z, see `normalise.py`): the coarse field is the
area-weighted block mean C(z) of the fine field, B is bicubic interpolation back to the fine
grid, r = z - B(C(z)) the residual, and m, s its per-cell mean and standard deviation over
the training times. The network learns the standardised residual

    x0 = (r - m) / s,      conditioned on [B(C(z)), m, s / <s>, sin(latitude)],

so an untrained model (x0 ~ N(0, I)) is exactly the statistical downscaler, and everything it
learns is how the residual depends on the large-scale state. A member is z = B + m + s x0.
During training, m and s for time t are computed without t (leave-one-out), so the model sees
the same relation between statistics and data as on held-out times.

With `alignments` A > 1, each training time also gives the pairs of the other block alignments in
longitude: the fields rolled west by a = 1..A-1 cells, so the fixed coarse blocks group other
cells, each alignment with its own m and s. With `lat_alignments` L > 1 the same holds in latitude:
blocks that start b = 1..L-1 rows into the grid (latitude does not wrap, so the b rows before them
and the last factor - b rows are dropped). The network then sees A L views of every time, with the
geography shifted against the blocks and its own pooling grid.

One module per part:

- `config`: `DownscaleConfig` (what a model is) and the conditioning channels;
- `grids`: `Grids` (fine and coarse coordinates, B) and the block alignments;
- `statistics`: the residual's mean and standard deviation, with leave-one-out fits;
- `dataset`: `ResidualStrips`, the training examples, from a bounded cache;
- `checkpoint`: the file format (weights only);
- `bundle`: `Downscaler`, a trained model;
- `sampling`: the ensemble sampler behind `Downscaler.sample`;
- `training`: `build` and `train`.
"""

from sciffusion.plugins.climate.downscale.bundle import Downscaler
from sciffusion.plugins.climate.downscale.checkpoint import FORMAT, FORMAT_V1
from sciffusion.plugins.climate.downscale.config import (
    DownscaleConfig,
    condition,
    n_condition_channels,
)
from sciffusion.plugins.climate.downscale.dataset import ResidualStrips
from sciffusion.plugins.climate.downscale.grids import (
    Alignment,
    Grids,
    alignments,
    cols_in_every_alignment,
    load_aligned,
    rows_in_every_alignment,
)
from sciffusion.plugins.climate.downscale.sampling import CLAMP, SamplingOptions
from sciffusion.plugins.climate.downscale.statistics import (
    MIN_DIURNAL_TIMES,
    RIDGE,
    ResidualStats,
    fit_residual_stats,
    normal_sums,
    residual_features,
)
from sciffusion.plugins.climate.downscale.training import CACHE_BYTES, build, train, weighted_loss

__all__ = [
    "CACHE_BYTES",
    "CLAMP",
    "FORMAT",
    "FORMAT_V1",
    "MIN_DIURNAL_TIMES",
    "RIDGE",
    "Alignment",
    "DownscaleConfig",
    "Downscaler",
    "Grids",
    "ResidualStats",
    "ResidualStrips",
    "SamplingOptions",
    "alignments",
    "build",
    "cols_in_every_alignment",
    "condition",
    "fit_residual_stats",
    "load_aligned",
    "n_condition_channels",
    "normal_sums",
    "residual_features",
    "rows_in_every_alignment",
    "train",
    "weighted_loss",
]
