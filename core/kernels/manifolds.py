"""State spaces for the kernel estimators: Euclidean space, the circle, the flat torus and spheres.

Conventions (the time conventions of the kernels guide): Brownian motion has generator the Laplace-Beltrami
operator ``L = Delta`` (SDE ``dX = sqrt(2) dW``), so its heat kernel is ``p_t = e^{t Delta}``. On a
compact manifold ``M`` heat kernels are densities with respect to the *normalised* volume
``mu = vol / vol(M)``, so ``p_t(x, .) -> 1`` as ``t -> inf`` and

    p_t(x, y) = sum_j e^{-lambda_j t} phi_j(x) phi_j(y),      -Delta phi_j = lambda_j phi_j,

with ``phi_j`` orthonormal in ``L^2(mu)``. On ``R^d`` the heat kernel is ``N(y; x, 2t I)`` with respect
to Lebesgue measure.

Point representations: ``Euclidean(d)`` and ``Torus(d)`` take ``(B, d)`` tensors (torus points are
angles, taken mod ``2 pi``); ``Sphere(n)`` takes unit vectors of ``R^{n+1}``, shape ``(B, n+1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sciffusion.core import rng

TWO_PI = 2.0 * math.pi
# Small-t (wrapped) / large-t (Fourier) switch of the circle heat kernel. Neglected terms, relative to the
# kernel: images |m| >= 2 below t = 0.6, e^{-2 pi^2 / t} < e^{-32}; |m| >= 4 below t = 1.5, e^{-12 pi^2 / t};
# frequencies k > 6 from t = 1.5, e^{-49 t} < e^{-73}.
_CIRCLE_T_SWITCH = 1.5
_CIRCLE_IMAGES = 3
_CIRCLE_FREQS = 6
# Sphere: Gegenbauer series for t >= this, Varadhan parametrix below it.
_SPHERE_T_SWITCH = 1e-2

WeightedGrad = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Eigenbasis:
    """Real eigenfunctions of ``-Delta`` orthonormal in ``L^2(mu)``, the constant excluded.

    ``eigenvalues``: ``(N,)``; ``values(x)``: ``(B, N)``; ``grads(x)``: ``(B, N, D)`` Riemannian
    gradients in the point representation; ``labels``: a readable tag per function.
    """

    eigenvalues: Tensor
    values: Callable[[Tensor], Tensor]
    grads: Callable[[Tensor], Tensor]
    labels: tuple


class Manifold:
    """Interface shared by the state spaces. Subclasses fill in the geometry."""

    dim: int  # intrinsic dimension
    ambient_dim: int  # size of the last axis of a point tensor
    compact: bool = True
    spectral_gap: float = 0.0  # lambda_1, the mixing rate of Brownian motion

    # -- checks ---------------------------------------------------------------------------
    def distance_from_manifold(self, x: Tensor) -> Tensor:
        """Per-point distance from the manifold, ``(B,)`` (zero for every point of ``R^d`` / a torus)."""
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)

    def check(self, x: Tensor, name: str = "x", atol: float = 1e-5) -> Tensor:
        """Validate shape ``(B, ambient_dim)``, finiteness and membership; return ``x`` unchanged.

        Raises ``ValueError`` saying how many points are off and by how much.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[-1] != self.ambient_dim:
            raise ValueError(
                f"{name}: expected shape (batch, {self.ambient_dim}) for {self!r}, got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).any(-1).sum())
            raise ValueError(f"{name}: {bad} point(s) contain NaN or inf")
        dist = self.distance_from_manifold(x)
        dist = dist.detach()
        if dist.numel() and float(dist.max()) > atol:
            off = int((dist > atol).sum())
            raise ValueError(
                f"{name}: {off} of {x.shape[0]} point(s) are off {self!r}: max distance "
                f"{float(dist.max()):.3g} (tolerance {atol:g}); project them first"
            )
        return x

    # -- geometry ---------------------------------------------------------------------------
    def project_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        """Orthogonal projection of ambient vectors ``v`` onto ``T_x M``."""
        return v

    def retract(self, x: Tensor, v: Tensor) -> Tensor:
        """Retraction ``R_x(v)``: a point of ``M`` agreeing with ``exp_x(v)`` to first order."""
        return x + v

    def project(self, x: Tensor) -> Tensor:
        """Nearest point of ``M`` (canonical representative)."""
        return x

    def sample_uniform(
        self, n: int, generator: torch.Generator | None = None, dtype=torch.float64, device=None
    ) -> Tensor:
        """``n`` draws from the normalised volume ``mu``."""
        raise NotImplementedError(f"{self!r} has no uniform distribution")

    @property
    def log_volume(self) -> float:
        """``log vol(M)``; a density w.r.t. ``mu`` minus this is a density w.r.t. volume."""
        return 0.0

    # -- heat kernel ------------------------------------------------------------------------
    def log_heat_kernel(self, x: Tensor, y: Tensor, t: float) -> Tensor:
        """Pairwise ``log p_t(x_i, y_j)``, shape ``(len(x), len(y))``."""
        logk, _ = self.heat_kernel_terms(y, x, t)
        return logk.T

    def heat_kernel(self, x: Tensor, y: Tensor, t: float) -> Tensor:
        """Pairwise ``p_t(x_i, y_j)`` (density w.r.t. ``mu``), shape ``(len(x), len(y))``."""
        return self.log_heat_kernel(x, y, t).exp()

    def heat_kernel_terms(self, y: Tensor, x: Tensor, t: float) -> tuple[Tensor, WeightedGrad]:
        """Kernel pieces for a chunk of centres ``x`` (c, D) and queries ``y`` (B, D).

        Returns ``logk[b, i] = log p_t(x_i, y_b)`` and a function ``w -> sum_i w[b, i] grad_y log
        p_t(x_i, y_b)`` (``(B, c) -> (B, D)``) that never materialises a ``(B, c, D)`` tensor where the
        geometry allows it. Kernel estimators accumulate these over chunks of data.
        """
        raise NotImplementedError

    def eigenbasis(self, degree: int) -> Eigenbasis:
        """Laplacian eigenfunctions up to ``degree`` (meaning is per manifold)."""
        raise NotImplementedError(f"{self!r} has no discrete Laplacian spectrum")


def _check_t(t: float, name: str = "t") -> float:
    t = float(t)
    if not t > 0 or not math.isfinite(t):
        raise ValueError(f"{name} must be a positive finite time, got {t}")
    return t


# ====================================================================================================
class Euclidean(Manifold):
    """``R^d`` with Brownian motion ``dX = sqrt(2) dW``: ``p_t(x, y) = N(y; x, 2t I)`` (Lebesgue)."""

    compact = False

    def __init__(self, d: int):
        if int(d) < 1:
            raise ValueError(f"Euclidean: dimension must be >= 1, got {d}")
        self.dim = self.ambient_dim = int(d)

    def __repr__(self) -> str:
        return f"Euclidean({self.dim})"

    def heat_kernel_terms(self, y: Tensor, x: Tensor, t: float) -> tuple[Tensor, WeightedGrad]:
        """``log N(y; x_i, 2t I)`` and ``sum_i w_i (x_i - y) / (2t)`` via matrix products."""
        t = _check_t(t)
        sq = (y * y).sum(-1, keepdim=True) - 2 * y @ x.T + (x * x).sum(-1)
        logk = -sq.clamp_min(0) / (4 * t) - 0.5 * self.dim * math.log(4 * math.pi * t)

        def wgrad(w: Tensor) -> Tensor:
            return (w @ x - w.sum(-1, keepdim=True) * y) / (2 * t)

        return logk, wgrad


# ====================================================================================================
def wrap_angle(x: Tensor) -> Tensor:
    """Reduce angles to ``[0, 2 pi)``."""
    return torch.remainder(x, TWO_PI)


def circle_log_heat_kernel_1d(delta: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """``log p_t`` on the unit circle at angular offset ``delta`` and its derivative in ``delta``.

    ::

        p_t(delta) = 1 + 2 sum_k e^{-k^2 t} cos(k delta)    (Fourier, used for t >= 1.5)
                   = 2 pi sum_m N(delta + 2 pi m; 0, 2t)   (wrapped Gaussian, used for t < 1.5)

    density w.r.t. ``d delta / 2 pi``. The wrapped sum keeps the images ``m = -1, 0, 1`` at every small ``t``:
    near the antipode ``|d| -> pi`` the image ``m = -sign(d)`` is as large as ``m = 0`` (dropping it costs
    ``log 2`` in ``log p_t`` and ``~pi / (2t)`` in the score). Neglected terms are below ``e^{-32}`` relative.
    """
    d = torch.remainder(delta + math.pi, TWO_PI) - math.pi
    if t < _CIRCLE_T_SWITCH:
        # |d| <= pi, so the m = 0 image dominates: log-sum-exp relative to it, without a new axis.
        images = 1 if t < 0.6 else _CIRCLE_IMAGES
        e0 = -d * d / (4 * t)
        rest = torch.zeros_like(d)
        drest = torch.zeros_like(d)
        for m in range(1, images + 1):
            for sgn in (1.0, -1.0):
                u = d + sgn * TWO_PI * m
                r = torch.exp(-u * u / (4 * t) - e0)
                rest = rest + r
                drest = drest + r * u
        logk = e0 + torch.log1p(rest) + math.log(TWO_PI) - 0.5 * math.log(4 * math.pi * t)
        dlog = -(d + drest) / ((1 + rest) * (2 * t))
        return logk, dlog
    k = torch.arange(1, _CIRCLE_FREQS + 1, dtype=d.dtype, device=d.device)
    c = torch.exp(-k * k * t)
    kd = d.unsqueeze(-1) * k
    f = 1 + 2 * (c * torch.cos(kd)).sum(-1)
    fp = -2 * (k * c * torch.sin(kd)).sum(-1)
    return torch.log(f), fp / f


class Torus(Manifold):
    """Flat torus ``[0, 2 pi)^d`` (a periodic box); ``Torus(1)`` is the circle.

    Heat kernel: product of circle kernels, ``p_t(x, y) = prod_j p^{S1}_t(y_j - x_j)`` w.r.t. the
    uniform law. Eigenfunctions ``sqrt(2) cos(k.x), sqrt(2) sin(k.x)``, eigenvalue ``|k|^2``.
    """

    spectral_gap = 1.0

    def __init__(self, d: int = 2):
        if int(d) < 1:
            raise ValueError(f"Torus: dimension must be >= 1, got {d}")
        self.dim = self.ambient_dim = int(d)

    def __repr__(self) -> str:
        return f"Torus({self.dim})"

    @property
    def log_volume(self) -> float:
        return self.dim * math.log(TWO_PI)

    def retract(self, x: Tensor, v: Tensor) -> Tensor:
        return wrap_angle(x + v)

    def project(self, x: Tensor) -> Tensor:
        return wrap_angle(x)

    def sample_uniform(self, n, generator=None, dtype=torch.float64, device=None) -> Tensor:
        return TWO_PI * rng.rand((n, self.dim), generator, device=device or "cpu", dtype=dtype)

    def heat_kernel_terms(self, y: Tensor, x: Tensor, t: float) -> tuple[Tensor, WeightedGrad]:
        """Per-coordinate wrapped kernels; memory ``B x c x (2 images + 1)`` per coordinate."""
        t = _check_t(t)
        logk = torch.zeros(y.shape[0], x.shape[0], dtype=y.dtype, device=y.device)
        dlogs = []
        for j in range(self.dim):
            lk, dl = circle_log_heat_kernel_1d(y[:, j, None] - x[None, :, j], t)
            logk = logk + lk
            dlogs.append(dl)

        def wgrad(w: Tensor) -> Tensor:
            return torch.stack([(w * dl).sum(-1) for dl in dlogs], -1)

        return logk, wgrad

    def frequencies(self, degree: int) -> Tensor:
        """Half-lattice ``{k in Z^d : 0 < |k|_inf <= degree, first non-zero entry > 0}``, by ``|k|^2``."""
        if int(degree) < 1:
            raise ValueError(f"Torus.frequencies: degree must be >= 1, got {degree}")
        rng = torch.arange(-degree, degree + 1)
        grid = torch.cartesian_prod(*([rng] * self.dim)).reshape(-1, self.dim)
        nz = grid != 0
        first = torch.argmax(nz.int(), dim=1)
        keep = nz.any(1) & (grid.gather(1, first[:, None]).squeeze(1) > 0)
        k = grid[keep]
        order = torch.argsort((k * k).sum(1) * (2 * degree + 1) ** self.dim + torch.arange(len(k)))
        return k[order]

    def eigenbasis(self, degree: int) -> Eigenbasis:
        """Real Fourier basis with ``|k|_inf <= degree``: ``N = (2 degree + 1)^d - 1`` functions."""
        k = self.frequencies(degree)
        kf = k.to(torch.float64)
        lam = (kf * kf).sum(1)
        s2 = math.sqrt(2.0)

        def values(x: Tensor) -> Tensor:
            ph = x @ kf.to(x).T
            return s2 * torch.cat([torch.cos(ph), torch.sin(ph)], -1)

        def grads(x: Tensor) -> Tensor:
            kk = kf.to(x)
            ph = x @ kk.T  # (B, K)
            gc = -s2 * torch.sin(ph)[..., None] * kk
            gs = s2 * torch.cos(ph)[..., None] * kk
            return torch.cat([gc, gs], 1)

        labels = tuple(("cos", tuple(r.tolist())) for r in k) + tuple(("sin", tuple(r.tolist())) for r in k)
        return Eigenbasis(torch.cat([lam, lam]), values, grads, labels)


class Circle(Torus):
    """The unit circle ``[0, 2 pi)`` (``Torus(1)``); points are ``(B, 1)`` angles."""

    def __init__(self):
        super().__init__(1)

    def __repr__(self) -> str:
        return "Circle()"


# ====================================================================================================
def gegenbauer_series(c: Tensor, t: float, n: int, terms: int | None = None) -> tuple[Tensor, Tensor]:
    """Heat kernel of ``S^n`` as a function of ``c = <x, y>`` and its ``c``-derivative, by series.

    ``p_t(c) = sum_l e^{-l(l+n-1) t} Z_l(c)``, ``Z_l = (2l+n-1)/(n-1) C_l^{(n-1)/2}(c)`` (for ``n = 2``:
    ``(2l+1) P_l(c)``); ``Z_l'(c) = (2l+n-1) C_{l-1}^{(n+1)/2}(c)``. Truncated where
    ``e^{-l^2 t} < e^{-45}``. Gegenbauer polynomials by their three-term recurrence.
    """
    a = 0.5 * (n - 1)
    if terms is None:
        terms = min(math.ceil(math.sqrt(45.0 / t)) + n + 2, 4000)
    if n == 2:
        return _legendre_series(c, t, terms)
    c0, c1 = torch.ones_like(c), 2 * a * c  # C_0^a, C_1^a
    d0, d1 = torch.zeros_like(c), torch.ones_like(c)  # C_{-1}^{a+1} := 0, C_0^{a+1}
    p = 1 + math.exp(-n * t) * (n + 1) / (n - 1) * c1
    dp = math.exp(-n * t) * (n + 1) * d1
    for lvl in range(2, terms + 1):
        c0, c1 = c1, (2 * c * (lvl + a - 1) * c1 - (lvl + 2 * a - 2) * c0) / lvl
        m = lvl - 1  # index of the next C^{a+1}
        d0, d1 = d1, (2 * c * (m + a) * d1 - (m + 2 * a) * d0) / m
        w = math.exp(-lvl * (lvl + n - 1) * t)
        if w < 1e-300:
            break
        p = p + w * (2 * lvl + n - 1) / (n - 1) * c1
        dp = dp + w * (2 * lvl + n - 1) * d1
    return p, dp


def _legendre_series(c: Tensor, t: float, terms: int) -> tuple[Tensor, Tensor]:
    """``S^2`` case of ``gegenbauer_series``: ``sum (2l+1) e^{-l(l+1)t} P_l(c)`` and its derivative, with
    ``l P_l = (2l-1) c P_{l-1} - (l-1) P_{l-2}`` and ``P_l' = P_{l-2}' + (2l-1) P_{l-1}`` (in place)."""
    p0, p1 = torch.ones_like(c), c.clone()
    d0, d1 = torch.zeros_like(c), torch.ones_like(c)
    w = math.exp(-2 * t)
    p = 1 + 3 * w * c
    dp = torch.full_like(c, 3 * w)
    for lvl in range(2, terms + 1):
        w = math.exp(-lvl * (lvl + 1) * t)
        if w < 1e-300:
            break
        p2 = torch.mul(c, p1).mul_((2 * lvl - 1) / lvl).sub_(p0, alpha=(lvl - 1) / lvl)
        d2 = d0.add_(p1, alpha=2 * lvl - 1)  # reuses d0's storage: d0 is not needed again
        p.add_(p2, alpha=w * (2 * lvl + 1))
        dp.add_(d2, alpha=w * (2 * lvl + 1))
        p0, p1, d0, d1 = p1, p2, d1, d2
    return p, dp


def sphere_log_parametrix(c: Tensor, t: float, n: int) -> tuple[Tensor, Tensor]:
    """Small-time (Varadhan / Minakshisundaram) form of ``log p_t`` on ``S^n`` and its ``c``-derivative.

    ``p_t ~ vol(S^n) (4 pi t)^{-n/2} e^{-theta^2/(4t)} (theta / sin theta)^{(n-1)/2} e^{n(n-1) t/6}``,
    ``theta = arccos c``; exact for ``S^3`` up to image terms, relative error ``O(t)`` on ``S^2``.
    """
    cc = c.clamp(-1.0, 1.0)
    th = torch.arccos(cc)
    s = torch.sin(th).clamp_min(1e-12)
    small = th < 1e-3
    ratio = torch.where(small, 1 + th * th / 6, th / s)
    logk = (
        _sphere_log_volume(n)
        - 0.5 * n * math.log(4 * math.pi * t)
        - th * th / (4 * t)
        + 0.5 * (n - 1) * torch.log(ratio)
        + n * (n - 1) * t / 6
    )
    # d/dtheta, then d theta / dc = -1/sin theta; the combined limit at theta -> 0 is finite.
    g1 = torch.where(small, 1 / (2 * t) + 0 * th, th / (2 * t * s))
    g2 = torch.where(small, -(n - 1) / 6 + 0 * th, -0.5 * (n - 1) * (1 / th.clamp_min(1e-12) - cc / s) / s)
    return logk, g1 + g2


def _sphere_log_volume(n: int) -> float:
    return math.log(2.0) + 0.5 * (n + 1) * math.log(math.pi) - math.lgamma(0.5 * (n + 1))


class Sphere(Manifold):
    """Unit sphere ``S^n`` in ``R^{n+1}`` (``n >= 2``), with Riemannian Brownian motion.

    Heat kernel (w.r.t. normalised area): the Gegenbauer series of ``gegenbauer_series`` for
    ``t >= 1e-2`` and wherever it is not lost to cancellation, the parametrix below that.
    Eigenvalues ``l(l+n-1)``; real spherical harmonics are implemented for ``n = 2``.
    """

    def __init__(self, n: int = 2):
        if int(n) < 2:
            raise ValueError(f"Sphere: n must be >= 2 (use Circle() for S^1), got {n}")
        self.dim = int(n)
        self.ambient_dim = int(n) + 1
        self.spectral_gap = float(n)

    def __repr__(self) -> str:
        return f"Sphere({self.dim})"

    @property
    def log_volume(self) -> float:
        return _sphere_log_volume(self.dim)

    def distance_from_manifold(self, x: Tensor) -> Tensor:
        return (x.norm(dim=-1) - 1).abs()

    def project_tangent(self, x: Tensor, v: Tensor) -> Tensor:
        """``v - <v, x> x``."""
        return v - (v * x).sum(-1, keepdim=True) * x

    def retract(self, x: Tensor, v: Tensor) -> Tensor:
        """``(x + v) / |x + v|``."""
        return self.project(x + v)

    def project(self, x: Tensor) -> Tensor:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)

    def sample_uniform(self, n, generator=None, dtype=torch.float64, device=None) -> Tensor:
        z = rng.randn((n, self.ambient_dim), generator, device=device or "cpu", dtype=dtype)
        return self.project(z)

    def log_heat_kernel_c(self, c: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """``log p_t`` as a function of ``c = <x, y>`` and ``d log p_t / dc``."""
        t = _check_t(t)
        lp, dlp = sphere_log_parametrix(c, t, self.dim)
        if t < _SPHERE_T_SWITCH:
            return lp, dlp
        p, dp = gegenbauer_series(c, t, self.dim)
        # The series loses relative accuracy in its far tail (cancellation at ~1e-16 / t).
        good = p > 1e-7 * (1.0 + 1.0 / t)
        ls = torch.log(torch.where(good, p, torch.ones_like(p)))
        return torch.where(good, ls, lp), torch.where(good, dp / torch.where(good, p, 1.0), dlp)

    def heat_kernel_terms(self, y: Tensor, x: Tensor, t: float) -> tuple[Tensor, WeightedGrad]:
        """``grad_y log p_t(<x_i, y>) = (log p)'(c) (x_i - c y)``: two matrix products per chunk."""
        c = (y @ x.T).clamp(-1.0, 1.0)
        logk, dl = self.log_heat_kernel_c(c, t)

        def wgrad(w: Tensor) -> Tensor:
            wd = w * dl
            return wd @ x - (wd * c).sum(-1, keepdim=True) * y

        return logk, wgrad

    def eigenbasis(self, degree: int) -> Eigenbasis:
        """Real spherical harmonics ``Y_lm``, ``1 <= l <= degree`` (``S^2`` only), ``N = (L+1)^2 - 1``."""
        if self.dim != 2:
            raise NotImplementedError(f"spherical harmonics are implemented for Sphere(2) only, not {self!r}")
        if int(degree) < 1:
            raise ValueError(f"Sphere.eigenbasis: degree must be >= 1, got {degree}")
        return spherical_harmonics_s2(int(degree))


def _legendre_q(z: Tensor, L: int) -> dict:
    """``Q_l^m(z) = d^m P_l / dz^m`` for ``0 <= m <= l <= L`` (polynomials, no ``sin`` factors)."""
    q = {}
    for m in range(L + 2):
        dfact = math.prod(range(1, 2 * m, 2)) if m > 0 else 1  # (2m-1)!!
        q[(m, m)] = torch.full_like(z, float(dfact))
        if m + 1 <= L + 1:
            q[(m + 1, m)] = (2 * m + 1) * z * q[(m, m)]
        for lvl in range(m + 2, L + 2):
            q[(lvl, m)] = ((2 * lvl - 1) * z * q[(lvl - 1, m)] - (lvl + m - 1) * q[(lvl - 2, m)]) / (lvl - m)
    return q


def spherical_harmonics_s2(L: int) -> Eigenbasis:
    """Real spherical harmonics on ``S^2``, orthonormal w.r.t. normalised area, degrees ``1..L``.

    ``Y_lm = N_lm Q_l^|m|(z) Re/Im (x + i y)^|m|`` with ``N_lm^2 = (2l+1) (l-|m|)!/(l+|m|)! (2 if m != 0)``;
    polynomial in ``(x, y, z)``, so gradients are exact: the Euclidean gradient of the polynomial,
    projected to the tangent plane.
    """
    idx = [(lvl, m) for lvl in range(1, L + 1) for m in range(-lvl, lvl + 1)]
    lam = torch.tensor([lvl * (lvl + 1) for lvl, _ in idx], dtype=torch.float64)
    norm = {
        (lvl, m): math.sqrt((2 * lvl + 1) * math.exp(math.lgamma(lvl - abs(m) + 1) - math.lgamma(lvl + abs(m) + 1)) * (2 if m else 1))
        for lvl, m in idx
    }

    def _parts(p: Tensor):
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        q = _legendre_q(z, L)
        w = torch.complex(x, y)
        pw = [torch.ones_like(w)]
        for _ in range(L):
            pw.append(pw[-1] * w)
        return q, pw

    def values(p: Tensor) -> Tensor:
        q, pw = _parts(p)
        cols = []
        for lvl, m in idx:
            r = pw[abs(m)].real if m >= 0 else pw[abs(m)].imag
            cols.append(norm[(lvl, m)] * q[(lvl, abs(m))] * r)
        return torch.stack(cols, -1)

    def grads(p: Tensor) -> Tensor:
        q, pw = _parts(p)
        cols = []
        for lvl, m in idx:
            am = abs(m)
            qv, dq = q[(lvl, am)], q[(lvl, am + 1)] if am + 1 <= lvl else torch.zeros_like(p[:, 0])
            if m >= 0:
                r = pw[am].real
                rx = am * pw[am - 1].real if am else torch.zeros_like(r)
                ry = -am * pw[am - 1].imag if am else torch.zeros_like(r)
            else:
                r = pw[am].imag
                rx = am * pw[am - 1].imag
                ry = am * pw[am - 1].real
            g = torch.stack([qv * rx, qv * ry, dq * r], -1) * norm[(lvl, m)]
            cols.append(g)
        g = torch.stack(cols, 1)  # (B, N, 3)
        return g - (g * p[:, None, :]).sum(-1, keepdim=True) * p[:, None, :]

    return Eigenbasis(lam, values, grads, tuple(idx))


# ====================================================================================================
def sample_von_mises(
    n: int, kappa: float, loc: float = 0.0, generator: torch.Generator | None = None, dtype=torch.float64
) -> Tensor:
    """``n`` angles in ``[0, 2 pi)`` from von Mises ``VM(loc, kappa)`` (Best-Fisher rejection), ``(n, 1)``."""
    if kappa <= 0:
        return Circle().sample_uniform(n, generator, dtype)
    tau = 1 + math.sqrt(1 + 4 * kappa * kappa)
    rho = (tau - math.sqrt(2 * tau)) / (2 * kappa)
    r = (1 + rho * rho) / (2 * rho)
    out = torch.empty(0, dtype=dtype)
    while out.numel() < n:
        u1, u2, u3 = torch.rand(3, 2 * n, generator=generator, dtype=dtype)
        z = torch.cos(math.pi * u1)
        f = (1 + r * z) / (r + z)
        c = kappa * (r - f)
        ok = (c * (2 - c) - u2 > 0) | (torch.log(c / u2) + 1 - c >= 0)
        th = torch.sign(u3 - 0.5) * torch.arccos(f)
        out = torch.cat([out, th[ok]])
    return wrap_angle(out[:n] + loc)[:, None]


def sample_von_mises_fisher(
    n: int, mean: Tensor, kappa: float, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` points of ``S^2`` from ``vMF(mean, kappa)`` by the exact inverse CDF of ``w = <mean, x>``:
    ``w = 1 + log(u + (1-u) e^{-2 kappa}) / kappa``, the azimuth uniform. Returns ``(n, 3)`` on
    ``mean``'s device (drawn on the generator's)."""
    mean = mean / mean.norm()
    dtype, dev = mean.dtype, mean.device
    u = rng.rand((n,), generator, device=dev, dtype=dtype)
    w = 1 + torch.log(u + (1 - u) * math.exp(-2 * kappa)) / kappa
    phi = TWO_PI * rng.rand((n,), generator, device=dev, dtype=dtype)
    r = torch.sqrt((1 - w * w).clamp_min(0))
    local = torch.stack([r * torch.cos(phi), r * torch.sin(phi), w], -1)
    # rotate e_z to mean (Householder reflection; a reflection keeps the law, which is symmetric)
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=dev)
    v = ez - mean
    if float(v.norm()) < 1e-12:
        return local
    v = v / v.norm()
    return local - 2 * (local @ v)[:, None] * v
