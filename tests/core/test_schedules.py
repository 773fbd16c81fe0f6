import json
import math

import pytest
import torch

from sciffusion.core import available_schedules, get_schedule, register_schedule
from sciffusion.core.diffusion.schedules import Schedule, linear_schedule

NAMES = ["linear", "cosine", "quadratic", "sigmoid"]
t = torch.linspace(0, 1, 2001, dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_vp_identities_and_monotone_log_snr(name):
    s = get_schedule(name)
    a, sg, lam = s.alpha(t), s.sigma(t), s.log_snr(t[1:])
    assert torch.allclose(a**2 + sg**2, torch.ones_like(t), atol=1e-12)
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must decrease strictly"
    assert torch.allclose(lam, torch.log(a[1:] ** 2 / sg[1:] ** 2), rtol=1e-8, atol=1e-6)
    assert a[0] == 1.0 and sg[0] == 0.0
    assert a[-1] < 0.03, "the process must be close to pure noise at t = 1"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [10, 1000])
def test_discrete_tables_are_the_process_on_the_grid(name, steps):
    s = get_schedule(name)
    abar = s.alphas_cumprod(steps)
    betas = s.betas(steps)
    assert abar.dtype == torch.float64 and betas.dtype == torch.float64
    grid = torch.arange(steps + 1, dtype=torch.float64) / steps
    assert torch.allclose(abar, s.alpha(grid) ** 2, atol=1e-14)
    # beta_i = 1 - abar_i / abar_{i-1}  <=>  abar_i = prod_j (1 - beta_j)
    assert torch.allclose(torch.cumprod(1 - betas, 0), abar[1:], rtol=1e-10)
    assert ((betas > 0) & (betas < 1)).all()


def test_linear_matches_ddpm_betas():
    betas = get_schedule("linear").betas(1000)
    assert betas[0] == pytest.approx(1e-4, rel=0.15) and betas[-1] == pytest.approx(0.02, rel=0.02)
    ddpm = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert (betas - ddpm).abs().max() < 3e-4  # continuous-time VP: beta_i ~ beta(t_i) / T up to O(1/T^2)


def test_cosine_matches_nichol_dhariwal_alphabar_away_from_the_clip():
    s = get_schedule("cosine")
    T = 1000
    abar = s.alphas_cumprod(T)
    i = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2
    ref = f / f[0]
    # time is rescaled by less than 1e-4 to put alpha(1) at 5e-5: compare on the bulk of the grid
    assert torch.allclose(abar[:900], ref[:900], rtol=2e-3, atol=1e-6)
    assert s.betas(T)[-1] == pytest.approx(0.999, abs=1e-3)  # improved-diffusion's clip


@pytest.mark.parametrize("name", NAMES)
def test_t_from_log_snr_inverts(name):
    s = get_schedule(name)
    tt = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    assert torch.allclose(s.t_from_log_snr(s.log_snr(tt)), tt, atol=1e-10)


def test_registry_and_json_round_trip():
    assert set(NAMES) <= set(available_schedules())
    with pytest.raises(ValueError, match=r"unknown schedule 'nope'; known schedules: .*cosine"):
        get_schedule("nope")

    @register_schedule("test_short_linear")
    def short() -> Schedule:
        return linear_schedule(0.1, 10.0)

    s = get_schedule("test_short_linear")
    assert s.alpha(torch.ones(1, dtype=torch.float64)) > get_schedule("linear").alpha(torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="already registered"):
        register_schedule("test_short_linear", short)
    c = get_schedule("cosine", offset=0.01)
    back = get_schedule(**json.loads(json.dumps(c.to_dict())))
    assert torch.equal(back.alpha(t), c.alpha(t))


def test_bad_step_count():
    with pytest.raises(ValueError, match="positive integer"):
        get_schedule("linear").betas(0)


@pytest.mark.parametrize("name,beta_schedule", [("ddpm_linear", "linear"), ("ddpm_squaredcos_cap_v2", "squaredcos_cap_v2")])
def test_discrete_ddpm_tables_are_diffusers_tables(name, beta_schedule):
    """`alphabar((k + 1) / 1000)` is diffusers' `alphas_cumprod[k]` (which diffusers keeps in float32)."""
    diffusers = pytest.importorskip("diffusers")
    sch = get_schedule(name)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    ref = diffusers.DDIMScheduler(beta_schedule=beta_schedule).alphas_cumprod.double()
    assert torch.allclose(sch.alpha(t) ** 2, ref, rtol=2e-6, atol=1e-12)
    assert float(sch.alpha(torch.zeros(1, dtype=torch.float64))[0]) == 1.0
    # between grid points log alphabar is linear in t (constant beta within a step)
    mid = torch.tensor([0.2495], dtype=torch.float64)
    log_abar = torch.log(sch.alpha(torch.tensor([0.249, 0.2495, 0.250], dtype=torch.float64)) ** 2)
    assert float(log_abar[1]) == pytest.approx(float(0.5 * (log_abar[0] + log_abar[2])), rel=1e-12)
    assert get_schedule(**sch.to_dict()).log_snr(mid).item() == sch.log_snr(mid).item()


@pytest.mark.parametrize("name,beta_schedule", [("ddpm_linear", "linear"), ("ddpm_squaredcos_cap_v2", "squaredcos_cap_v2")])
@pytest.mark.parametrize("steps", [10, 50])
def test_core_ddim_reproduces_diffusers_ddim_on_a_ddpm_table(name, beta_schedule, steps):
    """A model trained on the discrete table (here a fixed random MLP of `(x, k)`) sampled by the core's DDIM on
    diffusers' own timesteps (`t = (k + 1) / 1000`, then `t = 0`) gives diffusers' DDIM output."""
    diffusers = pytest.importorskip("diffusers")
    from sciffusion.core import DiffusionProcess, sample

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.SiLU(), torch.nn.Linear(64, 3))

    def eps_model(x, k):  # what a diffusers-trained network sees: the integer timestep k
        kk = torch.as_tensor(k, dtype=x.dtype).expand(x.shape[0], 1)
        return 0.5 * net(torch.cat([x, kk / 1000], 1))

    sch = diffusers.DDIMScheduler(beta_schedule=beta_schedule, clip_sample=False)
    sch.set_timesteps(steps)
    x_init = torch.randn(256, 3, generator=torch.Generator().manual_seed(1))
    x = x_init.clone()
    with torch.no_grad():
        for k in sch.timesteps:
            x = sch.step(eps_model(x, float(k)), k, x).prev_sample
        grid = torch.tensor([(float(k) + 1) / 1000 for k in sch.timesteps] + [0.0], dtype=torch.float64)
        ours = sample(lambda x, t, c=None: eps_model(x, t[:1] * 1000 - 1), DiffusionProcess(name, "eps"), x_init.shape,
                      "ddim", grid=grid, x_init=x_init, progress=False)
    assert torch.allclose(ours, x, rtol=1e-4, atol=1e-4), (ours - x).abs().max()
