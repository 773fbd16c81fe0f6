"""sciffusion core: the engines every plugin shares.

- `sciffusion.core.diffusion`: the Gaussian diffusion engine (schedules, process, samplers, losses, likelihoods);
- `sciffusion.core.kernels`: kernel methods on R^d and on manifolds (kernel-smoothing scores, spectral OISM);
- `sciffusion.core.train`: the `Trainer` (EMA, checkpoints, resume, DDP);
- shared by the engines: `grids` (time grids), `rng`, `devices`, `memory`.

    from sciffusion.core import get_schedule, DiffusionProcess, sample, losses
"""

from sciffusion.core.diffusion import losses
from sciffusion.core.diffusion.analytic import GaussianMixture
from sciffusion.core.diffusion.likelihood import log_likelihood
from sciffusion.core.diffusion.process import DiffusionProcess, expand
from sciffusion.core.diffusion.sample_quality import (
    density_coverage,
    frechet_distance,
    precision_recall,
    sample_quality,
)
from sciffusion.core.diffusion.samplers import available_samplers, register_sampler, sample
from sciffusion.core.diffusion.schedules import (
    Schedule,
    available_schedules,
    get_schedule,
    register_schedule,
)
from sciffusion.core.grids import available_grids, time_grid

__all__ = [
    "DiffusionProcess",
    "GaussianMixture",
    "Schedule",
    "available_grids",
    "available_samplers",
    "available_schedules",
    "density_coverage",
    "expand",
    "frechet_distance",
    "get_schedule",
    "log_likelihood",
    "losses",
    "precision_recall",
    "register_sampler",
    "register_schedule",
    "sample",
    "sample_quality",
    "time_grid",
]
