"""Spectral OISM (core.oism): exactness, circle/sphere checks, invariants, variance reduction, losses."""

import math

import numpy as np
import pytest
import torch
from scipy.special import eval_legendre, ive

from sciffusion.core.kernels.manifolds import (
    Circle,
    Euclidean,
    Sphere,
    Torus,
    sample_von_mises,
    sample_von_mises_fisher,
)
from sciffusion.core.kernels.oism import (
    SpectralOISM,
    fourier_moments,
    gradient_variance_closed_form,
    hermite_normalised,
    linear_score_gradients,
    oism_pretrain_loss,
    oism_residual_loss,
)

torch.set_num_threads(1)
F64 = torch.float64


def gaussian_hermite_moments(mu, s0, K):
    """Population E h_q(X_j), X_j ~ N(mu_j, s0_j^2), by 60-point Gauss-Hermite quadrature (exact)."""
    zn, zw = np.polynomial.hermite_e.hermegauss(60)
    pts = torch.as_tensor(mu, dtype=F64)[None] + torch.as_tensor(s0, dtype=F64)[None] * torch.tensor(zn)[:, None]
    return (hermite_normalised(pts, max(2 * K - 2, K)) * torch.tensor(zw / zw.sum())[:, None, None]).sum(0)


def gaussian_score(x, t, mu, s0):
    a = math.exp(-t)
    return -(x - a * mu) / (a * a * s0**2 + 1 - a * a)


# ---------------------------------------------------------------- Gaussian data under OU
def test_oism_exact_on_gaussian_with_population_moments():
    mu, s0 = torch.tensor([1.3, -0.5]), torch.tensor([0.4, 1.7])
    oism = SpectralOISM(moments=gaussian_hermite_moments(mu, s0, 2), basis="hermite", degree=2, dim=2, ridge=0.0)
    x = torch.linspace(-2, 3, 11, dtype=F64)[:, None].repeat(1, 2)
    for t in (0.05, 0.3, 1.0, 3.0):
        assert torch.allclose(oism.score(x, t), gaussian_score(x, t, mu, s0), atol=1e-12)
    # the doc's worked 1-D example: A_t = [[1, 2a m1], [2a m1, 4(1 + a^2 m2)]] in unnormalised He
    o1 = SpectralOISM(moments=gaussian_hermite_moments([1.3], [0.4], 2), degree=2, dim=1)
    A, b = o1.system(0.3)
    a, m1, m2 = math.exp(-0.3), 1.3, 1.3**2 + 0.16 - 1
    D = torch.diag(torch.tensor([1.0, math.sqrt(2.0)], dtype=F64))  # He_k = sqrt(k!) h_k
    ref = torch.tensor([[1, 2 * a * m1], [2 * a * m1, 4 * (1 + a * a * m2)]], dtype=F64)
    assert torch.allclose(D @ A[0, 0] @ D, ref, atol=1e-12)
    assert torch.allclose(D @ b[0, 0], torch.tensor([a * m1, 2 * a * a * m2], dtype=F64), atol=1e-12)


def test_oism_close_with_2000_samples_and_pca_rotation():
    """Doc: sup error on [-2, 3] 0.048 at t = 0.05 and 0.006 for t >= 0.3 (mu = 1.3, s0 = 0.4)."""
    g = torch.Generator().manual_seed(0)
    X = 1.3 + 0.4 * torch.randn(2000, 1, generator=g, dtype=F64)
    oism = SpectralOISM(X, degree=2)
    x = torch.linspace(-2, 3, 101, dtype=F64)[:, None]
    assert float((oism.score(x, 0.05) - gaussian_score(x, 0.05, 1.3, 0.4)).abs().max()) < 0.2  # 0.12 here
    for t in (0.3, 1.0):
        assert float((oism.score(x, t) - gaussian_score(x, t, 1.3, 0.4)).abs().max()) < 0.02
    # PCA: correlated Gaussian; rotating to principal axes makes the per-coordinate basis exact
    C = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=F64) * 0.3
    Y = torch.randn(4000, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(C).T
    y = torch.randn(200, 2, generator=g, dtype=F64)
    t = 0.2
    a = math.exp(-t)
    exact = -torch.linalg.solve(a * a * C + (1 - a * a) * torch.eye(2, dtype=F64), y.T).T
    err = {p: float((SpectralOISM(Y, degree=2, pca=p).score(y, t) - exact).norm(dim=-1).mean()) for p in (False, True)}
    assert err[True] < 0.05 < err[False]


def test_divergence_matches_autograd_for_every_basis():
    g = torch.Generator().manual_seed(1)
    cases = [
        (SpectralOISM(torch.randn(200, 3, generator=g, dtype=F64) + 0.5, degree=4, pca=True), torch.randn(5, 3, dtype=F64)),
        (SpectralOISM(Torus(2).sample_uniform(200, g) * 0.3, manifold=Torus(2), degree=2), Torus(2).sample_uniform(5, g)),
    ]
    for oism, x in cases:
        xr = x.clone().requires_grad_()
        s = oism.score(xr, 0.2)
        div = sum(torch.autograd.grad(s[:, j].sum(), xr, retain_graph=True)[0][:, j] for j in range(x.shape[1]))
        assert torch.allclose(div, oism.divergence(x, 0.2), atol=1e-10)


# ---------------------------------------------------------------- circle (von Mises) against the series solution
KAP = 4.0
KS = np.arange(1, 61)


def vm_fisher(oism, t, m=2000):
    grid = np.linspace(0, 2 * np.pi, m, endpoint=False)
    c = np.exp(-KS**2 * t) * ive(KS, KAP) / ive(0, KAP)
    f = 1 + 2 * (c * np.cos(np.outer(grid, KS))).sum(1)
    s = -2 * (KS * c * np.sin(np.outer(grid, KS))).sum(1) / f
    sh = oism.score(torch.tensor(grid)[:, None], t)[:, 0].numpy()
    return float(((sh - s) ** 2 * f / (2 * np.pi)).sum() * 2 * np.pi / m)


def vm_population(K):
    q = torch.arange(-2 * K, 2 * K + 1)
    return torch.tensor(ive(q.abs().numpy(), KAP) / ive(0, KAP)).to(torch.complex128)


@pytest.mark.parametrize(
    ("K", "t", "ref"),
    [(1, 0.02, 0.0046), (1, 0.5, 0.072), (2, 0.5, 0.016)],
)
def test_circle_population_fisher_divergence_matches_table(K, t, ref):
    oism = SpectralOISM(moments=vm_population(K), manifold=Circle(), degree=K, ridge=0.0)
    assert abs(vm_fisher(oism, t) - ref) / ref < 0.05


def test_circle_population_rich_basis_is_exact_and_empirical_overfits_without_shrinkage():
    for t in (0.02, 0.5):
        assert vm_fisher(SpectralOISM(moments=vm_population(8), manifold=Circle(), degree=8, ridge=0.0), t) < 1e-4
    assert vm_fisher(SpectralOISM(moments=vm_population(2), manifold=Circle(), degree=2, ridge=0.0), 0.02) < 1e-3
    X = sample_von_mises(500, KAP, generator=torch.Generator().manual_seed(0))
    fd = {K: vm_fisher(SpectralOISM(X, manifold=Circle(), degree=K), 0.02) for K in (1, 2, 8)}
    # doc (one sample): 0.015, 0.011, 0.22; this sample 0.018, 0.12, 0.53: the rich basis overfits
    # the empirical averages at small t
    assert fd[8] > 3 * fd[1] and fd[8] > fd[2] and fd[1] < 0.05
    shrunk = vm_fisher(SpectralOISM(X, manifold=Circle(), degree=8, shrinkage=0.02), 0.02)
    assert shrunk < 0.5 * fd[8]
    assert vm_fisher(SpectralOISM(X, manifold=Circle(), degree=8), 0.5) < 0.005


# ---------------------------------------------------------------- sphere (von Mises-Fisher)
def vmf_score(x, t, m, kap):
    c = (x @ m).numpy()
    ls = np.arange(0, 50)
    coef = (2 * ls + 1) * np.exp(-ls * (ls + 1) * t) * ive(ls + 0.5, kap) / ive(0.5, kap)
    P = np.stack([eval_legendre(lv, c) for lv in ls], -1)
    h = 1e-6
    dP = np.stack([(eval_legendre(lv, c + h) - eval_legendre(lv, c - h)) / (2 * h) for lv in ls], -1)
    ratio = torch.tensor((dP * coef).sum(-1) / (P * coef).sum(-1))
    return ratio[:, None] * (m[None] - torch.tensor(c)[:, None] * x)


def test_sphere_oism_population_converges_and_empirical_is_close():
    S = Sphere(2)
    m, kap = torch.tensor([0.0, 0.6, 0.8], dtype=F64), 3.0
    g = torch.Generator().manual_seed(2)
    pop = sample_von_mises_fisher(200000, m, kap, generator=g)  # large-sample stand-in for population
    x = S.sample_uniform(500, g)
    errs = []
    for L in (1, 3, 5):
        o = SpectralOISM(pop, manifold=S, degree=L)
        errs.append(float(((o.score(x, 0.1) - vmf_score(x, 0.1, m, kap)) ** 2).sum(-1).mean()))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 2e-3
    o = SpectralOISM(sample_von_mises_fisher(1000, m, kap, generator=g), manifold=S, degree=2)
    err = float(((o.score(x, 0.3) - vmf_score(x, 0.3, m, kap)) ** 2).sum(-1).mean())
    ref = float((vmf_score(x, 0.3, m, kap) ** 2).sum(-1).mean())
    assert err < 0.05 * ref
    assert float((o.score(x, 0.3) * x).sum(-1).abs().max()) < 1e-12  # tangent


# ---------------------------------------------------------------- invariants
@pytest.mark.parametrize("which", ["hermite", "fourier", "spherical"])
def test_large_t_limits(which):
    g = torch.Generator().manual_seed(3)
    if which == "hermite":
        o = SpectralOISM(torch.randn(300, 2, generator=g, dtype=F64) + 1, degree=3)
        x = torch.randn(5, 2, dtype=F64)
        limit = -x
    elif which == "fourier":
        o = SpectralOISM(Torus(2).sample_uniform(300, g) * 0.5, manifold=Torus(2), degree=2)
        x = Torus(2).sample_uniform(5, g)
        limit = torch.zeros_like(x)
    else:
        o = SpectralOISM(sample_von_mises_fisher(300, torch.tensor([0, 0, 1.0], dtype=F64), 5.0, g), manifold=Sphere(2), degree=2)
        x = Sphere(2).sample_uniform(5, g)
        limit = torch.zeros_like(x)
    A, _ = o.system(60.0)
    lam = {"hermite": torch.arange(1, 4, dtype=F64), "fourier": None, "spherical": None}[which]
    if lam is None:
        lam = torch.cat([o._lam, o._lam]) if which == "fourier" else o._lam
    assert torch.allclose(A[0], torch.diag_embed(lam).expand_as(A[0]), atol=1e-10)  # Gram E_mu Gamma = diag(lambda)
    assert float(o.coefficients(60.0).abs().max()) < 1e-12
    assert torch.allclose(o.score(x, 60.0), limit, atol=1e-10)


def test_moments_once_equal_monte_carlo_over_forward_samples():
    """A_t from m_q computed once == E over forward-simulated x_t of <grad phi_n, grad phi_m>."""
    g = torch.Generator().manual_seed(4)
    T = Torus(2)
    X = (0.5 * torch.randn(400, 2, generator=g, dtype=F64) + 2.0) % (2 * math.pi)
    o = SpectralOISM(X, manifold=T, degree=2)
    t = 0.15
    reps = 200
    xt = T.retract(X.repeat(reps, 1), math.sqrt(2 * t) * torch.randn(400 * reps, 2, generator=g, dtype=F64))
    G = T.eigenbasis(2).grads(xt)
    A_mc = torch.einsum("bnd,bmd->nm", G, G) / len(xt)
    A, _ = o.system(t)
    assert float((A[0, 0] - A_mc).abs().max()) < 0.05
    # and the characteristic function really is the data average
    M = fourier_moments(X, 2)
    assert torch.allclose(M[4 + 1, 4 - 2], torch.exp(1j * (X[:, 0] - 2 * X[:, 1])).mean())


# ---------------------------------------------------------------- variance reduction (section 3.3a)
def test_dsm_oism_gradient_variance_ratio_against_closed_form(device):
    doc = {1e-3: 63.6, 1e-2: 7.2, 0.1: 2.0, 0.5: 4.5, 1.0: 13.8, 2.0: 108}
    g = torch.Generator().manual_seed(5)
    s0 = 0.5
    x0 = s0 * torch.randn(400000, generator=g, dtype=F64).to(device)
    for t, ref in doc.items():
        cf = gradient_variance_closed_form(s0, t)
        assert abs(cf["ratio"] - ref) / ref < 0.03 and cf["ratio"] >= 2
        assert abs(cf["ratio"] - cf["dsm"] / cf["oism"]) < 1e-9 * cf["ratio"]
        a, sg2 = math.exp(-t), -math.expm1(-2 * t)
        g_dsm, g_oism = linear_score_gradients(x0, t, -1 / (a * a * s0 * s0 + sg2), generator=g)
        assert g_dsm.device.type == g_oism.device.type == device.type
        assert abs(float(g_dsm.mean())) < 5 * math.sqrt(cf["dsm"] / len(x0))  # unbiased at the optimum
        assert abs(float(g_dsm.var()) / cf["dsm"] - 1) < 0.05
        assert abs(float(g_oism.var()) / cf["oism"] - 1) < 0.05
    assert gradient_variance_closed_form(s0, 1e-6)["ratio"] > 1e4  # unbounded as t -> 0


# ---------------------------------------------------------------- neural-network variants
def test_residual_and_pretrain_losses():
    from sciffusion.core import DiffusionProcess, get_schedule

    g = torch.Generator().manual_seed(6)
    mu, s0 = torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.5])
    oism = SpectralOISM(moments=gaussian_hermite_moments(mu, s0, 2), degree=2, dim=2)
    proc = DiffusionProcess(get_schedule("cosine"), prediction="eps")
    x0 = (mu + s0 * torch.randn(4096, 2, generator=g)).double()
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    # exact OISM score: the residual loss with a zero network is the irreducible DSM loss E|eps - E[eps|x_t]|^2
    t = torch.full((4096,), 0.5, dtype=F64)
    a, s = float(proc.alpha(t[:1])), float(proc.sigma(t[:1]))
    irreducible = 2 * (a * a * 0.25) / (a * a * 0.25 + s * s)
    loss = oism_residual_loss(zero, oism, proc, x0, generator=g, t=t)
    assert abs(float(loss) * 2 - irreducible) < 0.06
    # pretraining target is reached by the network that outputs -sigma * s_OISM
    exact = lambda x, tt: -proc.sigma(tt).to(x)[:, None] * oism.score(x, -torch.log(proc.alpha(tt).double()))  # noqa: E731
    assert float(oism_pretrain_loss(exact, oism, proc, x0[:256], generator=g)) < 1e-20
    net = torch.nn.Linear(2, 2).double()
    loss = oism_residual_loss(lambda x, tt: net(x), oism, proc, x0[:64], generator=g)
    loss.backward()
    assert net.weight.grad is not None and loss.dim() == 0


# ---------------------------------------------------------------- errors
def test_bad_input_errors():
    g = torch.Generator().manual_seed(7)
    with pytest.raises(ValueError, match=r"10 data points are too few for the fourier basis of degree 8 \(288"):
        SpectralOISM(Torus(2).sample_uniform(10, g), manifold=Torus(2), degree=8)
    with pytest.raises(ValueError, match="too few for the spherical basis"):
        SpectralOISM(Sphere(2).sample_uniform(5, g), manifold=Sphere(2), degree=3)
    with pytest.raises(ValueError, match="too few for the hermite basis"):
        SpectralOISM(torch.randn(3, 2, dtype=F64), degree=4)
    with pytest.raises(ValueError, match="basis must be one of"):
        SpectralOISM(torch.randn(30, 2, dtype=F64), basis="wavelet")
    with pytest.raises(ValueError, match="does not fit"):
        SpectralOISM(torch.randn(30, 2, dtype=F64), basis="fourier", manifold=Euclidean(2))
    with pytest.raises(ValueError, match="does not fit"):
        SpectralOISM(moments=torch.zeros(3), basis="spherical", manifold=Sphere(3))
    with pytest.raises(ValueError, match="degree must be >= 1"):
        SpectralOISM(torch.randn(30, 2, dtype=F64), degree=0)
    with pytest.raises(ValueError, match="ridge and shrinkage must be >= 0"):
        SpectralOISM(torch.randn(30, 2, dtype=F64), shrinkage=-1.0)
    with pytest.raises(ValueError, match="pca=True needs the hermite basis"):
        SpectralOISM(Torus(1).sample_uniform(30, g), manifold=Circle(), pca=True)
    with pytest.raises(ValueError, match="give data or moments"):
        SpectralOISM()
    with pytest.raises(ValueError, match=r"off Sphere\(2\)"):
        SpectralOISM(2 * Sphere(2).sample_uniform(30, g), manifold=Sphere(2), degree=1)
    o = SpectralOISM(torch.randn(30, 2, dtype=F64), degree=2)
    with pytest.raises(ValueError, match="t must be >= 0"):
        o.system(-0.1)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        o.score(torch.zeros(4, 3, dtype=F64), 0.1)
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        o.score(torch.zeros(4, 2, dtype=F64), torch.ones(3))


def test_many_distinct_times_are_interpolated_in_log_t(monkeypatch):
    import sciffusion.core.kernels.oism as oism_mod

    g = torch.Generator().manual_seed(8)
    X = (0.5 * torch.randn(500, 2, generator=g, dtype=F64) + 3) % (2 * math.pi)
    o = SpectralOISM(X, manifold=Torus(2), degree=3)
    x = Torus(2).sample_uniform(300, g)
    t = torch.exp(math.log(0.01) + (math.log(5) - math.log(0.01)) * torch.rand(300, generator=g, dtype=F64))
    fast, div_fast = o.score(x, t), o.divergence(x, t)
    monkeypatch.setattr(oism_mod, "_MAX_EXACT_TIMES", 10**9)
    exact, div_exact = o.score(x, t), o.divergence(x, t)
    rel = (fast - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-3)
    assert float(rel.median()) < 1e-3 and float(rel.max()) < 2e-2
    assert float(((div_fast - div_exact).abs() / div_exact.abs().clamp_min(1e-3)).median()) < 1e-3
