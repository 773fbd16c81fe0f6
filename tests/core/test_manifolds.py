"""Manifolds and processes of core.manifolds / core.sde: heat kernels, eigenfunctions, geometry, SDEs."""

import math

import numpy as np
import pytest
import torch

from sciffusion.core.grids import time_grid
from sciffusion.core.kernels.manifolds import (
    Circle,
    Euclidean,
    Sphere,
    Torus,
    circle_log_heat_kernel_1d,
    gegenbauer_series,
    sample_von_mises,
    sample_von_mises_fisher,
    sphere_log_parametrix,
)
from sciffusion.core.kernels.sde import (
    BrownianMotion,
    GeneralSDE,
    OrnsteinUhlenbeck,
    ou_time_from_vp,
    reverse_sample,
    score_as_core_model,
)

torch.set_num_threads(1)
F64 = torch.float64


def circle_nodes(m=2000):
    return (2 * math.pi * torch.arange(m, dtype=F64) / m)[:, None]


def sphere_quadrature(nz=60, nphi=120):
    """Gauss-Legendre x uniform rule on S^2 (weights sum to 1, i.e. normalised area)."""
    zn, zw = np.polynomial.legendre.leggauss(nz)
    phi = 2 * np.pi * np.arange(nphi) / nphi
    Z, P = np.meshgrid(zn, phi, indexing="ij")
    r = np.sqrt(1 - Z**2)
    pts = torch.tensor(np.stack([r * np.cos(P), r * np.sin(P), Z], -1).reshape(-1, 3))
    w = torch.tensor((zw[:, None] / 2 / nphi * np.ones_like(P)).reshape(-1))
    return pts, w


# ---------------------------------------------------------------- heat kernels
@pytest.mark.parametrize("t", [1e-3, 0.05, 0.59, 0.61, 1.49, 1.51, 4.0])
def test_circle_heat_kernel_matches_fourier_series_and_integrates_to_one(t):
    th = circle_nodes()
    k = Circle().heat_kernel(torch.zeros(1, 1, dtype=F64), th, t)[0]
    assert abs(float(k.mean()) - 1) < 1e-10
    if t >= 0.05:  # 200-term Fourier reference (exact to 1e-16 for these t)
        kk = torch.arange(1, 200, dtype=F64)
        ref = 1 + 2 * (torch.exp(-kk * kk * t) * torch.cos(th * kk)).sum(-1)
        assert torch.allclose(k, ref, rtol=1e-10, atol=1e-12)


def test_circle_kernel_derivative_matches_autograd_on_both_branches():
    d = torch.linspace(-3.1, 3.1, 25, dtype=F64, requires_grad=True)
    for t in (0.01, 0.3, 1.0, 2.0):
        lk, dl = circle_log_heat_kernel_1d(d, t)
        (g,) = torch.autograd.grad(lk.sum(), d)
        assert torch.allclose(g, dl, atol=1e-10)


def test_torus_kernel_is_product_of_circle_kernels():
    g = torch.Generator().manual_seed(0)
    T = Torus(2)
    x, y = T.sample_uniform(5, g), T.sample_uniform(4, g)
    full = T.log_heat_kernel(x, y, 0.2)
    c = Circle()
    prod = c.log_heat_kernel(x[:, :1], y[:, :1], 0.2) + c.log_heat_kernel(x[:, 1:], y[:, 1:], 0.2)
    assert torch.allclose(full, prod, atol=1e-12)


@pytest.mark.parametrize("t", [0.003, 0.02, 0.3, 2.0])
def test_sphere_heat_kernel_normalised(t):
    pts, w = sphere_quadrature(nz=200, nphi=8) if t < 0.01 else sphere_quadrature()
    north = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)
    k = Sphere(2).heat_kernel(north, pts, t)[0]
    tol = 5e-3 if t < 0.01 else 1e-8  # the parametrix is only O(t^2)-accurate
    assert abs(float((w * k).sum()) - 1) < tol


def test_sphere_series_and_parametrix_agree_at_the_switch_and_derivatives_are_right():
    c = torch.linspace(0.75, 1.0, 11, dtype=F64)  # where the series is not lost to cancellation
    p, _ = gegenbauer_series(c, 0.01, 2)
    lp, _ = sphere_log_parametrix(c, 0.01, 2)
    assert torch.allclose(torch.log(p), lp, atol=2e-5)
    cr = torch.linspace(-0.5, 0.999, 9, dtype=F64, requires_grad=True)
    for t in (0.005, 0.05, 0.5):
        lk, dl = Sphere(2).log_heat_kernel_c(cr, t)
        (g,) = torch.autograd.grad(lk.sum(), cr)
        assert torch.allclose(g, dl, rtol=1e-6, atol=1e-6)


def test_sphere_s3_parametrix_is_exact():
    # On S^3 the heat kernel is e^{t} (4 pi t)^{-3/2} vol * sum_k (theta + 2 pi k)/sin(theta) e^{-(theta+2pi k)^2/4t}.
    c = torch.linspace(-0.5, 0.99, 7, dtype=F64)
    p, _ = gegenbauer_series(c, 0.05, 3)
    lp, _ = sphere_log_parametrix(c, 0.05, 3)
    assert torch.allclose(torch.log(p), lp, atol=1e-10)


@pytest.mark.parametrize("manifold", [Circle(), Sphere(2)])
def test_chapman_kolmogorov_semigroup(manifold):
    """int p_t(x, z) p_h(z, y) dmu(z) = p_{t+h}(x, y)."""
    if isinstance(manifold, Circle):
        z = circle_nodes(4000)
        w = torch.full((len(z),), 1 / len(z), dtype=F64)
        x, y = torch.tensor([[0.3]], dtype=F64), torch.tensor([[1.1], [4.0]], dtype=F64)
    else:
        z, w = sphere_quadrature(120, 240)
        x = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)
        y = manifold.project(torch.tensor([[0.3, 0.1, 0.9], [1.0, -1.0, 0.2]], dtype=F64))
    t, h = 0.07, 0.05
    lhs = (manifold.heat_kernel(x, z, t)[0][:, None] * manifold.heat_kernel(z, y, h) * w[:, None]).sum(0)
    rhs = manifold.heat_kernel(x, y, t + h)[0]
    assert torch.allclose(lhs, rhs, rtol=1e-7)


def test_euclidean_heat_kernel_is_gaussian():
    E = Euclidean(2)
    x = torch.tensor([[0.5, -1.0]], dtype=F64)
    y = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=F64)
    ref = torch.distributions.MultivariateNormal(x[0], 2 * 0.3 * torch.eye(2, dtype=F64)).log_prob(y)
    assert torch.allclose(E.log_heat_kernel(x, y, 0.3)[0], ref, atol=1e-12)


# ---------------------------------------------------------------- eigenfunctions
def test_torus_eigenfunctions_orthonormal_and_heat_kernel_acts_by_exp():
    T = Torus(2)
    basis = T.eigenbasis(2)
    assert len(basis.eigenvalues) == 24
    m = 24
    g1 = 2 * math.pi * torch.arange(m, dtype=F64) / m
    pts = torch.cartesian_prod(g1, g1)
    v = basis.values(pts)
    gram = v.T @ v / len(pts)
    assert torch.allclose(gram, torch.eye(24, dtype=F64), atol=1e-12)
    # P_t phi = e^{-lambda t} phi via the heat kernel (quadrature is exact for trig polynomials)
    x = torch.tensor([[0.4, 2.0]], dtype=F64)
    Ptphi = (T.heat_kernel(x, pts, 0.3)[0][:, None] * v).mean(0)
    assert torch.allclose(Ptphi, torch.exp(-0.3 * basis.eigenvalues) * basis.values(x)[0], atol=1e-10)


def test_torus_eigenfunction_gradients_and_laplacian():
    basis = Torus(2).eigenbasis(2)
    x = torch.rand(6, 2, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    v = basis.values(x)
    G = basis.grads(x)
    for n in range(v.shape[1]):
        (g,) = torch.autograd.grad(v[:, n].sum(), x, create_graph=True)
        assert torch.allclose(g, G[:, n], atol=1e-12)
        lap = sum(torch.autograd.grad(g[:, j].sum(), x, retain_graph=True)[0][:, j] for j in range(2))
        assert torch.allclose(-lap, basis.eigenvalues[n] * v[:, n], atol=1e-10)


def test_spherical_harmonics_orthonormal_eigen_and_gradients():
    S = Sphere(2)
    basis = S.eigenbasis(4)
    assert len(basis.eigenvalues) == 24
    pts, w = sphere_quadrature(20, 40)
    v = basis.values(pts)
    gram = (v * w[:, None]).T @ v
    assert torch.allclose(gram, torch.eye(24, dtype=F64), atol=1e-12)
    x = S.project(torch.tensor([[0.2, -0.4, 0.8], [0.9, 0.1, -0.3]], dtype=F64))
    Ptphi = (S.heat_kernel(x, pts, 0.2)[:, :, None] * v[None] * w[None, :, None]).sum(1)
    assert torch.allclose(Ptphi, torch.exp(-0.2 * basis.eigenvalues) * basis.values(x), atol=1e-8)
    # Riemannian gradient: tangent, and the derivative along a great circle matches finite differences
    G = basis.grads(x)
    assert float((G * x[:, None, :]).sum(-1).abs().max()) < 1e-12
    u = S.project_tangent(x, torch.tensor([[1.0, 0.5, 0.2], [0.0, 1.0, 0.3]], dtype=F64))
    u = u / u.norm(dim=-1, keepdim=True)
    eps = 1e-6
    fd = (basis.values(S.retract(x, eps * u)) - basis.values(S.retract(x, -eps * u))) / (2 * eps)
    assert torch.allclose(fd, (G * u[:, None, :]).sum(-1), atol=1e-6)


# ---------------------------------------------------------------- geometry and checks
def test_geometry_tangent_retraction_uniform():
    g = torch.Generator().manual_seed(0)
    S = Sphere(2)
    x = S.sample_uniform(20000, g)
    assert float(S.distance_from_manifold(x).max()) < 1e-12
    assert float(x.mean(0).norm()) < 0.03
    v = torch.randn(20000, 3, generator=g, dtype=F64)
    tv = S.project_tangent(x, v)
    assert float((tv * x).sum(-1).abs().max()) < 1e-12
    assert float(S.distance_from_manifold(S.retract(x, tv)).max()) < 1e-12
    T = Torus(3)
    y = T.retract(T.sample_uniform(100, g), 10 * torch.randn(100, 3, generator=g, dtype=F64))
    assert float(y.min()) >= 0 and float(y.max()) < 2 * math.pi
    assert float(Sphere(4).sample_uniform(5, g).norm(dim=-1).sub(1).abs().max()) < 1e-12


def test_distribution_samplers(device):
    g = torch.Generator().manual_seed(0)
    th = sample_von_mises(40000, 3.0, loc=1.0, generator=g)
    from scipy.special import iv

    assert abs(float(torch.cos(th - 1.0).mean()) - iv(1, 3.0) / iv(0, 3.0)) < 0.01
    m = torch.tensor([1.0, 2.0, 2.0], dtype=F64, device=device) / 3
    x = sample_von_mises_fisher(40000, m, 5.0, generator=g)
    assert x.device.type == device.type
    rbar = x.mean(0)
    assert float(torch.dot(rbar / rbar.norm(), m)) > 0.999
    assert abs(float(rbar.norm()) - (1 / math.tanh(5.0) - 1 / 5.0)) < 0.01


def test_bad_inputs_give_clear_errors():
    S = Sphere(2)
    x = torch.tensor([[0.0, 0.0, 1.2], [0.0, 1.0, 0.0]], dtype=F64)
    with pytest.raises(ValueError, match=r"1 of 2 point\(s\) are off Sphere\(2\): max distance 0.2"):
        S.check(x)
    with pytest.raises(ValueError, match=r"expected shape \(batch, 3\)"):
        S.check(torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ValueError, match="NaN or inf"):
        Torus(1).check(torch.tensor([[float("nan")]]))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        Circle().check(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="n must be >= 2"):
        Sphere(1)
    with pytest.raises(ValueError, match="dimension must be >= 1"):
        Euclidean(0)
    with pytest.raises(ValueError, match="dimension must be >= 1"):
        Torus(0)
    with pytest.raises(ValueError, match="positive finite time"):
        Circle().heat_kernel(torch.zeros(1, 1), torch.zeros(1, 1), 0.0)
    with pytest.raises(ValueError, match="degree must be >= 1"):
        Torus(2).eigenbasis(0)
    with pytest.raises(NotImplementedError, match="Sphere\\(2\\) only"):
        Sphere(3).eigenbasis(2)
    with pytest.raises(NotImplementedError, match="discrete Laplacian spectrum"):
        Euclidean(2).eigenbasis(2)
    with pytest.raises(NotImplementedError, match="no uniform distribution"):
        Euclidean(2).sample_uniform(3)


# ---------------------------------------------------------------- processes
def test_brownian_motion_moments():
    g = torch.Generator().manual_seed(0)
    S = Sphere(2)
    x0 = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64).repeat(20000, 1)
    xt = BrownianMotion(S).sample(x0, 0.3, steps=60, generator=g)
    # <x0, X_t> is a degree-1 harmonic: E = e^{-2t}
    assert abs(float(xt[:, 2].mean()) - math.exp(-0.6)) < 0.015
    th = BrownianMotion(Circle()).sample(torch.zeros(20000, 1, dtype=F64), 0.5, generator=g)
    assert abs(float(torch.cos(th).mean()) - math.exp(-0.5)) < 0.015
    with pytest.raises(ValueError, match="t must be >= 0"):
        BrownianMotion(S).sample(x0, -1.0)


def test_general_sde_euler_maruyama_ou_and_matrix_noise():
    g = torch.Generator().manual_seed(0)
    ou = OrnsteinUhlenbeck(1)
    sde = GeneralSDE(ou.drift, math.sqrt(2.0))
    x = sde.simulate(torch.full((20000, 1), 2.0, dtype=F64), 0.0, 0.5, steps=100, generator=g)
    assert abs(float(x.mean()) - 2 * math.exp(-0.5)) < 0.03
    assert abs(float(x.var()) - (1 - math.exp(-1.0))) < 0.03
    # (B, D, m) diffusion: dX = B dW with B = [[1, 1]] gives variance 2 t
    sde2 = GeneralSDE(lambda x, t: torch.zeros_like(x), lambda x, t: torch.ones(x.shape[0], 1, 2, dtype=F64))
    path = sde2.simulate(torch.zeros(20000, 1, dtype=F64), 0.0, 1.0, steps=4, generator=g, return_path=True)
    assert path.shape == (5, 20000, 1) and abs(float(path[-1].var()) - 2.0) < 0.08
    # nonlinear drift on the sphere stays on the sphere
    S = Sphere(2)
    sde3 = GeneralSDE(lambda x, t: torch.cross(x, torch.ones_like(x), dim=-1), 0.3, manifold=S)
    y = sde3.simulate(S.sample_uniform(10, g), 0.0, 1.0, steps=20, generator=g)
    assert float(S.distance_from_manifold(y).max()) < 1e-12
    with pytest.raises(ValueError, match="need t1 > t0"):
        sde.simulate(x, 1.0, 0.5, 10)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sde.simulate(x, 0.0, 0.5, 0)


def test_ou_maps_to_core_vp_schedules_and_drives_core_sampler():
    from sciffusion.core import DiffusionProcess, get_schedule, sample

    sched = get_schedule("cosine")
    s = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    tau = ou_time_from_vp(sched, s)
    ou = OrnsteinUhlenbeck(1)
    assert torch.allclose(ou.alpha(tau), sched.alpha(s).double(), atol=1e-12)
    assert torch.allclose(ou.sigma(tau), sched.sigma(s).double(), atol=1e-10)
    # exact Gaussian score in OU time drives the core sampler to the data law
    mu, s0 = 1.5, 0.5

    def score(x, t):
        a = torch.exp(-t)[:, None]
        return -(x - a * mu) / (a * a * s0 * s0 + 1 - a * a)

    proc = DiffusionProcess(sched, prediction="score")
    model = score_as_core_model(score, sched)
    g = torch.Generator().manual_seed(0)
    x = sample(model, proc, (4000, 1), method="heun", steps=40, generator=g, progress=False, dtype=F64)
    assert abs(float(x.mean()) - mu) < 0.05 and abs(float(x.std()) - s0) < 0.05


def test_reverse_sampler_with_exact_score_on_circle_and_errors():
    """Reverse SDE and PF-ODE on the circle with the exact von Mises forward score recover E cos x."""
    from scipy.special import ive

    kap = 2.0
    ks = torch.arange(1, 40, dtype=F64)
    ck = torch.tensor(ive(ks.numpy(), kap) / ive(0, kap))

    def score(x, t):
        c = torch.exp(-ks * ks * t) * ck
        f = 1 + 2 * (c * torch.cos(x * ks)).sum(-1, keepdim=True)
        return -2 * (ks * c * torch.sin(x * ks)).sum(-1, keepdim=True) / f

    g = torch.Generator().manual_seed(0)
    C = Circle()
    target = float(ck[0]) * math.exp(-0.01)
    for method in ("sde", "ode"):
        x = reverse_sample(score, C, C.sample_uniform(6000, g), 6.0, 0.01, steps=150, method=method, generator=g)
        assert abs(float(torch.cos(x).mean()) - target) < 0.03
    with pytest.raises(ValueError, match="method must be one of"):
        reverse_sample(score, C, x, 1.0, 0.1, method="leapfrog")
    with pytest.raises(ValueError, match="drift must be one of"):
        reverse_sample(score, C, x, 1.0, 0.1, drift="vp")
    with pytest.raises(ValueError, match="need 0 <= t_min < t_max"):
        reverse_sample(score, C, x, 0.1, 1.0, steps=10)
    with pytest.raises(ValueError, match="geometric grid needs t_min > 0"):
        time_grid(None, 10, "geometric", t_max=1.0, t_min=0.0)
    with pytest.raises(ValueError, match="unknown time grid 'cubic'"):
        reverse_sample(score, C, x, 1.0, 0.1, steps=10, grid="cubic")
    with pytest.raises(FloatingPointError, match=r"non-finite values appeared in reverse sampling \(sde\) at step 0 of 3"):
        reverse_sample(lambda x, t: x * float("nan"), C, x, 1.0, 0.1, steps=3)


def test_pf_ode_log_likelihood_heat_and_ou():
    from scipy.special import ive

    from sciffusion.core.kernels.sde import pf_ode_log_likelihood

    kap = 2.0
    ks = torch.arange(1, 40, dtype=F64)
    ck = torch.tensor(ive(ks.numpy(), kap) / ive(0, kap))

    def score(x, t):
        c = torch.exp(-ks * ks * t) * ck
        f = 1 + 2 * (c * torch.cos(x * ks)).sum(-1, keepdim=True)
        return -2 * (ks * c * torch.sin(x * ks)).sum(-1, keepdim=True) / f

    def logp(x, t):
        c = torch.exp(-ks * ks * t) * ck
        return torch.log((1 + 2 * (c * torch.cos(x * ks)).sum(-1)) / (2 * math.pi))

    x = torch.linspace(0, 6, 7, dtype=F64)[:, None]
    lp = pf_ode_log_likelihood(score, Circle(), x, 0.01, 8.0, 100)  # autograd divergence
    assert float((lp - logp(x, 0.01)).abs().max()) < 5e-3
    mu, s0 = 1.0, 0.5

    def sc(x, t):
        a = math.exp(-t)
        return -(x - a * mu) / (a * a * s0 * s0 + 1 - a * a)

    xs = torch.linspace(0.0, 2.0, 5, dtype=F64)[:, None]
    lp = pf_ode_log_likelihood(sc, Euclidean(1), xs, 1e-3, 10.0, 100, drift="ou")
    a = math.exp(-1e-3)
    v = a * a * s0 * s0 + 1 - a * a
    ref = -0.5 * (xs[:, 0] - a * mu) ** 2 / v - 0.5 * math.log(2 * math.pi * v)
    assert float((lp - ref).abs().max()) < 0.01
    with pytest.raises(ValueError, match="pass divergence= on a curved manifold"):
        pf_ode_log_likelihood(sc, Sphere(2), torch.tensor([[0.0, 0.0, 1.0]], dtype=F64), 0.1, 1.0)
    with pytest.raises(ValueError, match="drift must be one of"):
        pf_ode_log_likelihood(sc, Euclidean(1), xs, 0.1, 1.0, drift="vp")


@pytest.mark.parametrize("t", [1e-3, 0.01, 0.04, 0.1, 0.5, 1.0])
def test_circle_heat_kernel_near_the_antipode_matches_a_long_image_sum(t):
    """log p_t and its derivative against 201 images in float64 (near |d| = pi two images are equal)."""
    d = torch.tensor([0.0, 1.0, 3.0, 3.1, 3.14, math.pi - 1e-6, -3.13, -math.pi + 1e-4], dtype=torch.float64)
    m = torch.arange(-100, 101, dtype=torch.float64)
    u = d[:, None] + 2 * math.pi * m
    e = -u * u / (4 * t)
    ref = torch.logsumexp(e, 1) + math.log(2 * math.pi) - 0.5 * math.log(4 * math.pi * t)
    w = torch.softmax(e, 1)
    dref = -(w * u).sum(1) / (2 * t)
    lk, dl = circle_log_heat_kernel_1d(d, t)
    assert torch.allclose(lk, ref, rtol=0, atol=1e-9), (lk - ref).abs().max()
    assert torch.allclose(dl, dref, rtol=1e-9, atol=1e-9), (dl - dref).abs().max()


@pytest.mark.parametrize("t", [3e-3, 6e-3, 9e-3])
def test_sphere_small_t_fallback_against_a_high_precision_series(t):
    """The parametrix used below t = 1e-2 on S^2, against the Legendre series summed in exact-enough arithmetic
    (digits for the e^{-pi^2 / (4t)} cancellation),
    including near the antipode (theta -> pi), where the parametrix has no image terms: log p is within 2t up to
    theta = 2.5, within 0.1 + 2t at theta = 3.1, and off by 0.12-0.14 at 1e-3 from the antipode (the kernel is
    below e^{-270} of its peak there at these t); the score is within 5 % up to theta = 2.5."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = int(math.pi**2 / (4 * t) / math.log(10)) + 40
    thetas = [0.0, 0.5, 1.5, 2.5, 3.0, 3.1, math.pi - 1e-3]
    c = torch.tensor([math.cos(th) for th in thetas], dtype=torch.float64)
    lp, dlp = sphere_log_parametrix(c, t, 2)
    lmax = int(math.pi / (2 * t)) + 60  # l^2 t > pi^2 / (4t): the tail is below the smallest value
    for i, th in enumerate(thetas):
        x = mpmath.cos(mpmath.mpf(th))
        p, dp, p_prev, p_cur = mpmath.mpf(1), mpmath.mpf(0), mpmath.mpf(1), x  # P_0, P_1
        for k in range(1, lmax):
            w = (2 * k + 1) * mpmath.exp(-k * (k + 1) * mpmath.mpf(t))  # weights exact to all digits
            p += w * p_cur
            if th > 0:  # P_k' = k (x P_k - P_{k-1}) / (x^2 - 1)
                dp += w * k * (x * p_cur - p_prev) / (x * x - 1)
            p_prev, p_cur = p_cur, ((2 * k + 1) * x * p_cur - k * p_prev) / (k + 1)
        err = abs(float(lp[i]) - float(mpmath.log(p)))
        if th <= 2.5:
            assert err < 2 * t, (t, th, err)
            if th > 0:
                assert abs(float(dlp[i]) - float(dp / p)) < 0.05 * abs(float(dp / p)) + 1e-6, (t, th)
        else:
            assert err < (0.1 if th < 3.12 else 0.15) + 2 * t, (t, th, err)
