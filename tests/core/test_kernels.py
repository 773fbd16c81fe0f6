"""DKS / RDKS (core.kernels): identities, circle and sphere checks of kernel_estimators.md section 5."""

import math

import numpy as np
import pytest
import torch
from scipy.special import ive

from sciffusion.core.kernels import KernelSmoothingScore, select_bandwidth
from sciffusion.core.kernels.manifolds import (
    Circle,
    Sphere,
    Torus,
    sample_von_mises,
    sample_von_mises_fisher,
)
from tests.doc_examples import run_markdown_examples

torch.set_num_threads(1)
F64 = torch.float64


# ---------------------------------------------------------------- DKS on R^d (OU)
def test_dks_equals_mehler_kme_gradient_and_gaussian_mixture_score():
    """NW form == grad log of the Mehler KME (+ grad log gamma) == the mixture score, to 1e-6 (d = 3)."""
    from sciffusion.core.diffusion.analytic import GaussianMixture

    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 3, generator=g, dtype=F64) * 1.5 + 0.3
    y = torch.randn(9, 3, generator=g, dtype=F64)
    est = KernelSmoothingScore(X, bandwidth=0.05, chunk_size=7)  # several chunks
    for t in (0.05, 0.4, 2.0):
        a, v = math.exp(-t), 1 - math.exp(-2 * t)
        yr = y.clone().requires_grad_()
        # Mehler kernel w.r.t. gamma, times gamma = the Lebesgue density of rho_t
        mehler = -(a * a * ((yr * yr).sum(-1, keepdim=True) + (X * X).sum(-1)) - 2 * a * yr @ X.T) / (2 * v)
        log_h = torch.logsumexp(mehler, 1) - 0.5 * (yr * yr).sum(-1)
        (kme,) = torch.autograd.grad(log_h.sum(), yr)
        gm = GaussianMixture(torch.ones(60), X, torch.zeros(60, 3))
        mix = gm.score(y, torch.full((9,), a, dtype=F64), torch.full((9,), math.sqrt(v), dtype=F64))
        s = est.score(y, t)
        assert torch.allclose(s, kme, atol=1e-6) and torch.allclose(s, mix, atol=1e-6)
    # log_prob = log of the mixture of N(a x_i, sigma^2 I) at t = bandwidth
    t = est.bandwidth
    a, v = math.exp(-t), 1 - math.exp(-2 * t)
    ref = torch.logsumexp(
        torch.distributions.MultivariateNormal(a * X, v * torch.eye(3, dtype=F64)).log_prob(y[:, None]), 1
    ) - math.log(60)
    assert torch.allclose(est.log_prob(y), ref, atol=1e-10)


def test_chunking_does_not_change_results_and_per_row_times_work():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(500, 2, generator=g, dtype=F64)
    y = torch.randn(40, 2, generator=g, dtype=F64)
    a = KernelSmoothingScore(X, bandwidth=0.1, chunk_size=13)
    b = KernelSmoothingScore(X, bandwidth=0.1)
    assert torch.allclose(a.score(y, 0.3), b.score(y, 0.3), atol=1e-12)
    assert torch.allclose(a.log_prob(y), b.log_prob(y), atol=1e-12)
    tt = torch.tensor([0.1, 0.7] * 20, dtype=F64)
    mixed = b.score(y, tt)
    assert torch.allclose(mixed[::2], b.score(y[::2], 0.1)) and torch.allclose(mixed[1::2], b.score(y[1::2], 0.7))


def test_dks_converges_to_gaussian_score_and_large_t_invariant():
    g = torch.Generator().manual_seed(2)
    mu, s0 = torch.tensor([1.0, -0.5], dtype=F64), 0.6
    X = mu + s0 * torch.randn(20000, 2, generator=g, dtype=F64)
    est = KernelSmoothingScore(X, bandwidth=0.1)
    y = torch.randn(200, 2, generator=g, dtype=F64)
    t = 0.5
    a = math.exp(-t)
    exact = -(y - a * mu) / (a * a * s0 * s0 + 1 - a * a)
    assert float((est.score(y, t) - exact).norm(dim=-1).mean()) < 0.05
    # t -> inf: the score tends to grad log gamma = -y
    assert torch.allclose(est.score(y, 30.0), -y, atol=1e-9)


def test_dks_sampling_under_ou_and_memorisation():
    g = torch.Generator().manual_seed(3)
    X = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]], dtype=F64).repeat(30, 1)
    X = X + 0.3 * torch.randn(90, 2, generator=g, dtype=F64)
    smooth = KernelSmoothingScore(X, bandwidth=0.05).sample(600, steps=100, generator=g)
    assert abs(float(smooth.mean(0)[1]) - float(X.mean(0)[1])) < 0.15
    sharp = KernelSmoothingScore(X, bandwidth=1e-4).sample(200, steps=200, generator=g)
    d_sharp = torch.cdist(sharp, X).min(1).values.median()
    d_smooth = torch.cdist(smooth, X).min(1).values.median()
    assert float(d_sharp) < 0.03 < float(d_smooth)  # small bandwidth reproduces training points


# ---------------------------------------------------------------- circle (von Mises)
KAP = 4.0
KS = np.arange(1, 61)


def vm_exact(grid, t):
    c = np.exp(-KS**2 * t) * ive(KS, KAP) / ive(0, KAP)
    f = 1 + 2 * (c * np.cos(np.outer(grid, KS))).sum(1)
    return f / (2 * np.pi), -2 * (KS * c * np.sin(np.outer(grid, KS))).sum(1) / f


def fisher_divergence(score_fn, t, m=2000):
    grid = np.linspace(0, 2 * np.pi, m, endpoint=False)
    dens, s = vm_exact(grid, t)
    sh = score_fn(torch.tensor(grid)[:, None], t)[:, 0].numpy()
    return float(((sh - s) ** 2 * dens).sum() * 2 * np.pi / m)


@pytest.fixture(scope="module")
def vm_data():
    return sample_von_mises(500, KAP, generator=torch.Generator().manual_seed(0))


def test_rdks_circle_fisher_divergence_against_series_solution(vm_data):
    """n = 500, kappa = 4: doc reference 0.389 (t=0.02), 0.0135 (0.1), 0.0007 (0.5) for one sample;
    over seeds 0..5 we measured 0.35-0.92, 0.010-0.042 and 0.0003-0.0015."""
    est = KernelSmoothingScore(vm_data, manifold=Circle(), bandwidth=0.02)
    fd = [fisher_divergence(est.score, t) for t in (0.02, 0.1, 0.5)]
    assert 0.1 < fd[0] < 1.5 and 0.003 < fd[1] < 0.08 and fd[2] < 0.005
    assert fd[0] > fd[1] > fd[2]
    spec = KernelSmoothingScore(vm_data, manifold=Circle(), bandwidth=0.02, form="spectral")
    x = torch.linspace(0, 6.2, 50, dtype=F64)[:, None]
    assert torch.allclose(spec.score(x, 0.05), est.score(x, 0.05), atol=1e-7)
    # densities agree; far from the data the spectral log is floored (the kernel form reaches e^{-34})
    assert torch.allclose(spec.log_prob(x).exp(), est.log_prob(x).exp(), atol=1e-10)


def test_semigroup_consistency_on_circle(vm_data):
    """rho_h^ evolved for t equals rho^_0 at t + h: quadrature of the KDE against p_t."""
    C = Circle()
    est = KernelSmoothingScore(vm_data, manifold=C, bandwidth=0.03)
    z = (2 * math.pi * torch.arange(3000, dtype=F64) / 3000)[:, None]
    y = torch.tensor([[0.1], [1.0], [3.0]], dtype=F64)
    kde_h = est.log_prob(z, relative=True).exp()
    lhs = (kde_h[:, None] * C.heat_kernel(z, y, 0.2)).mean(0)
    assert torch.allclose(lhs.log(), est.log_prob(y, t=0.23, relative=True), atol=1e-8)


def test_auto_bandwidth_has_interior_loo_maximum(vm_data):
    est = KernelSmoothingScore(vm_data, manifold=Circle(), bandwidth="auto")
    grid, ll = est.bandwidth_curve
    k = int(torch.argmax(ll))
    assert 0 < k < len(grid) - 1
    assert 0.005 < est.bandwidth < 0.3
    h, _grid2, ll2 = select_bandwidth(est, grid=torch.tensor([0.01, 0.05, 0.2], dtype=F64))
    assert h in (0.01, 0.05, 0.2) and ll2.shape == (3,)


# ---------------------------------------------------------------- torus and sphere
def test_torus_kernel_and_spectral_forms_agree_and_score_is_gradient_of_log_prob():
    g = torch.Generator().manual_seed(4)
    X = (torch.randn(300, 2, generator=g, dtype=F64) * 0.6 + 3.0) % (2 * math.pi)
    ker = KernelSmoothingScore(X, manifold=Torus(2), bandwidth=0.1)
    spec = KernelSmoothingScore(X, manifold=Torus(2), bandwidth=0.1, form="spectral", max_degree=20)
    y = Torus(2).sample_uniform(30, g)
    assert torch.allclose(ker.score(y, 0.1), spec.score(y, 0.1), atol=1e-8)
    yr = y.clone().requires_grad_()
    (gr,) = torch.autograd.grad(ker.log_prob(yr, t=0.3).sum(), yr)
    assert torch.allclose(gr, ker.score(y, 0.3), atol=1e-10)
    assert float(ker.score(y, 40.0).abs().max()) < 1e-12  # large t: uniform, score 0
    # for t >= 0.05 the torus kernel form is evaluated by its separable Fourier series: same numbers
    for t in (0.05, 0.5, 3.0):
        lh, sc = ker._accumulate(y, t)
        assert torch.allclose(lh, ker.log_prob(y, t=t, relative=True), atol=1e-11)
        assert torch.allclose(sc, ker.score(y, t), atol=1e-10)


def test_rdks_sphere_forms_agree_and_score_is_riemannian_gradient():
    g = torch.Generator().manual_seed(5)
    S = Sphere(2)
    m = torch.tensor([0.0, 0.6, 0.8], dtype=F64)
    X = sample_von_mises_fisher(200, m, 4.0, generator=g)
    ker = KernelSmoothingScore(X, manifold=S, bandwidth=0.05, chunk_size=64)
    spec = KernelSmoothingScore(X, manifold=S, bandwidth=0.05, form="spectral", max_degree=40)
    y = S.sample_uniform(20, g)
    for t in (0.05, 0.3):
        assert torch.allclose(ker.score(y, t), spec.score(y, t), atol=1e-7)
    yr = y.clone().requires_grad_()
    (gr,) = torch.autograd.grad(ker.log_prob(yr, t=0.1).sum(), yr)
    assert torch.allclose(S.project_tangent(y, gr), ker.score(y, 0.1), atol=1e-9)
    assert float((ker.score(y, 0.1) * y).sum(-1).abs().max()) < 1e-12  # tangent


def test_rdks_sphere_samples_recover_vmf_direction_and_concentration():
    """Samples of RDKS are draws of rho_h^: mean direction m, mean resultant e^{-2h} * data's."""
    g = torch.Generator().manual_seed(6)
    S = Sphere(2)
    m = torch.tensor([1.0, -1.0, 1.0], dtype=F64) / math.sqrt(3)
    X = sample_von_mises_fisher(300, m, 8.0, generator=g)
    est = KernelSmoothingScore(X, manifold=S, bandwidth=0.02)
    x = est.sample(600, steps=60, generator=g)
    assert float(S.distance_from_manifold(x).max()) < 1e-12
    rbar = x.mean(0)
    assert float(torch.dot(rbar / rbar.norm(), m)) > math.cos(0.06)
    expect = math.exp(-2 * 0.02) * float(X.mean(0).norm())
    assert abs(float(rbar.norm()) - expect) < 0.02
    # concentration from A(kappa) = coth(kappa) - 1/kappa = rbar, against the smoothed truth
    from scipy.optimize import brentq

    kappa_hat = brentq(lambda k: 1 / math.tanh(k) - 1 / k - float(rbar.norm()), 0.1, 100)
    kappa_ref = brentq(lambda k: 1 / math.tanh(k) - 1 / k - math.exp(-0.04) * (1 / math.tanh(8) - 1 / 8), 0.1, 100)
    assert abs(kappa_hat - kappa_ref) / kappa_ref < 0.15


def test_rdks_circle_memorisation_at_small_bandwidth(vm_data):
    g = torch.Generator().manual_seed(7)
    C = Circle()
    data = vm_data[:30]
    x_small = KernelSmoothingScore(data, manifold=C, bandwidth=1e-5).sample(200, steps=150, generator=g)
    x_big = KernelSmoothingScore(data, manifold=C, bandwidth=0.05).sample(200, steps=150, generator=g)

    def nearest(x):
        d = torch.remainder(x - data.T + math.pi, 2 * math.pi) - math.pi
        return d.abs().min(1).values.median()

    assert float(nearest(x_small)) < 0.01 < float(nearest(x_big))


# ---------------------------------------------------------------- errors and docs
def test_bad_input_errors():
    S = Sphere(2)
    X = S.sample_uniform(10, torch.Generator().manual_seed(0))
    bad = X.clone()
    bad[3] *= 1.5
    with pytest.raises(ValueError, match=r"off Sphere\(2\): max distance 0.5"):
        KernelSmoothingScore(bad, manifold=S, bandwidth=0.1)
    for h in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="bandwidth must be positive"):
            KernelSmoothingScore(X, manifold=S, bandwidth=h)
    with pytest.raises(ValueError, match="positive float or 'auto'"):
        KernelSmoothingScore(X, manifold=S, bandwidth="silverman")
    with pytest.raises(ValueError, match="process must be one of"):
        KernelSmoothingScore(X, bandwidth=0.1, process="vp")
    with pytest.raises(ValueError, match="form must be one of"):
        KernelSmoothingScore(X, manifold=S, bandwidth=0.1, form="fft")
    with pytest.raises(ValueError, match="needs a compact manifold"):
        KernelSmoothingScore(X, bandwidth=0.1, form="spectral")
    with pytest.raises(ValueError, match=r"shape \(n >= 2, D\)"):
        KernelSmoothingScore(X[:1], manifold=S, bandwidth=0.1)
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        KernelSmoothingScore(X.numpy(), manifold=S, bandwidth=0.1)
    est = KernelSmoothingScore(X, manifold=S, bandwidth=0.1)
    with pytest.raises(ValueError, match="t must be positive"):
        est.score(X, 0.0)
    with pytest.raises(ValueError, match=r"score: x: .*off Sphere\(2\)"):
        est.score(bad, 0.1)
    with pytest.raises(ValueError, match=r"expected shape \(batch, 3\)"):
        est.score(X[:, :2], 0.1)
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        est.score(X, torch.ones(3))
    with pytest.raises(ValueError, match="n must be >= 1"):
        est.sample(0)
    with pytest.raises(ValueError, match="must exceed the bandwidth"):
        est.sample(5, t_max=0.05)
    with pytest.raises(ValueError, match="no invariant law"):
        KernelSmoothingScore(torch.randn(5, 2), bandwidth=0.1, process="bm").sample(3)
    with pytest.raises(ValueError, match="grid bandwidth must be positive"):
        select_bandwidth(est, grid=torch.tensor([0.1, -0.1]))


def test_docs_kernels_page_runs(tmp_path):
    ns = run_markdown_examples("docs/kernels.md", tmp_path)
    assert "est" in ns
