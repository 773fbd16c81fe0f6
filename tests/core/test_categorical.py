"""Math of the categorical diffusion process: marginals, posterior, ELBO terms, sampler step."""

import pytest
import torch

from sciffusion.core.diffusion.categorical import CategoricalProcess

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


DATA = torch.tensor([0.05, 0.6, 0.05, 0.25, 0.05], dtype=torch.float64)   # a data law unlike MARGINAL


def _exact_x0_probs(proc, t):
    """The exact denoiser of data law DATA: p(x_0 = k | x_t = i) ∝ DATA_k Qbar_t[k, i], (K_i, K_k)."""
    joint = DATA[:, None] * proc.cumulative_matrix(t)[0]                 # (k, i)
    return (joint / joint.sum(0, keepdim=True)).t()


@pytest.mark.parametrize("proc", _procs(), ids=["uniform", "marginal"])
def test_reverse_step_of_exact_denoiser_is_brute_force_reverse_marginal(proc):
    # p(x_s | x_t) built from the exact p(x_0 | x_t) must equal q(x_s | x_t) by Bayes over (x_0, x_s):
    # q(x_s = j | x_t = i) ∝ sum_k DATA_k Qbar_s[k, j] Q_{t|s}[j, i].
    for s_, t_ in ((0.2, 0.3), (0.05, 0.5), (0.6, 0.9)):
        s, t = torch.tensor([s_], dtype=torch.float64), torch.tensor([t_], dtype=torch.float64)
        xt = torch.arange(K)
        model = proc.posterior_from_x0_probs(xt[None], _exact_x0_probs(proc, t)[None], s, t)[0]   # (i, j)
        joint = (DATA @ proc.cumulative_matrix(s)[0])[:, None] * proc.matrix(s, t)[0]           # (j, i)
        torch.testing.assert_close(model, (joint / joint.sum(0, keepdim=True)).t(), atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("proc", _procs(), ids=["uniform", "marginal"])
def test_ancestral_chain_of_exact_denoiser_recovers_the_data_law(proc):
    # Propagate the law of x_t exactly through 20 reverse steps from the true law at t = 1:
    # law_s(j) = sum_i law_t(i) p(x_s = j | x_t = i). An exact denoiser must give DATA at t = 0.
    steps = 20
    law = DATA @ proc.cumulative_matrix(torch.ones(1, dtype=torch.float64))[0]
    for i in range(steps, 0, -1):
        s = torch.tensor([(i - 1) / steps], dtype=torch.float64)
        t = torch.tensor([i / steps], dtype=torch.float64)
        step = proc.posterior_from_x0_probs(torch.arange(K)[None], _exact_x0_probs(proc, t)[None], s, t)[0]
        law = law @ step
    torch.testing.assert_close(law, DATA, atol=1e-9, rtol=1e-7)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="transition"):
        CategoricalProcess("cosine", K, "absorbing")
    with pytest.raises(ValueError, match="marginal"):
        CategoricalProcess("cosine", K, "marginal")
    with pytest.raises(ValueError, match="num_classes"):
        CategoricalProcess("cosine", 1)


# ----------------------------------------------------------------------------- several fields
def _joint():
    from sciffusion.core.diffusion.categorical import JointCategoricalProcess

    return JointCategoricalProcess({"X": CategoricalProcess("cosine", 3, "marginal", marginal=torch.tensor([0.6, 0.3, 0.1])),
                                    "E": CategoricalProcess("cosine", 2, "marginal", marginal=torch.tensor([0.7, 0.3]))},
                                   symmetric=("E",))


def _all_states(n):
    """Every (X, E) of a graph with n nodes, 3 node classes, 2 edge classes (E symmetric, zero diagonal)."""
    import itertools

    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for xs in itertools.product(range(3), repeat=n):
        for es in itertools.product(range(2), repeat=len(pairs)):
            E = torch.zeros(n, n, dtype=torch.long)
            for (i, j), e in zip(pairs, es):
                E[i, j] = E[j, i] = e
            yield torch.tensor(xs), E


def _forward_prob(proc, x0, xt, s, t):
    """q(x_t | x_s) of a whole graph by brute force: product over nodes and over edges i < j."""
    px = proc.fields["X"].matrix(s, t)[0]
    pe = proc.fields["E"].matrix(s, t)[0]
    n = x0["X"].shape[0]
    p = torch.prod(px[x0["X"], xt["X"]])
    iu = torch.triu_indices(n, n, 1)
    return p * torch.prod(pe[x0["E"][iu[0], iu[1]], xt["E"][iu[0], iu[1]]])


def test_joint_posterior_and_kl_equal_brute_force_bayes_over_whole_graphs():
    # q(G_s | G_t, G_0) by enumerating all graphs of 3 nodes (27 node states x 8 edge states),
    # compared with the factorised posterior; and the factorised KL against the enumerated KL.
    proc = _joint()
    s, t = torch.tensor([0.35], dtype=torch.float64), torch.tensor([0.6], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    g0 = {"X": torch.tensor([0, 2, 1]), "E": torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]])}
    gt = {"X": torch.tensor([1, 2, 0]), "E": torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0]])}
    states = list(_all_states(3))
    joint = torch.stack([_forward_prob(proc, g0, {"X": X, "E": E}, zero, s)
                         * _forward_prob(proc, {"X": X, "E": E}, gt, s, t) for X, E in states])
    bayes = joint / joint.sum()
    px = proc.fields["X"].posterior(g0["X"][None], gt["X"][None], s, t)[0]           # (3, 3)
    pe = proc.fields["E"].posterior(g0["E"][None], gt["E"][None], s, t)[0]           # (3, 3, 2)
    iu = torch.triu_indices(3, 3, 1)
    fact = torch.stack([torch.prod(px[torch.arange(3), X]) * torch.prod(pe[iu[0], iu[1], E[iu[0], iu[1]]])
                        for X, E in states])
    torch.testing.assert_close(fact, bayes, atol=1e-12, rtol=1e-9)
    # KL to a model posterior built from arbitrary logits: enumerated vs factorised sum over elements
    g = torch.Generator().manual_seed(3)
    logits = {"X": torch.randn(1, 3, 3, generator=g), "E": torch.randn(1, 3, 3, 2, generator=g)}
    logits["E"] = logits["E"] + logits["E"].transpose(1, 2)
    qx = proc.fields["X"].posterior_from_x0_probs(gt["X"][None], logits["X"].softmax(-1).double(), s, t)[0]
    qe = proc.fields["E"].posterior_from_x0_probs(gt["E"][None], logits["E"].softmax(-1).double(), s, t)[0]
    model = torch.stack([torch.prod(qx[torch.arange(3), X]) * torch.prod(qe[iu[0], iu[1], E[iu[0], iu[1]]])
                         for X, E in states])
    kl_brute = (bayes * (bayes.log() - model.log())).sum()
    batch0 = {k: v[None] for k, v in g0.items()}
    batcht = {k: v[None] for k, v in gt.items()}
    kl = proc.kl_step(batch0, batcht, logits, s, t)
    torch.testing.assert_close(kl["X"] + kl["E"], kl_brute[None], atol=1e-10, rtol=1e-8)


def test_symmetric_field_is_noised_once_per_pair_and_padding_is_kept():
    proc = _joint()
    g = torch.Generator().manual_seed(4)
    B, n = 4000, 4
    node_mask = torch.tensor([True, True, True, False]).expand(B, n)
    mask = {"X": node_mask, "E": node_mask[:, :, None] & node_mask[:, None, :]}
    x0 = {"X": torch.zeros(B, n, dtype=torch.long), "E": torch.ones(B, n, n, dtype=torch.long)}
    t = torch.full((B,), 0.7, dtype=torch.float64)
    xt = proc.sample_xt(x0, t, mask, g)
    assert torch.equal(xt["E"], xt["E"].transpose(1, 2))
    assert (xt["E"][:, 3, :] == 1).all() and (xt["E"][:, range(n), range(n)] == 1).all()  # padding, diagonal kept
    assert (xt["X"][:, 3] == 0).all()
    expected = proc.fields["E"].q_probs(torch.tensor([[0.0, 1.0]], dtype=torch.float64), t[:1])[0, 1]
    freq = (xt["E"][:, 0, 1] == 1).double().mean()
    assert abs(freq - expected) < 0.02
    # pairs (0,1) and (1,2) are independent draws, not copies
    assert (xt["E"][:, 0, 1] != xt["E"][:, 1, 2]).any()
    prior = proc.sample_prior(x0, mask, g)
    assert torch.equal(prior["E"], prior["E"].transpose(1, 2)) and (prior["E"][:, 3] == 1).all()
    step = proc.step(xt, {"X": torch.zeros(B, n, 3), "E": torch.zeros(B, n, n, 2)}, t - 0.1, t, mask, g)
    assert torch.equal(step["E"], step["E"].transpose(1, 2)) and (step["E"][:, 3] == 1).all()


def test_joint_elbo_terms_are_labelled_and_zero_for_a_perfect_denoiser():
    proc = _joint()
    n = 3
    node_mask = torch.ones(2, n, dtype=torch.bool)
    mask = {"X": node_mask, "E": node_mask[:, :, None] & node_mask[:, None, :]}
    x0 = {"X": torch.tensor([[0, 1, 2], [2, 2, 0]]),
          "E": torch.tensor([[[0, 1, 0], [1, 0, 1], [0, 1, 0]], [[0, 0, 1], [0, 0, 0], [1, 0, 0]]])}

    def perfect(x_t, t):
        return {"X": torch.nn.functional.one_hot(x0["X"], 3).double() * 80,
                "E": torch.nn.functional.one_hot(x0["E"], 2).double() * 80}

    terms = proc.elbo(perfect, x0, num_steps=20, mask=mask, generator=torch.Generator().manual_seed(0))
    lab = terms.labelled()
    assert set(lab) == {"prior/X", "prior/E", "diffusion/X", "diffusion/E", "reconstruction/X",
                        "reconstruction/E", "total"}
    assert lab["diffusion/X"].abs().max() < 1e-8 and lab["reconstruction/E"].abs().max() < 1e-8
    assert (lab["total"] >= 0).all() and lab["total"].max() < 1e-3   # only the (tiny) prior term remains

    def blind(x_t, t):
        return {"X": torch.zeros(2, n, 3), "E": torch.zeros(2, n, n, 2)}

    worse = proc.elbo(blind, x0, num_steps=20, mask=mask, generator=torch.Generator().manual_seed(0)).total
    # a denoiser that ignores its input pays nats at every step
    assert (worse > 1.0).all()
