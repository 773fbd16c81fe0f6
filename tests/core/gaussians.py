import math

import torch

from sciffusion.core import DiffusionProcess, GaussianMixture


def gaussian_exact_ode(gm: GaussianMixture, proc: DiffusionProcess, x_t: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """Exact probability-flow map of a single diagonal Gaussian from time t to s:
    x_s = alpha_s m + sqrt(alpha_s^2 v + sigma_s^2) z, z = (x_t - alpha_t m) / sqrt(alpha_t^2 v + sigma_t^2)."""
    m, sd = gm.means[0], gm.stds[0]
    tt = torch.tensor([t, s], dtype=torch.float64)
    a, sg = proc.alpha(tt), proc.sigma(tt)
    z = (x_t - a[0] * m) / torch.sqrt(a[0] ** 2 * sd**2 + sg[0] ** 2)
    return a[1] * m + torch.sqrt(a[1] ** 2 * sd**2 + sg[1] ** 2) * z


def gaussian_16d() -> GaussianMixture:
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(16, generator=g, dtype=torch.float64)
    std = 0.5 + 1.5 * torch.rand(16, generator=g, dtype=torch.float64)
    return GaussianMixture.gaussian(mean, std)


def gaussian_2d() -> GaussianMixture:
    return GaussianMixture.gaussian(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0]))


LOG2PI = math.log(2 * math.pi)
