"""Kernel methods on R^d and on manifolds: heat kernels, kernel-smoothing scores (DKS / RDKS), spectral
OISM, and the reverse diffusions they drive (conventions of `kernel_estimators.md`).

    from sciffusion.core.kernels import Euclidean, Circle, Torus, Sphere
    from sciffusion.core.kernels import KernelSmoothingScore, SpectralOISM, oism_residual_loss

    est = KernelSmoothingScore(data, manifold=Sphere(2), bandwidth="auto")
    est.score(x, t);  est.sample(n, steps=200, generator=g)
"""

from sciffusion.core.kernels.manifolds import (
    Circle,
    Eigenbasis,
    Euclidean,
    Manifold,
    Sphere,
    Torus,
    sample_von_mises,
    sample_von_mises_fisher,
    spherical_harmonics_s2,
)
from sciffusion.core.kernels.oism import SpectralOISM, oism_pretrain_loss, oism_residual_loss
from sciffusion.core.kernels.sde import (
    BrownianMotion,
    GeneralSDE,
    OrnsteinUhlenbeck,
    ou_time_from_vp,
    pf_ode_log_likelihood,
    reverse_sample,
    score_as_core_model,
)
from sciffusion.core.kernels.smoothing import KernelSmoothingScore, select_bandwidth

__all__ = [
    "BrownianMotion",
    "Circle",
    "Eigenbasis",
    "Euclidean",
    "GeneralSDE",
    "KernelSmoothingScore",
    "Manifold",
    "OrnsteinUhlenbeck",
    "SpectralOISM",
    "Sphere",
    "Torus",
    "oism_pretrain_loss",
    "oism_residual_loss",
    "ou_time_from_vp",
    "pf_ode_log_likelihood",
    "reverse_sample",
    "sample_von_mises",
    "sample_von_mises_fisher",
    "score_as_core_model",
    "select_bandwidth",
    "spherical_harmonics_s2",
]
