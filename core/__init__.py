"""sciffusion core: the Gaussian diffusion engine shared by every plugin.

    from sciffusion.core import get_schedule, DiffusionProcess, sample, losses
"""

from sciffusion.core import losses
from sciffusion.core.analytic import GaussianMixture
from sciffusion.core.grids import available_grids, time_grid
from sciffusion.core.likelihood import log_likelihood
from sciffusion.core.process import DiffusionProcess, expand
from sciffusion.core.sample_quality import (
    density_coverage,
    frechet_distance,
    precision_recall,
    sample_quality,
)
from sciffusion.core.samplers import available_samplers, register_sampler, sample
from sciffusion.core.schedules import Schedule, available_schedules, get_schedule, register_schedule

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
