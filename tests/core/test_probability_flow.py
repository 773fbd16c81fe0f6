"""The pieces both engines share: the divergence estimator, the probability-flow integrator, the time grids,
the reverse-time loop, and the named steps of `sample`."""

import math

import pytest
import torch

from sciffusion.core import DiffusionProcess, get_schedule
from sciffusion.core.chain import run_chain
from sciffusion.core.diffusion.samplers import (
    _constraint,
    _start_point,
    ancestral_mean,
    noise_source,
    step_intervals,
)
from sciffusion.core.grids import ANGLE_POWER, time_grid
from sciffusion.core.probability_flow import (
    divergence,
    flow_log_likelihood,
    rademacher_probe,
    stage_times,
)

F64 = torch.float64


def test_divergence_is_the_trace_of_the_jacobian_exact_and_hutchinson():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=g, dtype=F64)
    x = torch.randn(3, 5, generator=g, dtype=F64)
    out, div = divergence(lambda z: z @ a.T + z**3, x)
    assert torch.allclose(out, x @ a.T + x**3)
    assert torch.allclose(div, torch.trace(a) + (3 * x**2).sum(1))
    # Hutchinson: v^T J v, exact for a diagonal Jacobian, unbiased otherwise
    _, div_diag = divergence(lambda z: z**3, x, rademacher_probe(x, g))
    assert torch.allclose(div_diag, (3 * x**2).sum(1))
    many = x[:1].expand(20000, 5)
    _, est = divergence(lambda z: z @ a.T, many, rademacher_probe(many, g))
    assert abs(float(est.mean()) - float(torch.trace(a))) < 4 * float(est.std()) / math.sqrt(20000)
    assert set(rademacher_probe(many, g).unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize(("method", "order"), [("heun", 2), ("rk4", 4)])
def test_flow_log_likelihood_converges_at_the_order_of_its_tableau(method, order):
    """dy/dt = c y carries N(0, s^2) at t = 0 to N(0, e^{2cT} s^2) at T: log p_0 is known in closed form."""
    c, s, big_t = 1.5, 0.7, 1.0
    x = torch.linspace(-2, 2, 5, dtype=F64)[:, None]

    def field(y, t):
        return c * y, torch.full((y.shape[0],), c, dtype=F64)

    def log_prior(y):
        var = s * s * math.exp(2 * c * big_t)
        return -0.5 * y[:, 0] ** 2 / var - 0.5 * math.log(2 * math.pi * var)

    exact = -0.5 * x[:, 0] ** 2 / (s * s) - 0.5 * math.log(2 * math.pi * s * s)
    errs = []
    for n in (8, 16):
        times = torch.linspace(0.0, big_t, n + 1, dtype=F64).tolist()
        errs.append(float((flow_log_likelihood(field, x, times, log_prior, method=method) - exact).abs().max()))
    assert 0.7 * order < math.log2(errs[0] / errs[1]) < 1.3 * order
    with pytest.raises(ValueError, match="unknown ODE method 'euler'"):
        flow_log_likelihood(field, x, [0.0, 1.0], log_prior, method="euler")


def test_stage_times_share_the_grid_points():
    assert stage_times([0.0, 1.0, 3.0], "rk4") == [0.0, 0.5, 1.0, 2.0, 3.0]
    assert stage_times([1.0, 0.5, 0.25], "heun") == [1.0, 0.5, 0.25]


def test_time_grid_serves_both_time_axes():
    geo = time_grid(None, 4, "geometric", t_max=8.0, t_min=0.01)
    assert torch.allclose(geo, 8.0 * (0.01 / 8.0) ** (torch.arange(5, dtype=F64) / 4))
    assert time_grid(None, 2, "uniform", t_max=6.0, t_min=0.0).tolist() == [6.0, 3.0, 0.0]
    with pytest.raises(ValueError, match="the angle grid follows a schedule's noise levels"):
        time_grid(None, 4, "angle")
    with pytest.raises(ValueError, match=r"need 0 <= t_min < t_max <= 1"):
        time_grid(get_schedule("cosine"), 4, "uniform", t_max=2.0)


def test_angle_grid_spaces_the_vp_angle_by_its_power():
    """phi(t_i) = phi(t_min) + (phi(t_max) - phi(t_min)) u_i^p with u_i = 1 - i / N, phi = atan(sigma / alpha)."""
    sched = get_schedule("linear")
    for power in (1.0, 1.5, 3.0):
        ts = time_grid(sched, 8, "angle", t_max=0.9, t_min=0.05, power=power)
        phi = torch.atan(torch.exp(-0.5 * sched.log_snr_fn(ts)))
        u = torch.linspace(1.0, 0.0, 9, dtype=F64)
        assert torch.allclose(phi, phi[-1] + (phi[0] - phi[-1]) * u**power, atol=1e-9)
    default = time_grid(sched, 8, "angle", t_max=0.9, t_min=0.05)
    assert torch.equal(default, time_grid(sched, 8, "angle", t_max=0.9, t_min=0.05, power=ANGLE_POWER))
    assert not torch.equal(default, time_grid(sched, 8, "angle", t_max=0.9, t_min=0.05, power=2.0))
    with pytest.raises(ValueError, match="power must be a positive exponent of the angle or power grid"):
        time_grid(sched, 8, "uniform", power=2.0)
    with pytest.raises(ValueError, match="power must be a positive exponent"):
        time_grid(sched, 8, "angle", power=0.0)


def test_power_grid_is_t_to_the_power_and_stays_strict_at_many_steps():
    u = torch.linspace(1.0, 0.0, 11, dtype=F64)
    assert torch.allclose(time_grid(None, 10, "power", power=5.0), u**5, rtol=0, atol=1e-15)
    assert torch.allclose(time_grid(None, 10, "power", t_max=3.0, t_min=1.0), 1.0 + 2.0 * u**2, atol=1e-15)
    fine = time_grid(None, 5000, "power", power=5.0)  # last gaps ~1e-19: still strictly decreasing
    assert bool((fine[1:] < fine[:-1]).all()) and fine[-1] == 0.0 and fine[-2] > 0.0


def test_run_chain_reports_the_first_bad_step_after_the_loop():
    seen = []

    def step(x, i, state):
        return (x * float("nan") if i == 2 else x + 1), (state or 0) + 1

    x = torch.zeros(3)
    times = [1.0, 0.75, 0.5, 0.25, 0.0]
    assert run_chain(lambda x, i, s: (x + 1, None), x, times).tolist() == [4.0] * 3
    with pytest.raises(FloatingPointError, match=r"in demo at step 2 of 4 \(t = 0.5 -> 0.25\); look"):
        run_chain(step, x, times, label="demo", hint="look", callback=lambda info: seen.append(info["step"]))
    assert seen == [0, 1, 2, 3]  # the loop ran to the end: no host sync inside it


def test_ancestral_mean_and_std_are_the_posterior_q_xs_given_xt_x0():
    proc = DiffusionProcess(get_schedule("cosine"), prediction="eps")
    g = torch.Generator().manual_seed(0)
    ivs = step_intervals(proc, time_grid(proc.schedule, 4, "uniform"))
    x_t, eps = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, 3, generator=g, dtype=F64)
    for iv in ivs[:-1]:
        x0 = (x_t - iv.sigma_t * eps) / iv.alpha_t
        mean, var = proc.posterior(x0, x_t, torch.full((6,), iv.s, dtype=F64), torch.full((6,), iv.t, dtype=F64))
        assert torch.allclose(ancestral_mean(x_t, eps, iv), mean)
        assert math.isclose(iv.ancestral_std**2, float(var[0]), rel_tol=1e-9)


def test_sample_steps_start_point_and_constraint():
    shape, dev = (4, 2), torch.device("cpu")
    noise = noise_source(shape, torch.Generator().manual_seed(0), dev, F64)
    proc = DiffusionProcess(get_schedule("cosine"), prediction="eps")
    first = step_intervals(proc, time_grid(proc.schedule, 2, "uniform", t_max=0.5))[0]
    x = _start_point(first, shape, noise, None, dev, F64)
    assert x.shape == shape and x.dtype == F64
    with pytest.raises(ValueError, match=r"x_init has shape \(3, 2\), expected \(4, 2\)"):
        _start_point(first, shape, noise, torch.zeros(3, 2), dev, F64)
    known, mask = torch.full(shape, 5.0), torch.tensor([[1.0, 0.0]] * 4)
    impose = _constraint(shape, known, mask, lambda z: z - 1, noise, dev, F64)
    out = impose(torch.zeros(shape, dtype=F64), 0.5, 0.0)  # sigma = 0: the known values themselves, then project
    assert out[:, 0].tolist() == [1.5] * 4 and out[:, 1].tolist() == [-1.0] * 4
    with pytest.raises(ValueError, match="must both have the sample shape"):
        _constraint(shape, known[:2], mask[:2], None, noise, dev, F64)
