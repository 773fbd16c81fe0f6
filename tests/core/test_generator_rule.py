"""One generator rule: a generator may live on any device; draws happen there and move to the data's device.

Every function of the core that takes `generator=` gives the same result for the same seed, with its
data on `device` and the generator on the CPU or on `device`, and puts its result on the data's device.
"""

import pytest
import torch

from sciffusion.core import (
    DiffusionProcess,
    GaussianMixture,
    get_schedule,
    log_likelihood,
    losses,
    rng,
)
from sciffusion.core.kernels import KernelSmoothingScore
from sciffusion.core.kernels.manifolds import Euclidean, Sphere
from sciffusion.core.kernels.oism import SpectralOISM, linear_score_gradients, oism_residual_loss
from sciffusion.core.kernels.sde import BrownianMotion, OrnsteinUhlenbeck


def _seeded(where: torch.device, seed: int = 7) -> torch.Generator:
    return torch.Generator(device=where).manual_seed(seed)


def _calls(device: torch.device):
    proc = DiffusionProcess(get_schedule("cosine"), prediction="eps")
    mix = GaussianMixture.gaussian(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0]))
    x0 = mix.sample(32, _seeded(torch.device("cpu"), 0)).to(device)
    model = mix.to(device).denoiser(proc)
    net = torch.nn.Linear(2, 2).double().to(device)
    mixing = torch.tensor([[0.3, 0.8], [-0.5, 0.2]], dtype=torch.float64, device=device)
    kde = KernelSmoothingScore(x0.float(), manifold=Euclidean(2), bandwidth=0.3)
    oism = SpectralOISM(x0, basis="hermite", degree=2)
    calls = {
        "add_noise": lambda g: proc.add_noise(x0, torch.full((32,), 0.5, device=device, dtype=x0.dtype), generator=g)[0],
        "forward_step": lambda g: proc.forward_step(x0, torch.full((32,), 0.2, device=device, dtype=x0.dtype),
                                                    torch.full((32,), 0.6, device=device, dtype=x0.dtype), generator=g),
        "denoising_loss": lambda g: losses.denoising_loss(lambda x, t: net(x), proc, x0, generator=g),
        "oism_residual_loss": lambda g: oism_residual_loss(lambda x, t: net(x), oism, proc, x0, generator=g),
        "linear_score_gradients": lambda g: torch.stack(linear_score_gradients(x0[:, 0], 0.5, 0.3, generator=g)),
        "ou_marginal": lambda g: OrnsteinUhlenbeck(2).marginal_sample(x0, 0.3, generator=g),
        "ou_prior": lambda g: OrnsteinUhlenbeck(2).prior_sample(3, g, device=device),
        "brownian_sphere": lambda g: BrownianMotion(Sphere(2)).sample(Sphere(2).project(x0[:4, :1].repeat(1, 3)), 0.1, steps=3,
                                                                       generator=g),
        "kde_sample": lambda g: kde.sample(4, steps=5, generator=g),
        "sphere_uniform": lambda g: Sphere(2).sample_uniform(6, g, device=device),
        "rng.multinomial": lambda g: rng.multinomial(torch.ones(3, 5, device=device), 4, generator=g),
        # a Rademacher probe is exact on a diagonal Jacobian: this model's is not
        "log_likelihood_probe": lambda g: log_likelihood(lambda x, t, cond=None: x @ mixing, proc, x0[:4], steps=4,
                                                         hutchinson=True, generator=g),
        "elbo_sampled_steps": lambda g: losses.elbo(model, proc, x0[:4], num_steps=20, num_samples=3,
                                                    generator=g).total,
        "mixture_sample": lambda g: mix.to(device).sample(5, g),
    }
    return calls


@pytest.mark.parametrize("gen_on", ["cpu", "data"])
def test_same_seed_same_result_with_the_generator_on_any_device(device, gen_on):
    where = torch.device("cpu") if gen_on == "cpu" else device
    for name, call in _calls(device).items():
        first, again = call(_seeded(where)), call(_seeded(where))
        assert first.device.type == device.type, name
        torch.testing.assert_close(first, again, msg=name)
        other = call(_seeded(where, seed=8))
        assert not torch.equal(first, other), f"{name} ignores its generator"
