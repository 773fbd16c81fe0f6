import pytest
import torch

from sciffusion.core import DiffusionProcess, get_schedule
from sciffusion.core.diffusion.process import PREDICTIONS


def _t(b, value, dtype=torch.float64):
    return torch.full((b,), value, dtype=dtype)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_forward_step_over_ddpm_grid_reproduces_add_noise_marginal(name):
    proc = DiffusionProcess(name)
    T, n = 50, 200_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    x = x0.clone()
    betas = proc.schedule.betas(T)
    for i in range(1, T + 1):
        s, t = _t(n, (i - 1) / T), _t(n, i / T)
        a_ts, var_ts = proc.transition(s[:1], t[:1])
        # the DDPM one-step transition x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) eps
        assert a_ts.item() == pytest.approx((1 - betas[i - 1]).sqrt().item(), rel=1e-10)
        assert var_ts.item() == pytest.approx(betas[i - 1].item(), rel=1e-8)
        x = proc.forward_step(x, s, t, generator=g)
    tt = _t(1, 1.0)
    mean, std = proc.alpha(tt).item() * 1.5, proc.sigma(tt).item()
    assert x.mean().item() == pytest.approx(mean, abs=4 * std / n**0.5)
    assert x.std().item() == pytest.approx(std, rel=4 / (2 * n) ** 0.5)
    direct, _ = proc.add_noise(x0, _t(n, 1.0), generator=g)
    assert direct.std().item() == pytest.approx(x.std().item(), rel=0.01)


@pytest.mark.parametrize("s_val,t_val", [(0.1, 0.3), (0.5, 0.52), (0.0, 0.9), (0.7, 1.0)])
def test_posterior_matches_brute_force_bayes(s_val, t_val):
    proc = DiffusionProcess("cosine")
    x0, xt = torch.tensor([[0.7]], dtype=torch.float64), torch.tensor([[-0.4]], dtype=torch.float64)
    s, t = _t(1, s_val), _t(1, t_val)
    mean, var = proc.posterior(x0, xt, s, t)
    if s_val == 0.0:
        assert mean.item() == pytest.approx(0.7) and var.item() == pytest.approx(0.0, abs=1e-15)
        return
    # p(x_s | x_t, x0) ∝ q(x_s | x0) q(x_t | x_s) on a fine grid
    a_s, sg_s = proc.alpha(s).item(), proc.sigma(s).item()
    a_ts, var_ts = (v.item() for v in proc.transition(s, t))
    grid = torch.linspace(a_s * 0.7 - 10 * sg_s, a_s * 0.7 + 10 * sg_s, 400_001, dtype=torch.float64)
    logp = -0.5 * (grid - a_s * 0.7) ** 2 / sg_s**2 - 0.5 * (-0.4 - a_ts * grid) ** 2 / var_ts
    w = torch.softmax(logp, 0)
    bf_mean = (w * grid).sum()
    bf_var = (w * (grid - bf_mean) ** 2).sum()
    assert mean.item() == pytest.approx(bf_mean.item(), rel=1e-6, abs=1e-9)
    assert var.item() == pytest.approx(bf_var.item(), rel=1e-5)


@pytest.mark.parametrize("shape", [(5, 3), (5, 2, 4, 4), (5, 1, 3, 4, 2)])
def test_conversions_round_trip_for_any_rank(shape):
    proc = DiffusionProcess("cosine")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.98 + 0.01
    x_t, eps = proc.add_noise(x0, t, generator=g)
    truth = {"eps": eps, "x0": x0}
    a = proc.alpha(t).reshape(-1, *[1] * (len(shape) - 1))
    sg = proc.sigma(t).reshape(-1, *[1] * (len(shape) - 1))
    truth["v"] = a * eps - sg * x0
    truth["score"] = -eps / sg
    for src in PREDICTIONS:
        for dst in PREDICTIONS:
            out = proc.convert(truth[src], x_t, t, src, dst)
            assert out.shape == x_t.shape
            assert torch.allclose(out, truth[dst], rtol=1e-9, atol=1e-9), (src, dst)
    for pred in PREDICTIONS:
        p = DiffusionProcess("cosine", pred)
        assert torch.allclose(p.target(x0, eps, t), truth[pred])
        assert torch.allclose(p.predict_x0(truth[pred], x_t, t), x0, atol=1e-9)


def test_bad_inputs_are_named():
    proc = DiffusionProcess("linear")
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        proc.add_noise(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        proc.add_noise(x, torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]; found \[1.5"):
        proc.add_noise(x, torch.tensor([0.1, 1.5, 0.2, 0.3]))
    with pytest.raises(TypeError, match="floating-point"):
        proc.add_noise(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown prediction type 'noise'; expected one of eps, x0, v, score"):
        DiffusionProcess("linear", "noise")
    with pytest.raises(ValueError, match="noise has shape"):
        proc.add_noise(x, torch.zeros(4), noise=torch.zeros(4, 3))


def test_json_round_trip():
    proc = DiffusionProcess(get_schedule("cosine", offset=0.01), prediction="v")
    back = DiffusionProcess.from_dict(proc.to_dict())
    t = torch.linspace(0, 1, 11)
    assert back.prediction == "v" and torch.equal(back.alpha(t), proc.alpha(t))
