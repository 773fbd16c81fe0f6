"""sciffusion core: the Gaussian diffusion engine shared by every plugin.

    from core import get_schedule, DiffusionProcess, sample, losses
"""

from core import losses
from core.analytic import GaussianMixture
from core.grids import available_grids, time_grid
from core.likelihood import log_likelihood
from core.process import DiffusionProcess, expand
from core.samplers import available_samplers, register_sampler, sample
from core.schedules import Schedule, available_schedules, get_schedule, register_schedule

__all__ = [
    "DiffusionProcess",
    "GaussianMixture",
    "Schedule",
    "available_grids",
    "available_samplers",
    "available_schedules",
    "expand",
    "get_schedule",
    "log_likelihood",
    "losses",
    "register_sampler",
    "register_schedule",
    "sample",
    "time_grid",
]
