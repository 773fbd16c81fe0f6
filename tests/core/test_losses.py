import math

import pytest
import torch

from sciffusion.core import DiffusionProcess, GaussianMixture, log_likelihood, losses
from tests.core.conftest import gaussian_2d, gaussian_16d


def test_denoising_loss_of_the_exact_model_is_the_irreducible_error():
    # per element, E|eps - E[eps | x_t]|^2 = alpha^2 s^2 / (alpha^2 s^2 + sigma^2) for N(m, s^2) data
    gm = GaussianMixture.gaussian(torch.tensor([0.3]), torch.tensor([0.7]))
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


def test_elbo_bounds_the_exact_nll_and_tightens_with_more_steps():
    gm = gaussian_2d()
    proc = DiffusionProcess("linear", "eps")
    model = gm.denoiser(proc)
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(2000, g)
    exact = _exact_nll(gm, x0).mean().item()
    gaps = []
    for steps in (10, 100, 1000):
        terms = losses.elbo(model, proc, x0, num_steps=steps, generator=g, num_samples=None if steps < 1000 else 100)
        nll = terms.total.mean().item()
        se = terms.total.std().item() / math.sqrt(len(x0))
        assert nll > exact - 3 * se, (steps, nll, exact)
        gaps.append(nll - exact)
        assert torch.allclose(terms.bits_per_dim(), terms.total / (2 * math.log(2)))
        assert (terms.prior >= 0).all() and (terms.diffusion >= 0).all()
    # The first steps of the t_i = i / T grid span a fixed SNR ratio (i + 1) / i whatever T is, so part of the
    # gap stays as T grows (about Euler's gamma / 2 nats per dimension with fixed-variance reverse kernels);
    # the rest shrinks.
    assert gaps[2] < gaps[0] and gaps[2] < gaps[1], gaps
    assert gaps[2] < 0.6 * x0.shape[1], gaps


def test_discretized_decoder_is_a_probability_over_bins():
    from sciffusion.core.elbo import _discretized_log_likelihood

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
def test_probability_flow_likelihood_matches_the_exact_density(gm_fn):
    gm = gm_fn()
    proc = DiffusionProcess("cosine", "eps")
    x0 = gm.sample(64, torch.Generator().manual_seed(0))
    ll = log_likelihood(gm.denoiser(proc), proc, x0, steps=40)
    exact = gm.log_prob(x0)
    assert ((ll - exact).abs() / exact.abs()).max() < 0.01
    assert (ll - exact).abs().mean() < 0.01 * exact.abs().mean()


def test_hutchinson_divergence_is_unbiased():
    gm = gaussian_16d()
    proc = DiffusionProcess("cosine", "eps")
    x0 = gm.sample(4, torch.Generator().manual_seed(0)).repeat_interleave(128, 0)
    ll = log_likelihood(gm.denoiser(proc), proc, x0, steps=20, hutchinson=True, generator=torch.Generator().manual_seed(1))
    exact = gm.log_prob(x0[::128])
    est = ll.reshape(4, 128).mean(1)
    assert (est - exact).abs().max() < 0.03 * exact.abs().max()
