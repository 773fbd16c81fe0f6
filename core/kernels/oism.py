"""Operator-informed score matching (OISM): a closed-form score at every time from data averages.

Model (Shen & Oates, arXiv 2406.09084): ``s_t(x) = grad log mu(x) + sum_n alpha_{t,n} grad phi_n(x)``
with ``-L phi_n = lambda_n phi_n``. Minimising ``E_{rho_t}|s - grad log rho_t|^2`` in generator form gives

    A_t[n, m] = E_{rho_t} Gamma(phi_n, phi_m) = sum_q c^{nm}_q e^{-lambda_q t} m_q,
    b_t[n]    = lambda_n e^{-lambda_n t} m_n,             alpha_t = (A_t + eps I)^{-1} b_t,

where ``m_q = (1/n) sum_i phi_q(x_i)`` over the product closure of the basis, computed once for all t.

Bases:

* ``"hermite"`` (OU on ``R^d``, ``mu = N(0, I)``, ``grad log mu = -x``): normalised Hermite polynomials
  ``h_k(x_j) = He_k(x_j)/sqrt(k!)``, ``k = 1..K`` per coordinate (after an optional PCA rotation, which
  the OU process commutes with), ``lambda = k``. ``A_t`` is block diagonal (one ``K x K`` block per
  coordinate) by ``He_a He_b = sum_r C(a,r) C(b,r) r! He_{a+b-2r}``.
* ``"fourier"`` (BM on ``Torus(d)``/``Circle()``): ``sqrt(2) cos(k.x), sqrt(2) sin(k.x)``, ``|k|_inf <= K``;
  products by product-to-sum, i.e. the empirical characteristic function on ``|q|_inf <= 2K``.
* ``"spherical"`` (BM on ``Sphere(2)``): real spherical harmonics of degree ``1..L``; the coefficients
  ``c^{nm}_q`` are computed once by a quadrature exact for degree ``4L``.

Shrinkage of the averages: ``m_q <- m_q / (1 + eta lambda_q)`` (a guess at the paper's estimator; it damps
high frequencies whose averages are noisy).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sciffusion.core import rng
from sciffusion.core.kernels.manifolds import (
    Euclidean,
    Manifold,
    Sphere,
    Torus,
    spherical_harmonics_s2,
)

_BASES = ("hermite", "fourier", "spherical")
_MAX_EXACT_TIMES = 64  # distinct times solved exactly in one call; beyond, interpolate in log t
_GRID_LO, _GRID_HI, _GRID_SIZE = 1e-5, 1e2, 1024  # the interpolation grid (spacing 0.016 in log t)


def hermite_normalised(z: Tensor, K: int) -> Tensor:
    """``h_k(z) = He_k(z)/sqrt(k!)`` for ``k = 0..K``, stacked on a new last axis (stable recurrence
    ``h_{k+1} = (z h_k - sqrt(k) h_{k-1}) / sqrt(k+1)``)."""
    out = [torch.ones_like(z)]
    if K >= 1:
        out.append(z.clone())
    for k in range(1, K):
        out.append((z * out[k] - math.sqrt(k) * out[k - 1]) / math.sqrt(k + 1))
    return torch.stack(out, -1)


def _hermite_product_tensor(K: int) -> Tensor:
    """``T[k, l, q]`` (``k, l = 1..K``, ``q = 0..2K-2``) with ``<grad h_k, grad h_l> = sum_q T h_q``."""
    T = np.zeros((K, K, 2 * K - 1))
    lg = math.lgamma
    for k in range(1, K + 1):
        for j in range(1, K + 1):
            a, b = k - 1, j - 1
            for r in range(min(a, b) + 1):
                q = a + b - 2 * r
                logc = (lg(a + 1) - lg(r + 1) - lg(a - r + 1)) + (lg(b + 1) - lg(r + 1) - lg(b - r + 1))
                logc += lg(r + 1) + 0.5 * lg(q + 1) - 0.5 * (lg(a + 1) + lg(b + 1))
                T[k - 1, j - 1, q] += math.sqrt(k * j) * math.exp(logc)
    return torch.from_numpy(T)


def hermite_moments(z: Tensor, K: int) -> Tensor:
    """``m[j, q] = (1/n) sum_i h_q(z_ij)``, ``q = 0..max(2K-2, K)``, shape ``(d, Q)``."""
    return hermite_normalised(z, max(2 * K - 2, K)).mean(0)


def fourier_moments(x: Tensor, K: int) -> Tensor:
    """Empirical characteristic function ``M[q] = (1/n) sum_i e^{i q.x_i}`` on ``|q|_inf <= 2K``.

    Complex tensor of shape ``(4K+1,)*d``, index ``q + 2K``.
    """
    n, d = x.shape
    q = torch.arange(-2 * K, 2 * K + 1, dtype=x.dtype, device=x.device)
    per = [torch.exp(1j * (x[:, j, None] * q)) for j in range(d)]  # (n, 4K+1) each
    out = per[0]
    for j in range(1, d):
        out = (out[..., None] * per[j].reshape(n, *([1] * j), -1)).reshape(n, *([4 * K + 1] * (j + 1)))
    return out.mean(0)


def spherical_moments(x: Tensor, L: int) -> Tensor:
    """``m_q = (1/n) sum_i Y_q(x_i)`` for real spherical harmonics of degree ``1..2L``."""
    return spherical_harmonics_s2(2 * L).values(x).mean(0)


def _basis_and_manifold(basis: str | None, manifold: Manifold | None, dim: int | None) -> tuple[str, Manifold]:
    """Fill in whichever of `basis` and `manifold` is missing from the other, and check that they fit."""
    if manifold is None:
        if basis in (None, "hermite"):
            manifold = Euclidean(int(dim))
        elif basis == "fourier":
            manifold = Torus(int(dim))
        elif basis == "spherical":
            manifold = Sphere(2)
    if basis is None:
        basis = "fourier" if isinstance(manifold, Torus) else "spherical" if isinstance(manifold, Sphere) else "hermite"
    if basis not in _BASES:
        raise ValueError(f"SpectralOISM: basis must be one of {_BASES}, got {basis!r}")
    expected = {"hermite": Euclidean, "fourier": Torus, "spherical": Sphere}[basis]
    if not isinstance(manifold, expected) or (basis == "spherical" and manifold.dim != 2):
        raise ValueError(f"SpectralOISM: basis {basis!r} does not fit {manifold!r}")
    return basis, manifold


def _principal_axes(data: Tensor) -> Tensor:
    """Axes of the centred covariance, largest first (columns). `x` itself is only rotated (OU commutes with
    rotations, not with shifts), so the score stays exact for the rotated data."""
    xc = data - data.mean(0)
    _, vecs = torch.linalg.eigh(xc.T @ xc / data.shape[0])
    return vecs.flip(-1)


class SpectralOISM:
    """Closed-form OISM score ``s_t = grad log mu + sum_n alpha_{t,n} grad phi_n`` for all ``t``.

    Args:
        data: ``(n, D)`` samples of ``rho_0`` (or ``None`` with ``moments=``).
        basis: ``"hermite"`` (OU on ``R^d``), ``"fourier"`` (torus/circle), ``"spherical"`` (``S^2``);
            inferred from ``manifold`` when ``None``.
        degree: ``K`` (Hermite order per coordinate, max frequency, or max harmonic degree).
        manifold: ``Euclidean(d)`` (default), ``Torus(d)``/``Circle()`` or ``Sphere(2)``.
        pca: rotate to the principal axes of ``Cov[x]`` before the per-coordinate Hermite basis.
        ridge: ``eps`` added to the diagonal of ``A_t``.
        shrinkage: ``eta`` in ``m_q <- m_q / (1 + eta lambda_q)``.
        moments: population averages in the format of ``hermite_moments`` / ``fourier_moments`` /
            ``spherical_moments`` (then ``data`` may be ``None``; ``dim`` gives ``d`` if needed).

    Example::

        oism = SpectralOISM(x0, basis="hermite", degree=2)
        s = oism.score(x, 0.3)          # (B, d)
    """

    def __init__(
        self,
        data: Tensor | None = None,
        basis: str | None = None,
        degree: int = 2,
        manifold: Manifold | None = None,
        pca: bool = False,
        ridge: float = 1e-8,
        shrinkage: float = 0.0,
        moments: Tensor | None = None,
        dim: int | None = None,
    ):
        if data is None and moments is None:
            raise ValueError("SpectralOISM: give data or moments")
        if data is not None:
            if not isinstance(data, Tensor) or data.dim() != 2:
                raise ValueError(f"SpectralOISM: data must be a (n, D) tensor, got {getattr(data, 'shape', type(data))}")
            dim = data.shape[1]
        basis, manifold = _basis_and_manifold(basis, manifold, dim)
        if int(degree) < 1:
            raise ValueError(f"SpectralOISM: degree must be >= 1, got {degree}")
        if ridge < 0 or shrinkage < 0:
            raise ValueError(f"SpectralOISM: ridge and shrinkage must be >= 0, got {ridge}, {shrinkage}")
        self.basis, self.K, self.manifold = basis, int(degree), manifold
        self.ridge, self.shrinkage = float(ridge), float(shrinkage)
        self.d = manifold.ambient_dim
        self.n_basis = {
            "hermite": self.K,
            "fourier": (2 * self.K + 1) ** manifold.dim - 1,
            "spherical": (self.K + 1) ** 2 - 1,
        }[basis]
        if data is not None:
            self._check_data(data)
        dtype = data.dtype if data is not None else torch.float64
        device = data.device if data is not None else (moments.device if moments is not None else None)
        self.rot: Tensor | None = None
        if pca:
            if basis != "hermite" or data is None:
                raise ValueError("SpectralOISM: pca=True needs the hermite basis and data")
            self.rot = _principal_axes(data)
        setup = {"hermite": self._setup_hermite, "fourier": self._setup_fourier, "spherical": self._setup_spherical}
        setup[basis](data, moments, dtype, device)

    # -- setup ------------------------------------------------------------------------------
    def _check_data(self, data: Tensor) -> None:
        """The data lie on the manifold and are enough for the basis (one more point than eigenfunctions)."""
        self.manifold.check(data, name="SpectralOISM data")
        n_need = self.n_basis + 1
        if data.shape[0] < n_need:
            raise ValueError(
                f"SpectralOISM: {data.shape[0]} data points are too few for the {self.basis} basis of degree "
                f"{self.K} ({self.n_basis} eigenfunctions per block); need at least {n_need}"
            )

    def _z(self, x: Tensor) -> Tensor:
        return x if self.rot is None else x @ self.rot.to(x)

    def _setup_hermite(self, data, moments, dtype, device):
        self._T = _hermite_product_tensor(self.K).to(dtype=dtype, device=device)
        m = hermite_moments(self._z(data), self.K) if moments is None else moments.to(dtype=dtype, device=device)
        q = torch.arange(m.shape[-1], dtype=dtype, device=device)
        self.moments = m / (1 + self.shrinkage * q)

    def _setup_fourier(self, data, moments, dtype, device):
        K, d = self.K, self.manifold.dim
        kf = self.manifold.frequencies(K).to(device=device)
        self.freqs = kf.to(dtype)
        M = fourier_moments(data, K) if moments is None else moments.to(device=device)
        grid = torch.arange(-2 * K, 2 * K + 1, device=device, dtype=dtype)
        q2 = sum(g**2 for g in torch.meshgrid(*([grid] * d), indexing="ij"))
        self._q2 = q2.reshape(-1)
        self.moments = (M.reshape(-1) / (1 + self.shrinkage * self._q2)).to(torch.complex128 if dtype == torch.float64 else torch.complex64)
        strides = torch.tensor([(4 * K + 1) ** (d - 1 - j) for j in range(d)], device=device)

        def flat(q):  # (..., d) integer frequencies -> flat index
            return ((q + 2 * K) * strides).sum(-1)

        self._i_minus = flat(kf[:, None, :] - kf[None, :, :])
        self._i_plus = flat(kf[:, None, :] + kf[None, :, :])
        self._i_k = flat(kf)
        self._kl = self.freqs @ self.freqs.T
        self._lam = (self.freqs**2).sum(1)

    def _setup_spherical(self, data, moments, dtype, device):
        L = self.K
        self._b1 = spherical_harmonics_s2(L)
        b2 = spherical_harmonics_s2(2 * L)
        # Quadrature exact for degree 4L on S^2: Gauss-Legendre in z (2L+1 nodes) x uniform in phi.
        zn, zw = np.polynomial.legendre.leggauss(2 * L + 1)
        nphi = 4 * L + 2
        phi = 2 * math.pi * np.arange(nphi) / nphi
        Z, P = np.meshgrid(zn, phi, indexing="ij")
        r = np.sqrt(1 - Z**2)
        pts = torch.tensor(np.stack([r * np.cos(P), r * np.sin(P), Z], -1).reshape(-1, 3), dtype=torch.float64)
        w = torch.tensor((zw[:, None] / 2 / nphi * np.ones_like(P)).reshape(-1), dtype=torch.float64)
        G = self._b1.grads(pts)  # (Q, N, 3)
        gam = torch.einsum("pnd,pmd->pnm", G, G)  # Gamma(phi_n, phi_m) at the nodes
        Yq = b2.values(pts)
        self._c = torch.einsum("p,pnm,pq->nmq", w, gam, Yq).to(dtype=dtype, device=device)
        self._c0 = torch.einsum("p,pnm->nm", w, gam).to(dtype=dtype, device=device)
        self._lamq = b2.eigenvalues.to(dtype=dtype, device=device)
        self._lam = self._b1.eigenvalues.to(dtype=dtype, device=device)
        m = spherical_moments(data, L) if moments is None else moments.to(dtype=dtype, device=device)
        self.moments = m / (1 + self.shrinkage * self._lamq)

    # -- the linear system ------------------------------------------------------------------
    def system(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """``(A_t, b_t)`` for times ``t`` of shape ``(T,)``: ``(T, G, N, N)`` and ``(T, G, N)``
        (``G = d`` blocks for Hermite, ``G = 1`` otherwise)."""
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        if not (tt >= 0).all():
            raise ValueError(f"SpectralOISM: t must be >= 0, got min {float(tt.min())}")
        if self.basis == "hermite":
            m = self.moments  # (d, Q)
            tt = tt.to(m)
            Q = self._T.shape[-1]
            q = torch.arange(Q, dtype=m.dtype, device=m.device)
            em = torch.exp(-tt[:, None] * q) [:, None, :] * m[None, :, :Q]  # (T, d, Q)
            A = torch.einsum("klq,tjq->tjkl", self._T, em)
            k = torch.arange(1, self.K + 1, dtype=m.dtype, device=m.device)
            b = k * torch.exp(-tt[:, None, None] * k) * m[None, :, 1 : self.K + 1]
            return A, b
        if self.basis == "fourier":
            tt = tt.to(self._q2)
            Mt = torch.exp(-tt[:, None] * self._q2) * self.moments  # (T, Qflat)
            Ec, Es = Mt.real, Mt.imag
            im, ip = self._i_minus, self._i_plus
            kl = self._kl
            cc = kl * (Ec[:, im] - Ec[:, ip])
            cs = -kl * (Es[:, ip] + Es[:, im])
            ss = kl * (Ec[:, im] + Ec[:, ip])
            A = torch.cat([torch.cat([cc, cs], -1), torch.cat([cs.transpose(-1, -2), ss], -1)], -2)
            lam = self._lam
            e = torch.exp(-tt[:, None] * lam)
            mk = self.moments[self._i_k]
            b = torch.cat([lam * e * math.sqrt(2) * mk.real, lam * e * math.sqrt(2) * mk.imag], -1)
            return A[:, None], b[:, None]
        tt = tt.to(self._lam)
        em = torch.exp(-tt[:, None] * self._lamq) * self.moments  # (T, Q)
        A = self._c0 + torch.einsum("nmq,tq->tnm", self._c, em)
        b = self._lam * torch.exp(-tt[:, None] * self._lam) * self.moments[: len(self._lam)]
        return A[:, None], b[:, None]

    def coefficients(self, t: float | Tensor) -> Tensor:
        """``alpha_t = (A_t + eps I)^{-1} b_t``, shape ``(T, G, N)``; a single ``t`` is cached (samplers and
        the likelihood ODE ask for the same grid times for the score and its divergence)."""
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        key = float(tt[0]) if tt.numel() == 1 else None
        cache = self.__dict__.setdefault("_coef_cache", {})
        if key is not None and key in cache:
            return cache[key]
        A, b = self.system(tt)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        alpha = torch.linalg.solve(A + self.ridge * eye, b.unsqueeze(-1)).squeeze(-1)
        if key is not None:
            if len(cache) > 1024:
                cache.clear()
            cache[key] = alpha
        return alpha

    def _times(self, x: Tensor, t) -> tuple[Tensor, Tensor]:
        tt = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1)
        if tt.numel() not in (1, x.shape[0]):
            raise ValueError(f"SpectralOISM: t must be a scalar or have shape ({x.shape[0]},), got {tuple(tt.shape)}")
        uniq, inv = torch.unique(tt, return_inverse=True)
        if tt.numel() == 1:
            inv = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return uniq, inv

    def _alpha_rows(self, x: Tensor, t) -> Tensor:
        """``alpha_t`` per row ``(B, G, N)``. With more than ``_MAX_EXACT_TIMES`` distinct times (a
        training batch), ``alpha`` is interpolated linearly in ``log t`` from a fixed geometric grid of
        ``_GRID_SIZE`` times on ``[1e-5, 1e2]``, solved once per instance (the entries of ``A_t, b_t``
        are sums of exponentials in ``t``, so ``alpha`` is smooth in ``log t``)."""
        uniq, inv = self._times(x, t)
        if len(uniq) <= _MAX_EXACT_TIMES or float(uniq[0]) < _GRID_LO or float(uniq[-1]) > _GRID_HI:
            return self.coefficients(uniq)[inv].to(x.dtype)
        grid_alpha = self.__dict__.get("_grid_alpha")
        if grid_alpha is None:
            grid = torch.logspace(math.log10(_GRID_LO), math.log10(_GRID_HI), _GRID_SIZE, dtype=torch.float64)
            grid_alpha = torch.cat([self.coefficients(grid[i : i + 64]) for i in range(0, _GRID_SIZE, 64)])
            self._grid_alpha = grid_alpha
        u = (torch.log(uniq.to(torch.float64)) - math.log(_GRID_LO)) / math.log(_GRID_HI / _GRID_LO) * (_GRID_SIZE - 1)
        u = u.to(grid_alpha.device)
        i0 = u.floor().long().clamp(0, _GRID_SIZE - 2)
        w = (u - i0).clamp(0, 1).to(grid_alpha.dtype)[:, None, None]
        alpha = (1 - w) * grid_alpha[i0] + w * grid_alpha[i0 + 1]
        return alpha[inv.to(alpha.device)].to(x.dtype)

    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``s_t(x)``, shape ``(B, D)``; ``t`` scalar or ``(B,)`` (OU time for Hermite, BM time otherwise)."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"SpectralOISM.score: x must have shape (B, {self.d}), got {tuple(getattr(x, 'shape', ()))}")
        alpha = self._alpha_rows(x, t)  # (B, G, N)
        if self.basis == "hermite":
            z = self._z(x)
            h = hermite_normalised(z, self.K - 1)  # (B, d, K): h_0..h_{K-1}
            k = torch.arange(1, self.K + 1, dtype=x.dtype, device=x.device)
            sz = -z + (alpha * torch.sqrt(k) * h).sum(-1)
            return sz if self.rot is None else sz @ self.rot.to(x).T
        if self.basis == "fourier":
            kf = self.freqs.to(x)
            ph = x @ kf.T
            n = kf.shape[0]
            ac, as_ = alpha[:, 0, :n], alpha[:, 0, n:]
            return math.sqrt(2) * ((-torch.sin(ph) * ac + torch.cos(ph) * as_) @ kf)
        return torch.einsum("bnd,bn->bd", self._b1.grads(x), alpha[:, 0])

    def divergence(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``div s_t(x)``: ``-d + sum alpha h_k''`` (Hermite) or ``-sum_n alpha_n lambda_n phi_n`` (torus, sphere)."""
        alpha = self._alpha_rows(x, t)
        if self.basis == "hermite":
            z = self._z(x)
            h = hermite_normalised(z, self.K)  # h_0..h_K
            k = torch.arange(1, self.K + 1, dtype=x.dtype, device=x.device)
            # d/dz [sqrt(k) h_{k-1}] = sqrt(k (k-1)) h_{k-2}
            hk2 = torch.cat([torch.zeros_like(h[..., :1]), h[..., : self.K - 1]], -1)
            return -x.shape[1] + (alpha * torch.sqrt(k * (k - 1)) * hk2).sum((-1, -2))
        if self.basis == "fourier":
            phi = self.manifold.eigenbasis(self.K).values(x)
            lam = torch.cat([self._lam, self._lam]).to(x)
        else:
            phi = self._b1.values(x)
            lam = self._lam.to(x)
        return -(alpha[:, 0] * lam * phi).sum(-1)


# ====================================================================================================
def _vp_coeffs(process, t: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
    a = torch.as_tensor(process.alpha(t)).to(x0)
    s = torch.as_tensor(process.sigma(t)).to(x0)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    return a.reshape(shape), s.reshape(shape)


def _flat_score(oism: SpectralOISM, x: Tensor, tau: Tensor) -> Tensor:
    return oism.score(x.reshape(x.shape[0], -1), tau).reshape(x.shape)


def _noised_with_oism_eps(
    oism: SpectralOISM, process, x0: Tensor, generator: torch.Generator | None = None, t: Tensor | None = None,
    t_eps: float = 1e-3,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`(x_t, t, eps, -sigma_t s_OISM(x_t, tau))`: `t` uniform on `[t_eps, 1]` unless given,
    `x_t = alpha_t x0 + sigma_t eps`, OU time `tau = -log alpha_t`; the OISM term carries no gradient."""
    if t is None:
        t = t_eps + (1 - t_eps) * rng.rand((x0.shape[0],), generator, device=x0.device, dtype=torch.float64)
    a, s = _vp_coeffs(process, t, x0)
    eps = rng.randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
    xt = a * x0 + s * eps
    tau = -torch.log(a.reshape(-1).to(torch.float64))
    with torch.no_grad():
        base = -s * _flat_score(oism, xt, tau)
    return xt, t, eps, base


def oism_residual_loss(
    net: Callable,
    oism: SpectralOISM,
    process,
    x0: Tensor,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    t_eps: float = 1e-3,
) -> Tensor:
    """DSM loss of the residual model ``eps_hat = -sigma_t s_OISM(x_t, tau) + net(x_t, t)`` (section 3.3b).

    ``process`` is a VP process of the core (``.alpha(t)``, ``.sigma(t)``, e.g. ``DiffusionProcess``);
    ``x_t = alpha_t x0 + sigma_t eps``; the OISM score (Hermite basis, OU time ``tau = -log alpha_t``) is
    held fixed. Loss ``mean |eps_hat - eps|^2``, the plain DDPM loss with an OISM starting point.
    """
    xt, t, eps, base = _noised_with_oism_eps(oism, process, x0, generator, t, t_eps)
    return ((base + net(xt, t.to(x0.dtype)) - eps) ** 2).mean()


def oism_pretrain_loss(net: Callable, oism: SpectralOISM, process, x0: Tensor, **draw: Any) -> Tensor:
    """Pre-training regression of an eps-network onto the OISM score (section 3.3c):
    ``mean |net(x_t, t) - (-sigma_t s_OISM(x_t, tau))|^2`` over ``x_t ~ rho_t``; switch to DSM after.
    ``draw``: ``generator``, ``t``, ``t_eps``, as in ``oism_residual_loss``."""
    xt, t, _, target = _noised_with_oism_eps(oism, process, x0, **draw)
    return ((net(xt, t.to(x0.dtype)) - target) ** 2).mean()


# ====================================================================================================
def gradient_variance_closed_form(s0: float, t: float) -> dict:
    """Per-sample gradient variances at the optimum for ``N(0, s0^2)`` data under OU, model ``s = theta x``.

    ``v = a^2 s0^2 + sigma^2``, ``c = a (v - 2 sigma^2) / (sigma v)``:
    ``Var_DSM = 16 a^4 s0^4 / v^2 + 4 c^2 s0^2``, ``Var_OISM = 8 a^4 s0^4 / v^2``,
    ``ratio = 2 + (v - 2 sigma^2)^2 / (2 sigma^2 a^2 s0^2)`` (section 3.3a).
    """
    a = math.exp(-t)
    sg2 = -math.expm1(-2 * t)
    v = a * a * s0 * s0 + sg2
    c = a * (v - 2 * sg2) / (math.sqrt(sg2) * v)
    dsm = 16 * a**4 * s0**4 / v**2 + 4 * c * c * s0 * s0
    oism = 8 * a**4 * s0**4 / v**2
    return {"dsm": dsm, "oism": oism, "ratio": 2 + (v - 2 * sg2) ** 2 / (2 * sg2 * a * a * s0 * s0)}


def linear_score_gradients(
    x0: Tensor, t: float, theta: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Per-sample ``d loss / d theta`` for the model ``s(x) = theta x`` under OU at time ``t``.

    DSM: ``l = |theta x_t + z/sigma|^2`` with ``x_t = a x0 + sigma z``, so ``g = 2 (theta x_t + z/sigma) x_t``.
    OISM: ``l = P_t(|s|^2 + 2 div s)(x0) = theta^2 (a^2 x0^2 + sigma^2) + 2 theta`` (the forward noise
    integrated out analytically), so ``g = 2 theta (a^2 x0^2 + sigma^2) + 2``.
    """
    a = math.exp(-t)
    sg = math.sqrt(-math.expm1(-2 * t))
    z = rng.randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
    xt = a * x0 + sg * z
    g_dsm = 2 * (theta * xt + z / sg) * xt
    g_oism = 2 * theta * (a * a * x0 * x0 + sg * sg) + 2
    return g_dsm, g_oism
