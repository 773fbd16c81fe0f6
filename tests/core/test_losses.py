import math

import pytest
import torch

from sciffusion.core import DiffusionProcess, GaussianMixture, get_schedule, log_likelihood, losses
from tests.core.gaussians import gaussian_2d, gaussian_16d


def test_denoising_loss_of_the_exact_model_is_the_irreducible_error(device):
    # per element, E|eps - E[eps | x_t]|^2 = alpha^2 s^2 / (alpha^2 s^2 + sigma^2) for N(m, s^2) data
    gm = GaussianMixture.gaussian(torch.tensor([0.3]), torch.tensor([0.7])).to(device)
    proc = DiffusionProcess("cosine", "eps")
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(400_000, g)
    loss = losses.denoising_loss(gm.denoiser(proc), proc, x0, generator=g, t_min=0.0)
    t = torch.linspace(0, 1, 100_001, dtype=torch.float64)
    a2, s2 = proc.alpha(t) ** 2, proc.sigma(t) ** 2
    expected = torch.trapezoid(a2 * 0.49 / (a2 * 0.49 + s2), t).item()
    assert loss.item() == pytest.approx(expected, abs=3e-3)
    # a wrong model does worse
    assert losses.denoising_loss(lambda x, t: 0 * x, proc, x0, generator=g).item() > expected + 0.1


def test_terminal_mass_puts_that_fraction_of_examples_at_t_equal_one():
    proc = DiffusionProcess(get_schedule("cosine"), prediction="v")
    seen = []

    def model(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    x0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    losses.denoising_loss(model, proc, x0, generator=torch.Generator().manual_seed(1), p_terminal=0.3)
    t = seen[0]
    at_one = (t == 1.0).float().mean().item()
    assert abs(at_one - 0.3) < 3 * (0.3 * 0.7 / 4000) ** 0.5
    rest = t[t < 1.0]
    assert abs(rest.mean().item() - 0.5) < 0.02  # the other examples stay uniform
    # the loss of the zero model at t = 1 is E|v|^2 = E|sigma_1 x0 - alpha_1 eps|^2
    seen.clear()
    full = losses.denoising_loss(model, proc, x0, generator=torch.Generator().manual_seed(1), p_terminal=1.0)
    a, s = proc.alpha(torch.ones(1)), proc.sigma(torch.ones(1))
    assert full.item() == pytest.approx((s**2 * 2 + a**2 * 2).item() / 2, rel=0.05)


def test_min_snr_weighting_is_the_same_x0_loss_for_every_prediction_type():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    values = {}
    for pred in ["eps", "x0", "v"]:
        proc = DiffusionProcess("cosine", pred)

        def model(x_t, t, cond=None, proc=proc):  # x0_hat = 0.5 x0 for every type
            x0_hat = 0.5 * x0
            return proc.convert(x0_hat, x_t, t, "x0", proc.prediction)

        values[pred] = losses.denoising_loss(model, proc, x0, weighting="min_snr", generator=torch.Generator().manual_seed(1)).item()
    assert values["eps"] == pytest.approx(values["x0"], rel=1e-6)
    assert values["v"] == pytest.approx(values["x0"], rel=1e-6)
    t = torch.tensor([0.1, 0.5, 0.99])
    proc = DiffusionProcess("cosine", "x0")
    snr = torch.exp(proc.log_snr(t))
    assert torch.allclose(losses.loss_weight(proc, t, "min_snr"), torch.clamp(snr, max=5.0))
    with pytest.raises(ValueError, match="unknown weighting 'snr'"):
        losses.loss_weight(proc, t, "snr")


def test_element_weights_and_shape_errors():
    proc = DiffusionProcess("linear", "eps")
    x0 = torch.randn(8, 2, 6)
    half = torch.cat([torch.zeros(3), torch.ones(3)])

    def model(x_t, t, cond=None):  # exact on the first half, wrong by 1 on the second
        return torch.cat([torch.zeros_like(x_t[..., :3]), torch.ones_like(x_t[..., 3:])], -1)

    plain = losses.denoising_loss(lambda x, t: torch.zeros_like(x), proc, x0, generator=torch.Generator().manual_seed(0))
    weighted = losses.denoising_loss(model, proc, x0, generator=torch.Generator().manual_seed(0), weights=half)
    only_zero = losses.denoising_loss(model, proc, x0, generator=torch.Generator().manual_seed(0), weights=1 - half)
    assert weighted.item() > only_zero.item()
    assert plain.item() > 0
    with pytest.raises(ValueError, match=r"the model returned shape \(8, 2\); expected x0's shape \(8, 2, 6\)"):
        losses.denoising_loss(lambda x, t: x[..., 0], proc, x0)


def test_cond_dropout_replaces_the_condition():
    proc = DiffusionProcess("linear", "eps")
    seen = []

    def model(x_t, t, cond=None):
        seen.append(cond.clone())
        return torch.zeros_like(x_t)

    cond = torch.ones(1000, 1)
    losses.denoising_loss(model, proc, torch.zeros(1000, 1), cond=cond, cond_dropout=0.3, null_cond=torch.zeros(1))
    dropped = (seen[0] == 0).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.05)


def _exact_nll(gm, x0):
    return -gm.log_prob(x0)


def _elbo_closed_form(proc, m, s, num_steps):
    """Expected ELBO terms (nats per example) of the exact model on `N(m, diag(s^2))` data: every term is a
    function of the posterior variance `v_i = s^2 sigma_i^2 / (alpha_i^2 s^2 + sigma_i^2)` = `E|x_0 - x0_hat|^2`."""
    grid = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    a, sg = proc.alpha(grid), proc.sigma(grid)
    snr = (a / sg) ** 2
    post = s**2 * sg[:, None] ** 2 / (a[:, None] ** 2 * s**2 + sg[:, None] ** 2)
    v1 = a[-1] ** 2 + sg[-1] ** 2
    prior = (0.5 * ((sg[-1] ** 2 + a[-1] ** 2 * (s**2 + m**2)) / v1 - 1 - torch.log(sg[-1] ** 2 / v1))).sum()
    diffusion = (0.5 * (snr[1:-1] - snr[2:]) * post[2:].sum(1)).sum()
    std2 = sg[1] ** 2 / a[1] ** 2
    reconstruction = (0.5 * (post[1] / std2 + torch.log(2 * math.pi * std2))).sum()
    return float(prior), float(diffusion), float(reconstruction)


@pytest.mark.parametrize("num_steps", [10, 1000])
def test_elbo_terms_match_their_closed_forms_on_gaussian_data(num_steps, device):
    gm = gaussian_2d()
    proc = DiffusionProcess("linear", "eps")
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(4000 if num_steps == 10 else 300, g)
    on_device = losses.elbo(gm.to(device).denoiser(proc), proc, x0.to(device), num_steps=num_steps, generator=g, chunk=250)
    assert on_device.total.device.type == device.type
    terms = type(on_device)(**{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in vars(on_device).items()})
    m, s = gm.means[0], gm.stds[0]
    prior, diffusion, reconstruction = _elbo_closed_form(proc, m, s, num_steps)
    n = len(x0)
    for got, want in [(terms.prior, prior), (terms.diffusion, diffusion), (terms.reconstruction, reconstruction)]:
        se = got.std().item() / math.sqrt(n)
        assert abs(got.mean().item() - want) < 4 * se + 1e-9, (num_steps, got.mean().item(), want, se)
    # the prior term is exact per example, not only in expectation
    a1, s1 = proc.alpha(torch.ones(1)).double(), proc.sigma(torch.ones(1)).double()
    v = a1**2 + s1**2
    per_example = (0.5 * ((s1**2 + a1**2 * x0**2) / v - 1 - torch.log(s1**2 / v))).sum(1)
    assert torch.allclose(terms.prior, per_example, rtol=1e-10)
    assert torch.allclose(terms.bits_per_dim(), terms.total / (2 * math.log(2)))


def test_elbo_gap_is_not_monotone_in_the_number_of_steps():
    """The expected gap of the bound over the exact NLL, from the closed forms: on the linear schedule it grows
    from T = 10 to T = 50, then shrinks towards about Euler's gamma / 2 nats per dimension (docs/core.md)."""
    gm = gaussian_2d()
    proc = DiffusionProcess("linear", "eps")
    m, s = gm.means[0], gm.stds[0]
    entropy = float((0.5 * torch.log(2 * math.pi * math.e * s**2)).sum())
    gap = {k: sum(_elbo_closed_form(proc, m, s, k)) - entropy for k in (10, 50, 100, 1000, 10_000)}
    assert gap[10] == pytest.approx(1.508, abs=1e-3) and gap[100] == pytest.approx(1.692, abs=1e-3)
    assert gap[10] < gap[100] < gap[50] and gap[1000] < gap[10] and gap[10_000] < gap[1000]
    assert gap[10_000] == pytest.approx(0.5772 * 2 / 2, abs=0.06)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_vdm_elbo_matches_its_closed_form_on_gaussian_data(schedule):
    """Continuous-time diffusion term: 1/2 sum_d log((1 + SNR_max s_d^2) / (1 + SNR_1 s_d^2)); the
    reconstruction term: 1/2 sum_d (v_d / var + log(2 pi var)), var = 1 / SNR_max, v_d the posterior variance."""
    gm = gaussian_2d()
    proc = DiffusionProcess(schedule, "eps")
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(4000, g)
    terms = losses.vdm_elbo(gm.denoiser(proc), proc, x0, num_samples=16, t_min=1e-3, generator=g)
    s = gm.stds[0]
    snr_1, snr_max = torch.exp(proc.schedule.log_snr_fn(torch.tensor([1.0, 1e-3], dtype=torch.float64))).tolist()
    diffusion = float((0.5 * torch.log((1 + snr_max * s**2) / (1 + snr_1 * s**2))).sum())
    post = s**2 / (1 + snr_max * s**2)
    reconstruction = float((0.5 * (post * snr_max + torch.log(2 * math.pi / torch.tensor(snr_max)))).sum())
    for got, want in [(terms.diffusion, diffusion), (terms.reconstruction, reconstruction)]:
        se = got.std().item() / math.sqrt(len(x0))
        assert abs(got.mean().item() - want) < 4 * se + 1e-9, (got.mean().item(), want, se)
    # in expectation the continuous bound lies above the exact NLL (the entropy; within 1e-3 nats here: nearly
    # tight) and below the discrete bound at T = 1000 (0.8-0.9 nats above it)
    prior = _elbo_closed_form(proc, gm.means[0], s, 10)[0]
    total = prior + diffusion + reconstruction
    entropy = float((0.5 * torch.log(2 * math.pi * math.e * s**2)).sum())
    assert entropy - 1e-6 < total < entropy + 1e-3 and total + 0.5 < sum(_elbo_closed_form(proc, gm.means[0], s, 1000))
    assert abs(terms.total.mean().item() - total) < 4 * terms.total.std().item() / math.sqrt(len(x0))


def test_discretized_decoder_is_a_probability_over_bins():
    from sciffusion.core.diffusion.elbo import _discretized_log_likelihood

    w = 2 / 255
    centres = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, std in [(0.1, 0.05), (-0.99, 0.2), (0.5, 1e-3)]:
        logp = _discretized_log_likelihood(centres, torch.full_like(centres, mean), std, w, -1.0, 1.0)
        assert torch.exp(logp).sum().item() == pytest.approx(1.0, abs=1e-9)


def test_elbo_bad_inputs():
    proc = DiffusionProcess("linear", "eps")
    with pytest.raises(ValueError, match="needs a positive bin_width"):
        losses.elbo(lambda x, t: x, proc, torch.zeros(2, 2), decoder="discretized")
    with pytest.raises(ValueError, match="unknown decoder 'laplace'"):
        losses.elbo(lambda x, t: x, proc, torch.zeros(2, 2), decoder="laplace")


@pytest.mark.parametrize("gm_fn", [gaussian_2d, gaussian_16d], ids=["d2", "d16"])
def test_probability_flow_likelihood_matches_the_exact_density(gm_fn, device):
    gm = gm_fn()
    proc = DiffusionProcess("cosine", "eps")
    x0 = gm.sample(64, torch.Generator().manual_seed(0))
    ll = log_likelihood(gm.to(device).denoiser(proc), proc, x0.to(device), steps=40)
    assert ll.device.type == device.type
    ll = ll.cpu()
    exact = gm.log_prob(x0)
    assert ((ll - exact).abs() / exact.abs()).max() < 0.01
    assert (ll - exact).abs().mean() < 0.01 * exact.abs().mean()


def test_hutchinson_divergence_is_unbiased():
    """On a rotated, correlated Gaussian (the Jacobian of the drift is not diagonal, so a Rademacher probe does
    not give the trace exactly) the probe average agrees with the exact divergence within its standard error."""
    gm = gaussian_16d()
    g = torch.Generator().manual_seed(0)
    rot, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    proc = DiffusionProcess("cosine", "eps")
    inner = gm.denoiser(proc)

    def rotated(x, t, cond=None):  # data x = R y, y ~ N(m, diag(s^2)); eps rotates with x
        return inner(x @ rot, t) @ rot.T

    x0 = (gm.sample(4, g) @ rot.T).repeat_interleave(128, 0)
    exact = log_likelihood(rotated, proc, x0[::128], steps=20, hutchinson=False)
    assert torch.allclose(exact, gm.log_prob(x0[::128] @ rot), rtol=0.03)  # 20 RK4 steps
    ll = log_likelihood(rotated, proc, x0, steps=20, hutchinson=True, generator=torch.Generator().manual_seed(1))
    per = ll.reshape(4, 128)
    se = per.std(1) / math.sqrt(128)
    assert (se > 0.05).all(), se  # the probes do scatter here: a biased estimator would show
    assert ((per.mean(1) - exact).abs() < 4 * se).all(), (per.mean(1) - exact, se)
