import math

import pytest
import torch

from sciffusion.core import DiffusionProcess, GaussianMixture, available_samplers, sample
from sciffusion.core.diffusion.inpainting import smc_inpaint
from tests.core.gaussians import gaussian_2d, gaussian_16d, gaussian_exact_ode

BUDGET = {"ddpm": 200, "ddpm_beta": 200, "ddim": 100, "heun": 30, "dpmpp_2m": 20, "unipc": 10, "unipc_3": 10}


def _std_error(x: torch.Tensor, gm: GaussianMixture) -> float:
    return ((x.std(0) / gm.stds[0]) - 1).abs().max().item()


@pytest.mark.parametrize("gm_fn", [gaussian_2d, gaussian_16d], ids=["d2", "d16"])
@pytest.mark.parametrize("method", list(BUDGET))
def test_every_sampler_reproduces_gaussian_moments(gm_fn, method, device):
    gm = gm_fn()
    proc = DiffusionProcess("cosine", "eps")
    n = 20_000 if gm.dim == 2 else 8_000
    x = sample(gm.to(device).denoiser(proc), proc, (n, gm.dim), method, BUDGET[method], t_max=1.0,
               generator=torch.Generator().manual_seed(0), progress=False, dtype=torch.float64, device=device)
    assert x.device.type == device.type
    x = x.cpu()
    z = (x - gm.means[0]) / gm.stds[0]
    assert z.mean(0).abs().max() < 4.5 / math.sqrt(n) + 0.01
    assert _std_error(x, gm) < 0.05
    corr = torch.corrcoef(z.T) - torch.eye(gm.dim, dtype=torch.float64)
    assert corr.abs().max() < 0.04


@pytest.mark.parametrize("prediction", ["x0", "v", "score"])
def test_prediction_types_give_the_same_ode_solution(prediction):
    gm = gaussian_2d()
    ref_proc, proc = DiffusionProcess("cosine", "eps"), DiffusionProcess("cosine", prediction)
    x_init = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(x_init=x_init, t_max=1.0, progress=False, dtype=torch.float64)
    ref = sample(gm.denoiser(ref_proc), ref_proc, x_init.shape, "dpmpp_2m", 15, **kw)
    out = sample(gm.denoiser(proc), proc, x_init.shape, "dpmpp_2m", 15, **kw)
    assert torch.allclose(out, ref, atol=1e-8)


@pytest.mark.slow
def test_second_order_samplers_at_20_steps_vs_ddpm_at_200():
    gm = gaussian_2d()
    proc = DiffusionProcess("cosine", "eps")
    model = gm.denoiser(proc)
    # DDPM: Monte Carlo over 200k draws (noise of the std estimate ~0.16 %)
    x = sample(model, proc, (200_000, 2), "ddpm", 200, t_max=1.0, generator=torch.Generator().manual_seed(1),
               progress=False, dtype=torch.float64)
    err = {("ddpm", 200): _std_error(x, gm)}
    # deterministic samplers map x_1 affinely: compare with the exact ODE map on the same starting points
    x_init = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = gaussian_exact_ode(gm, proc, x_init, 1.0, 0.0)
    for method, steps in [("dpmpp_2m", 20), ("heun", 20), ("heun", 40)]:
        out = sample(model, proc, x_init.shape, method, steps, x_init=x_init, t_max=1.0, progress=False, dtype=torch.float64)
        err[method, steps] = ((out - gm.means[0]).std(0) / (exact - gm.means[0]).std(0) - 1).abs().max().item()
    assert err["dpmpp_2m", 20] <= err["ddpm", 200], err
    # Karras-style Heun needs 40 steps (79 evaluations) to beat 200 DDPM evaluations here; see docs/core.md
    assert err["heun", 20] < 0.05, err
    assert err["heun", 40] <= err["ddpm", 200], err


def _observed_order(method: str, step_counts: tuple[int, int, int], t_min: float = 0.05,
                    grid: str = "uniform") -> tuple[list[float], float]:
    """Max errors against the exact probability-flow ODE of a 2-D Gaussian from t = 0.9 to `t_min` on
    `grid`s of `step_counts` steps, and the order log2(err_2 / err_3) they show."""
    gm = gaussian_2d()
    proc = DiffusionProcess("cosine", "eps")
    t_max = 0.9
    tt = torch.tensor([t_max], dtype=torch.float64)
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_init = proc.alpha(tt) * gm.means[0] + torch.sqrt(proc.alpha(tt) ** 2 * gm.stds[0] ** 2 + proc.sigma(tt) ** 2) * z
    exact = gaussian_exact_ode(gm, proc, x_init, t_max, t_min)
    errs = []
    for steps in step_counts:
        x = sample(gm.denoiser(proc), proc, x_init.shape, method, steps, x_init=x_init, t_max=t_max,
                   t_min=t_min, grid=grid, progress=False, dtype=torch.float64)
        errs.append((x - exact).abs().max().item())
    return errs, math.log2(errs[1] / errs[2])


@pytest.mark.parametrize("method,order", [("ddim", 1.0), ("heun", 2.0), ("dpmpp_2m", 2.0)])
def test_ode_samplers_converge_at_their_order(method, order):
    errs, observed = _observed_order(method, (16, 32, 64))
    assert abs(observed - order) < 0.3, (errs, observed)


@pytest.mark.parametrize("method,order", [("unipc", 3.0), ("unipc_bh1", 3.0), ("unipc_3", 3.5)])
def test_unipc_converges_one_order_above_its_predictor(method, order):
    """UniP-p with the UniC corrector is of order p + 1 (the order-3 variant's low-order start-up steps still
    show at these step counts: 3.4 observed)."""
    errs, observed = _observed_order(method, (32, 64, 128))
    assert abs(observed - order) < 0.35, (errs, observed)


def test_unipc_3_lowers_its_order_over_the_last_steps_to_the_data():
    """On a grid that ends at sigma = 0 the last steps stay long in lambda' at every step count (on the angle
    grid `h` tends to `2 * 1.2 * log((k + 1) / k)` for the k-th step from the end), so `unipc_3` takes order
    `<= count - index` there: to the data it converges at order above 2 and is 2.5-4x more accurate than
    `unipc` (full order-3 final steps were less accurate than `unipc` at 32 steps: 1.2e-2 against 6.8e-3)."""
    errs_3, _ = _observed_order("unipc_3", (32, 64, 128), t_min=0.0, grid="angle")
    errs_2, _ = _observed_order("unipc", (32, 64, 128), t_min=0.0, grid="angle")
    orders = [math.log2(errs_3[i] / errs_3[i + 1]) for i in range(2)]
    assert orders[0] > 2.4 and orders[1] > 1.9, (errs_3, orders)
    assert all(e3 < e2 / 2 for e3, e2 in zip(errs_3, errs_2, strict=True)), (errs_3, errs_2)


def test_unipc_matches_diffusers_on_the_same_grid():
    """The core's UniPC reproduces diffusers' UniPCMultistepScheduler (bh2, order 2, lower-order final steps)
    step for step on diffusers' own timesteps of the same discrete process."""
    diffusers = pytest.importorskip("diffusers")
    import numpy as np

    gm = GaussianMixture(torch.ones(3), torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]]), torch.full((3, 2), 0.3))
    proc = DiffusionProcess("linear", "eps")
    abar = proc.schedule.alphas_cumprod(1000)
    sch = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, trained_betas=proc.schedule.betas(1000).numpy())
    sch.set_timesteps(6)
    x_init = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_init.clone()
    for k in sch.timesteps:
        t = torch.full((500,), (float(k) + 1) / 1000, dtype=torch.float64)  # abar_k of diffusers = abar(t)
        x = sch.step(gm.denoiser(proc)(x, t), k, x).prev_sample
    grid = torch.tensor([(float(k) + 1) / 1000 for k in sch.timesteps] + [0.0], dtype=torch.float64)
    ours = sample(gm.denoiser(proc), proc, x_init.shape, "unipc", grid=grid, x_init=x_init, progress=False,
                  dtype=torch.float64)
    assert float(abar[0]) == 1.0 and np.isfinite(ours.numpy()).all()
    assert torch.allclose(ours, x, atol=1e-5), (ours - x).abs().max()


def test_default_start_gets_the_prior_mean_for_free():
    """Started at sigma / alpha = 80, the chain is moved to the prior's mean alpha E[x_0] with the first
    evaluation, which the first step reuses: an off-centre Gaussian comes out centred, same evaluation count."""
    gm = GaussianMixture.gaussian(torch.tensor([6.0, -4.0]), torch.tensor([0.3, 0.3]))
    proc = DiffusionProcess("cosine", "eps")
    calls = []

    def model(x, t, cond=None):
        calls.append(1)
        return gm.denoiser(proc)(x, t)

    x = sample(model, proc, (4000, 2), "unipc", 10, generator=torch.Generator().manual_seed(0), progress=False,
               dtype=torch.float64)
    assert len(calls) == 10
    # the exact flow of a Gaussian keeps the standardised point: x_0 = m + s z with z the starting noise
    x_init = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = ((x - gm.means[0]) / gm.stds[0] - x_init).mean(0)
    assert shift.abs().max() < 0.005, shift
    plain = sample(gm.denoiser(proc), proc, (4000, 2), "unipc", 10, x_init=x_init, progress=False, dtype=torch.float64)
    # without it: off by the prior's mean alpha m, carried to t = 0 as -(s / 80) m, that is -m / 80 in z
    assert torch.allclose(((plain - gm.means[0]) / gm.stds[0] - x_init).mean(0), -gm.means[0] / 80, atol=0.01)


@pytest.mark.parametrize("method", ["ddpm", "ddpm_beta"])
@pytest.mark.slow
def test_stochastic_samplers_weak_order_one(method):
    gm = GaussianMixture.gaussian(torch.tensor([0.5]), torch.tensor([1.5]))
    proc = DiffusionProcess("cosine", "eps")
    errs = []
    for steps in (10, 40):
        x = sample(gm.denoiser(proc), proc, (200_000, 1), method, steps,
                   generator=torch.Generator().manual_seed(steps), progress=False, dtype=torch.float64)
        errs.append(abs(x.var().item() / 1.5**2 - 1))
    # weak order 1: 4x the steps -> about 4x smaller bias (Monte Carlo noise ~ 0.3 %)
    assert errs[1] < errs[0] / 2.5, errs


@pytest.mark.parametrize("method", ["ddim", "heun", "dpmpp_2m", "unipc"])
def test_default_start_tolerates_eps_errors_of_a_trained_network(method):
    gm = gaussian_2d()
    proc = DiffusionProcess("cosine", "eps")
    exact = gm.denoiser(proc)

    def trained(x, t, cond=None):  # a network is never exact: 1 % error in eps
        return exact(x, t) + 0.01

    kw = dict(generator=torch.Generator().manual_seed(0), progress=False, dtype=torch.float64)
    good = sample(trained, proc, (4000, 2), method, 20, **kw)
    z = (good - gm.means[0]) / gm.stds[0]
    assert z.mean(0).abs().max() < 0.15 and (z.std(0) - 1).abs().max() < 0.1
    from_one = sample(trained, proc, (4000, 2), method, 20, t_max=1.0, **kw)
    assert ((from_one - gm.means[0]) / gm.stds[0]).mean(0).abs().max() > 1.0  # why the default moved


def test_euler_maruyama_is_the_older_name_of_ddpm_beta():
    from sciffusion.core.diffusion.samplers import SAMPLERS

    assert SAMPLERS["euler_maruyama"].step is SAMPLERS["ddpm_beta"].step


def test_seeded_runs_repeat_and_ddim_is_deterministic(device):
    gm = gaussian_2d().to(device)
    proc = DiffusionProcess("linear", "v")
    model = gm.denoiser(proc)
    kw = dict(progress=False, device=device)
    a = sample(model, proc, (64, 2), "ddpm", 30, generator=torch.Generator().manual_seed(5), **kw)
    b = sample(model, proc, (64, 2), "ddpm", 30, generator=torch.Generator().manual_seed(5), **kw)
    c = sample(model, proc, (64, 2), "ddpm", 30, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.device.type == device.type
    x_init = torch.randn(64, 2, device=device)
    d1 = sample(model, proc, (64, 2), "ddim", 10, x_init=x_init, **kw)
    d2 = sample(model, proc, (64, 2), "ddim", 10, x_init=x_init, generator=torch.Generator().manual_seed(9), **kw)
    assert torch.equal(d1, d2)
    e = sample(model, proc, (64, 2), "ddim", 10, x_init=x_init, eta=1.0, **kw)
    assert not torch.allclose(d1, e)


def test_rank_agnostic_shapes():
    proc = DiffusionProcess("cosine", "eps")

    def model(x, t, cond=None):
        assert t.shape == (x.shape[0],)
        return 0.5 * x

    for shape in [(3, 4), (2, 1, 4, 4), (2, 1, 3, 4, 5)]:
        for method in available_samplers():
            out = sample(model, proc, shape, method, 4, progress=False)
            assert out.shape == shape and torch.isfinite(out).all()


def test_classifier_free_guidance_combines_outputs():
    proc = DiffusionProcess("cosine", "eps")
    base = gaussian_2d().denoiser(proc)

    def model(x, t, cond=None):
        return base(x, t) + 0.1 * cond

    cond, null = torch.ones(16, 2), torch.zeros(16, 2)

    def combined(x, t, cond=None):  # eps_null + w (eps_cond - eps_null), w = 3
        return base(x, t) + 3 * 0.1 * torch.ones_like(x)

    x_init = torch.randn(16, 2)
    kw = dict(x_init=x_init, progress=False)
    guided = sample(model, proc, (16, 2), "dpmpp_2m", 10, cond=cond, null_cond=null, guidance=3.0, **kw)
    ref = sample(combined, proc, (16, 2), "dpmpp_2m", 10, cond=cond, **kw)
    assert torch.allclose(guided, ref, atol=1e-5)
    unbatched = sample(model, proc, (16, 2), "dpmpp_2m", 10, cond=cond, null_cond=0.0, guidance=3.0, **kw)
    assert torch.allclose(unbatched, ref, atol=1e-5)
    with pytest.raises(ValueError, match="needs a condition"):
        sample(model, proc, (16, 2), "ddim", 5, guidance=2.0, progress=False)


def _correlated_gaussian(rho: float):
    c = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    evals, u = torch.linalg.eigh(c)
    gm = GaussianMixture.gaussian(torch.zeros(2, dtype=torch.float64), evals.sqrt())
    return gm, u


def test_smc_inpainting_reproduces_the_exact_conditional():
    rho = 0.8
    gm, u = _correlated_gaussian(rho)
    proc = DiffusionProcess("cosine", "eps")
    base = gm.denoiser(proc)

    def model(x, t, cond=None):
        return base(x @ u, t) @ u.T

    y = torch.linspace(-1.5, 1.5, 8, dtype=torch.float64)
    known = torch.stack([y, torch.zeros_like(y)], 1)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(8, 2)
    x = smc_inpaint(model, proc, known, mask, particles=2000, steps=100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[..., 0], y[:, None].expand(8, 2000))
    cond_mean, cond_var = x[..., 1].mean(1), x[..., 1].var(1)
    slope = (cond_mean * y).sum() / (y * y).sum()
    assert slope.item() == pytest.approx(rho, abs=0.05)
    assert (cond_mean - rho * y).abs().max() < 0.15
    assert cond_var.mean().item() == pytest.approx(1 - rho**2, rel=0.12)

    # plain replacement is biased toward the prior; RePaint resampling moves it toward the truth
    def replacement_slope(resample):
        kn = torch.stack([torch.ones(4000, dtype=torch.float64), torch.zeros(4000, dtype=torch.float64)], 1)
        mk = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(4000, 2)
        out = sample(model, proc, (4000, 2), "ddpm", 50, known=kn, mask=mk, resample=resample,
                     generator=torch.Generator().manual_seed(1), progress=False, dtype=torch.float64)
        assert torch.equal(out[:, 0], kn[:, 0])
        return out[:, 1].mean().item()

    plain, repaint = replacement_slope(1), replacement_slope(5)
    assert abs(repaint - rho) < abs(plain - rho)


def test_bad_inputs_are_reported():
    proc = DiffusionProcess("cosine", "eps")
    with pytest.raises(ValueError, match="unknown sampler 'euler'; known samplers: ddim, ddpm, ddpm_beta, dpmpp_2m, euler_maruyama, heun, unipc, unipc_3, unipc_bh1"):
        sample(lambda x, t: x, proc, (2, 2), "euler", progress=False)
    with pytest.raises(ValueError, match=r"the model returned \(2, 3\); it must return a tensor of x_t's shape \(2, 2\)"):
        sample(lambda x, t: torch.zeros(2, 3), proc, (2, 2), "ddim", 3, progress=False)
    with pytest.raises(ValueError, match="eta applies to the 'ddim' sampler only"):
        sample(lambda x, t: x, proc, (2, 2), "ddpm", 3, eta=0.5, progress=False)
    with pytest.raises(ValueError, match="inpainting needs both"):
        sample(lambda x, t: x, proc, (2, 2), "ddpm", 3, known=torch.zeros(2, 2), progress=False)

    def explodes(x, t, cond=None):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("nan")), 0 * x)

    with pytest.raises(FloatingPointError, match=r"non-finite values appeared in sampling \(ddim\) at step 6 of 10 \(t = 0.4 -> 0.3\)"):
        sample(explodes, proc, (4, 2), "ddim", 10, t_max=1.0, progress=False)
