"""The Gaussian diffusion engine: schedules, the forward process, samplers, losses and likelihoods.

    from sciffusion.core.diffusion import get_schedule, DiffusionProcess, sample, losses

The names most code needs are also importable from `sciffusion.core`.
"""

from sciffusion.core.diffusion import losses
from sciffusion.core.diffusion.analytic import GaussianMixture
from sciffusion.core.diffusion.elbo import ELBOTerms, elbo, vdm_elbo
from sciffusion.core.diffusion.inpainting import smc_inpaint
from sciffusion.core.diffusion.likelihood import log_likelihood
from sciffusion.core.diffusion.process import DiffusionProcess, expand
from sciffusion.core.diffusion.samplers import (
    available_samplers,
    default_t_max,
    register_sampler,
    sample,
)
from sciffusion.core.diffusion.schedules import (
    Schedule,
    available_schedules,
    get_schedule,
    register_schedule,
)

__all__ = [
    "DiffusionProcess",
    "ELBOTerms",
    "GaussianMixture",
    "Schedule",
    "available_samplers",
    "available_schedules",
    "default_t_max",
    "elbo",
    "expand",
    "get_schedule",
    "log_likelihood",
    "losses",
    "register_sampler",
    "register_schedule",
    "sample",
    "smc_inpaint",
    "vdm_elbo",
]
