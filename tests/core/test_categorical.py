"""Math of the categorical diffusion process: marginals, posterior, ELBO terms, sampler step."""

import pytest
import torch

from sciffusion.core.categorical import CategoricalProcess

K = 5
MARGINAL = torch.tensor([0.5, 0.3, 0.1, 0.07, 0.03])


def _procs():
    return [CategoricalProcess("cosine", K, "uniform"),
            CategoricalProcess("linear", K, "marginal", marginal=MARGINAL)]


@pytest.mark.parametrize("proc", _procs(), ids=["uniform", "marginal"])
def test_marginal_matches_product_of_one_step_matrices(proc):
    # q(x_t | x_0) from the closed form equals the product of the one-step matrices Q_1 ... Q_i.
    steps = 50
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    prod = torch.eye(K, dtype=torch.float64)
    for i in range(1, steps + 1):
        prod = prod @ proc.matrix(grid[i - 1: i], grid[i: i + 1])[0]
        if i in (1, 10, 37, 50):
            closed = proc.cumulative_matrix(grid[i: i + 1])[0] @ torch.linalg.inv(proc.cumulative_matrix(grid[:1])[0])
            torch.testing.assert_close(prod, closed, atol=1e-10, rtol=1e-8)
    # rows are distributions and the stationary distribution is m
    torch.testing.assert_close(prod.sum(1), torch.ones(K, dtype=torch.float64))
    torch.testing.assert_close(proc.m @ proc.matrix(grid[3:4], grid[40:41])[0], proc.m)


@pytest.mark.parametrize("proc", _procs(), ids=["uniform", "marginal"])
def test_q_probs_equal_rows_of_cumulative_matrix(proc):
    t = torch.tensor([0.1, 0.5, 0.99], dtype=torch.float64)
    x0 = torch.tensor([0, 2, 4])
    onehot = torch.nn.functional.one_hot(x0, K).double()
    q = proc.q_probs(onehot, t)
    mats = proc.cumulative_matrix(t)
    torch.testing.assert_close(q, mats[torch.arange(3), x0])


@pytest.mark.parametrize("proc", _procs(), ids=["uniform", "marginal"])
def test_posterior_equals_bayes_brute_force(proc):
    s = torch.tensor([0.2, 0.4, 0.05], dtype=torch.float64)
    t = torch.tensor([0.3, 0.9, 0.5], dtype=torch.float64)
    for x0 in range(K):
        for xt in range(K):
            b = torch.full((3,), x0), torch.full((3,), xt)
            post = proc.posterior(b[0], b[1], s, t)
            qs = proc.cumulative_matrix(s)[:, x0, :]          # q(x_s = j | x_0)
            qts = proc.matrix(s, t)[:, :, xt]                 # q(x_t | x_s = j)
            joint = qs * qts
            torch.testing.assert_close(post, joint / joint.sum(1, keepdim=True))


def test_elbo_terms_nonnegative_and_zero_for_perfect_model():
    proc = CategoricalProcess("cosine", K, "marginal", marginal=MARGINAL)
    g = torch.Generator().manual_seed(0)
    n = 64
    x0 = torch.randint(0, K, (n,), generator=g)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.1
    s = t - 0.05
    xt = proc.sample_xt(x0, t, generator=g)
    logits = torch.randn(n, K, generator=g)
    kl = proc.kl_step(x0, xt, logits, s, t)
    assert (kl >= -1e-12).all() and kl.max() > 1e-3
    perfect = torch.nn.functional.one_hot(x0, K).double() * 60.0
    assert proc.kl_step(x0, xt, perfect, s, t).abs().max() < 1e-10
    prior = proc.kl_prior(x0)
    assert (prior >= 0).all() and prior.max() < 1e-3          # abar_1 ~ 0 for the clipped cosine
    assert (proc.reconstruction_nll(x0, logits) >= 0).all()


def test_sample_xt_frequencies_match_q():
    proc = CategoricalProcess("cosine", K, "marginal", marginal=MARGINAL)
    g = torch.Generator().manual_seed(1)
    n = 40000
    x0 = torch.full((n,), 1)
    t = torch.full((n,), 0.6, dtype=torch.float64)
    xt = proc.sample_xt(x0, t, generator=g)
    freq = torch.bincount(xt, minlength=K).double() / n
    expected = proc.q_probs(torch.nn.functional.one_hot(x0[:1], K).double(), t[:1])[0]
    assert (freq - expected).abs().max() < 0.01


def test_reverse_step_with_true_x0_follows_posterior():
    proc = CategoricalProcess("linear", K, "uniform")
    g = torch.Generator().manual_seed(2)
    n = 40000
    x0, xt = torch.full((n,), 3), torch.full((n,), 0)
    s, t = torch.full((n,), 0.3, dtype=torch.float64), torch.full((n,), 0.5, dtype=torch.float64)
    logits = torch.nn.functional.one_hot(x0, K).float() * 50
    xs = proc.step(xt, logits, s, t, generator=g)
    freq = torch.bincount(xs, minlength=K).double() / n
    assert (freq - proc.posterior(x0[:1], xt[:1], s[:1], t[:1])[0]).abs().max() < 0.01


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="transition"):
        CategoricalProcess("cosine", K, "absorbing")
    with pytest.raises(ValueError, match="marginal"):
        CategoricalProcess("cosine", K, "marginal")
    with pytest.raises(ValueError, match="num_classes"):
        CategoricalProcess("cosine", 1)
