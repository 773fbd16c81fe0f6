"""Diffusion kernel smoothing (DKS) and its Riemannian version (RDKS).

The forward law started from the empirical measure ``rho_0^ = (1/n) sum_i delta_{x_i}`` is the
kernel mean embedding (see the kernels guide)

    h_t(y) = (1/n) sum_i k_t(x_i, y),        s_t(y) = grad log mu(y) + grad_y log h_t(y).

* DKS on ``R^d`` under OU (``a = e^{-t}``, ``sigma^2 = 1 - e^{-2t}``): the Nadaraya-Watson form::

      s_t(y) = (a m_t(y) - y) / sigma^2,   m_t(y) = sum_i w_i x_i,   w = softmax_i(-|y - a x_i|^2 / (2 sigma^2)),

  i.e. Tweedie's formula with the smoother ``m_t`` of ``E[X_0 | X_t = y]``.
* RDKS on a compact manifold with Brownian motion: ``k_t`` is the heat kernel, either in kernel form
  (``Manifold.heat_kernel_terms``) or spectral form ``h_t = 1 + sum_j e^{-lambda_j t} m_j phi_j``,
  ``m_j = (1/n) sum_i phi_j(x_i)``.

The kernel form is evaluated in chunks of data with a running log-sum-exp, so memory is
``O(B x chunk)`` and never ``O(B x n x D)``. Everything runs on the device of ``data``.

Sampling runs the reverse dynamics from the invariant law down to ``t_min = bandwidth``; the result is
a draw from the heat-kernel KDE ``rho_h^`` (bandwidth ``2h`` in variance per coordinate for BM).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sciffusion.core import rng
from sciffusion.core.kernels.manifolds import Euclidean, Manifold, Torus
from sciffusion.core.kernels.sde import reverse_sample

_FORMS = ("kernel", "spectral")
_PROCESSES = ("ou", "bm")
_ELEMENT_BUDGET = 1 << 22  # elements of one (B x chunk) working tensor
_MAX_SPECTRAL = 20000
_FOURIER_T = 0.05  # torus (d <= 2): from this t on, evaluate h_t by its Fourier series (|k| <= 27)
_FOURIER_K = 27  # e^{-27^2 * 0.05} = e^{-36}  # eigenfunctions the spectral form may use without an explicit max_degree


def _check_options(data: Tensor, process: str, form: str) -> None:
    """`data` is an `(n >= 2, D)` tensor and `process`, `form` are known names."""
    if not isinstance(data, Tensor):
        raise TypeError(f"KernelSmoothingScore: data must be a torch.Tensor, got {type(data).__name__}")
    if data.dim() != 2 or data.shape[0] < 2:
        raise ValueError(f"KernelSmoothingScore: data must have shape (n >= 2, D), got {tuple(data.shape)}")
    if process not in _PROCESSES:
        raise ValueError(f"KernelSmoothingScore: process must be one of {_PROCESSES}, got {process!r}")
    if form not in _FORMS:
        raise ValueError(f"KernelSmoothingScore: form must be one of {_FORMS}, got {form!r}")


class KernelSmoothingScore:
    """Score of the forward process started from the data's empirical measure (DKS / RDKS).

    Args:
        data: ``(n, D)`` training points on ``manifold`` (checked; off-manifold points raise).
        manifold: ``None`` or ``Euclidean(d)`` for DKS on ``R^d``; ``Circle()``, ``Torus(d)``,
            ``Sphere(n)`` for RDKS.
        bandwidth: ``t_min = h > 0`` where sampling stops (the KDE bandwidth), or ``"auto"``
            (leave-one-out log-likelihood of ``rho_h^``, see ``select_bandwidth``).
        process: on ``R^d``, ``"ou"`` (default, the VP process) or ``"bm"`` (``dX = sqrt(2) dW``).
        form: ``"kernel"`` (any manifold) or ``"spectral"`` (torus and ``Sphere(2)``).
        max_degree: spectral truncation; default ``ceil(6 / sqrt(bandwidth))`` (tail below ``e^{-36}``) (keeps ``h_t > 0``).
        chunk_size: data points per chunk (default: from a 4M-element budget).

    Example::

        est = KernelSmoothingScore(data, manifold=Sphere(2), bandwidth="auto")
        s = est.score(y, 0.1); x = est.sample(500, steps=200, generator=g)
    """

    def __init__(
        self,
        data: Tensor,
        manifold: Manifold | None = None,
        bandwidth: float | str = "auto",
        process: str = "ou",
        form: str = "kernel",
        max_degree: int | None = None,
        chunk_size: int | None = None,
        atol: float = 1e-5,
    ):
        _check_options(data, process, form)
        self.manifold = manifold if manifold is not None else Euclidean(data.shape[-1])
        self.manifold.check(data, name="KernelSmoothingScore data", atol=atol)
        if form == "spectral" and isinstance(self.manifold, Euclidean):
            raise ValueError("KernelSmoothingScore: form='spectral' needs a compact manifold (torus or sphere)")
        self.ou = isinstance(self.manifold, Euclidean) and process == "ou"
        self.process = process if isinstance(self.manifold, Euclidean) else "bm"
        self.data = self.manifold.project(data)
        self.form = form
        self.chunk_size = chunk_size
        self._charfn = None
        if isinstance(self.manifold, Torus) and self.manifold.dim <= 2:
            # Characteristic function on |k|_inf <= K for the separable Fourier evaluation (kernel form
            # at t >= 0.05 with K = 27; the whole spectral form with K = its degree).
            K = _FOURIER_K
            if form == "spectral" and isinstance(bandwidth, (int, float)) and bandwidth > 0:
                K = max(K, max_degree or math.ceil(6.0 / math.sqrt(bandwidth)))
            self._set_fourier_degree(K)
        self.atol = atol
        self.bandwidth_curve: tuple[Tensor, Tensor] | None = None
        self.bandwidth = self._choose_bandwidth(bandwidth)
        if form == "spectral":
            self._setup_spectral(max_degree)

    def _set_fourier_degree(self, K: int) -> None:
        """The characteristic function of the data at the frequencies `|k|_inf <= K` (torus, `d <= 2`)."""
        self._kk = torch.arange(-K, K + 1, dtype=self.data.dtype, device=self.data.device)
        self._charfn = self._char_function(self._kk)

    def _choose_bandwidth(self, bandwidth: float | str) -> float:
        """A positive float as given, or `"auto"`: the leave-one-out choice of `select_bandwidth` (its curve is kept)."""
        if isinstance(bandwidth, str):
            if bandwidth != "auto":
                raise ValueError(f"KernelSmoothingScore: bandwidth must be a positive float or 'auto', got {bandwidth!r}")
            h, grid, ll = select_bandwidth(self)
            self.bandwidth_curve = (grid, ll)
            bandwidth = h
        bandwidth = float(bandwidth)
        if not bandwidth > 0 or not math.isfinite(bandwidth):
            raise ValueError(f"KernelSmoothingScore: bandwidth must be positive, got {bandwidth}")
        return bandwidth

    def _setup_spectral(self, max_degree: int | None) -> None:
        """The spectral form: the Fourier table on a flat torus, else the manifold's eigenbasis and data means,
        truncated at `ceil(6 / sqrt(bandwidth))` unless `max_degree` is given."""
        deg = max_degree or math.ceil(6.0 / math.sqrt(self.bandwidth))
        if self._charfn is not None:
            if deg > (len(self._kk) - 1) // 2:  # bandwidth was chosen by "auto": rebuild at this degree
                self._set_fourier_degree(deg)
            self._spec_K = deg
            return
        m = self.manifold
        n_fun = (2 * deg + 1) ** m.dim - 1 if isinstance(m, Torus) else (deg + 1) ** 2 - 1
        if n_fun > _MAX_SPECTRAL and max_degree is None:
            raise ValueError(
                f"KernelSmoothingScore: form='spectral' at bandwidth {self.bandwidth:.3g} needs degree {deg} "
                f"({n_fun} eigenfunctions > {_MAX_SPECTRAL}); use form='kernel', a larger bandwidth, "
                "or set max_degree"
            )
        self.basis = self.manifold.eigenbasis(deg)
        self._lam = self.basis.eigenvalues.to(self.data)
        self._mhat = self._data_means(self.basis.values)

    def __repr__(self) -> str:
        kind = "DKS-OU" if self.ou else ("DKS-BM" if isinstance(self.manifold, Euclidean) else "RDKS")
        return f"KernelSmoothingScore({kind}, {self.manifold!r}, n={len(self.data)}, bandwidth={self.bandwidth:.4g}, form={self.form})"

    @property
    def device(self) -> torch.device:
        return self.data.device

    # -- kernel pieces --------------------------------------------------------------------------
    def _terms(self, y: Tensor, xc: Tensor, t: float):
        """``log k_t(x_i, y)`` for a data chunk and the weighted-gradient closure."""
        if not self.ou:
            return self.manifold.heat_kernel_terms(y, xc, t)
        a = math.exp(-t)
        var = -math.expm1(-2 * t)
        sq = (y * y).sum(-1, keepdim=True) - 2 * a * (y @ xc.T) + a * a * (xc * xc).sum(-1)
        logk = -sq.clamp_min(0) / (2 * var) - 0.5 * y.shape[-1] * math.log(2 * math.pi * var)

        def wgrad(w: Tensor) -> Tensor:
            return (a * (w @ xc) - w.sum(-1, keepdim=True) * y) / var

        return logk, wgrad

    def _chunk(self, batch: int) -> int:
        if self.chunk_size is not None:
            return int(self.chunk_size)
        per = 8 * self.manifold.dim if isinstance(self.manifold, Torus) else 4
        return max(16, _ELEMENT_BUDGET // max(1, batch * per))

    def _accumulate(self, y: Tensor, t: float, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Running log-sum-exp over data chunks: ``log h_t(y)`` ``(B,)`` and ``grad_y log h_t`` ``(B, D)``.

        ``exclude[b]`` is a data index left out of query ``b`` (leave-one-out), or ``-1``.
        """
        n = self.data.shape[0]
        B = y.shape[0]
        c = self._chunk(B)
        run_max = torch.full((B,), -math.inf, dtype=y.dtype, device=y.device)
        run_sum = torch.zeros(B, dtype=y.dtype, device=y.device)
        run_grad = torch.zeros_like(y)
        for s in range(0, n, c):
            xc = self.data[s : s + c]
            logk, wgrad = self._terms(y, xc, t)
            if exclude is not None:
                pos = exclude - s
                hit = (pos >= 0) & (pos < xc.shape[0])
                if hit.any():
                    rows = torch.nonzero(hit).squeeze(1)
                    logk = logk.index_put((rows, pos[rows]), torch.tensor(-math.inf, dtype=y.dtype, device=y.device))
            cmax = logk.max(-1).values
            new_max = torch.maximum(run_max, cmax)
            safe = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            scale = torch.exp(run_max - safe)
            w = torch.exp(logk - safe[:, None])
            run_sum = run_sum * scale + w.sum(-1)
            run_grad = run_grad * scale[:, None] + wgrad(w)
            run_max = new_max
        log_h = torch.log(run_sum) + run_max - math.log(n - (1 if exclude is not None else 0))
        return log_h, run_grad / run_sum[:, None]

    def _data_means(self, fn) -> Tensor:
        c = max(1, _ELEMENT_BUDGET // 64)
        tot = None
        for s in range(0, self.data.shape[0], c):
            v = fn(self.data[s : s + c]).sum(0)
            tot = v if tot is None else tot + v
        return tot / self.data.shape[0]

    def _spectral(self, y: Tensor, t: float) -> tuple[Tensor, Tensor]:
        coef = torch.exp(-self._lam * t) * self._mhat
        out_h, out_g = [], []
        step = max(1, _ELEMENT_BUDGET // (len(coef) * y.shape[-1]))
        for s in range(0, y.shape[0], step):
            yb = y[s : s + step]
            h = 1 + self.basis.values(yb) @ coef
            g = torch.einsum("bnd,n->bd", self.basis.grads(yb), coef)
            h = h.clamp_min(1e-12)  # truncation can dip below zero far from the data at tiny t
            out_h.append(torch.log(h))
            out_g.append(g / h[:, None])
        return torch.cat(out_h), torch.cat(out_g)

    def _char_function(self, kk: Tensor) -> Tensor:
        """``M(k) = (1/n) sum_i e^{i k.x_i}`` on the grid ``kk^d`` (``d <= 2``), over chunks of data."""
        tot = 0
        for s in range(0, self.data.shape[0], 8192):
            xc = self.data[s : s + 8192]
            E = [torch.exp(1j * xc[:, j, None] * kk) for j in range(self.manifold.dim)]
            tot = tot + (E[0].sum(0) if len(E) == 1 else E[0].T @ E[1])
        return tot / self.data.shape[0]

    def _fourier(self, y: Tensor, t: float, K: int = _FOURIER_K) -> tuple[Tensor, Tensor]:
        """Torus, ``d <= 2``: ``h_t(y) = sum_{|k| <= K} e^{-|k|^2 t} conj(M(k)) e^{i k.y}`` evaluated
        separably, ``O(B K^d)`` instead of ``O(B n)``; exact to ``e^{-36}`` when ``K^2 t >= 36``."""
        c = (len(self._kk) - 1) // 2
        sl = slice(c - K, c + K + 1)
        kk = self._kk[sl].to(y.dtype)
        decay = torch.exp(-kk * kk * t)
        W = self._charfn[sl] if self.manifold.dim == 1 else self._charfn[sl, sl]
        W = W.conj()
        F1 = torch.exp(1j * y[:, 0, None] * kk)
        if self.manifold.dim == 1:
            w = decay * W
            h = (F1 @ w).real
            g = ((F1 * (1j * kk)) @ w).real[:, None]
        else:
            w = decay[:, None] * W * decay[None, :]
            F2 = torch.exp(1j * y[:, 1, None] * kk)
            A = F1 @ w
            h = (A * F2).sum(-1).real
            g1 = (((F1 * (1j * kk)) @ w) * F2).sum(-1).real
            g2 = (A * F2 * (1j * kk)).sum(-1).real
            g = torch.stack([g1, g2], -1)
        h = h.clamp_min(1e-12)  # truncation can dip below zero far from the data at tiny t (spectral form)
        return torch.log(h), g / h[:, None]

    def _prep(self, x: Tensor, name: str) -> Tensor:
        x = self.manifold.check(torch.as_tensor(x), name=name, atol=self.atol)
        return self.manifold.project(x.to(device=self.device, dtype=self.data.dtype))

    # -- public ---------------------------------------------------------------------------------
    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``s_t(x) = grad log rho_t^(x)`` (Riemannian gradient on a manifold), shape ``(B, D)``.

        ``t`` is a positive float or a ``(B,)`` tensor (rows are grouped by distinct ``t``).
        """
        x = self._prep(x, "score: x")
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        if tt.numel() not in (1, x.shape[0]):
            raise ValueError(f"score: t must be a scalar or have shape ({x.shape[0]},), got {tuple(tt.shape)}")
        if not (tt > 0).all():
            raise ValueError(f"score: t must be positive, got min {float(tt.min())}")
        if tt.numel() == 1 or bool((tt == tt[0]).all()):
            return self._score_at(x, float(tt[0]))
        out = torch.empty_like(x)
        tt = tt.to(x.device)
        for tv in torch.unique(tt):
            rows = tt == tv
            out[rows] = self._score_at(x[rows], float(tv))
        return out

    def _log_h_and_score(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        if self.form == "spectral":
            if self._charfn is not None:
                return self._fourier(x, t, self._spec_K)
            return self._spectral(x, t)
        if self._charfn is not None and t >= _FOURIER_T:
            log_h, g = self._fourier(x, t)
            # The series is accurate to ~1e-15 absolute: rows in the far tail go back to the kernel sum.
            far = log_h < math.log(1e-6)
            if far.any():
                log_h, g = log_h.clone(), g.clone()
                log_h[far], g[far] = self._accumulate(x[far], t)
            return log_h, g
        return self._accumulate(x, t)

    def _score_at(self, x: Tensor, t: float) -> Tensor:
        return self._log_h_and_score(x, t)[1]

    def log_prob(self, y: Tensor, t: float | None = None, relative: bool = False) -> Tensor:
        """``log rho_t^(y)`` with ``t = bandwidth`` by default (the KDE the sampler draws from).

        Density w.r.t. Lebesgue / the volume measure (the torus box ``[0, 2 pi)^d``, the sphere's
        area); ``relative=True`` gives it w.r.t. the normalised ``mu`` on a compact manifold.
        """
        y = self._prep(y, "log_prob: y")
        t = self.bandwidth if t is None else float(t)
        if not t > 0:
            raise ValueError(f"log_prob: t must be positive, got {t}")
        log_h = self._log_h_and_score(y, t)[0]
        return log_h if relative else log_h - self.manifold.log_volume

    def sample(
        self,
        n: int,
        steps: int = 200,
        generator: torch.Generator | None = None,
        method: str = "sde",
        t_max: float | None = None,
        return_path: bool = False,
    ) -> Tensor:
        """Reverse-time sampling from the invariant law down to ``t_min = bandwidth``.

        ``t_max`` defaults to ``5 / lambda_1`` on a compact manifold (TV error ``~ e^{-5}``) and to 8
        for OU. Method ``"sde"`` (reverse SDE) or ``"ode"`` (probability flow).
        """
        if int(n) < 1:
            raise ValueError(f"sample: n must be >= 1, got {n}")
        m = self.manifold
        dt = self.data.dtype
        if self.ou:
            t_max = t_max or 8.0
            x0 = rng.randn((n, m.ambient_dim), generator, device=self.device, dtype=dt)
            drift = "ou"
        elif isinstance(m, Euclidean):
            raise ValueError("sample: Brownian motion on R^d has no invariant law to start from; use process='ou'")
        else:
            t_max = t_max or 5.0 / m.spectral_gap
            x0 = m.sample_uniform(n, generator=generator, dtype=dt, device=self.device)
            drift = "heat"
        if t_max <= self.bandwidth:
            raise ValueError(f"sample: t_max={t_max} must exceed the bandwidth {self.bandwidth}")
        return reverse_sample(
            self._score_at, m, x0, t_max, self.bandwidth, steps=steps, method=method,
            drift=drift, generator=generator, return_path=return_path,
        )


def select_bandwidth(
    est: KernelSmoothingScore,
    grid: Tensor | None = None,
    max_queries: int = 500,
    seed: int = 0,
) -> tuple[float, Tensor, Tensor]:
    """Leave-one-out choice of ``h``: maximise ``(1/m) sum_b log[(1/(n-1)) sum_{i != b} k_h(x_i, x_b)]``.

    ``m = min(n, max_queries)`` query points drawn from the data. Returns ``(h, grid, loo_ll)``; the
    grid is geometric on ``[1e-4, 2]`` (refined once around the maximum).
    """
    n = est.data.shape[0]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[: min(n, max_queries)].to(est.device)
    y = est.data[idx]

    def loo(h: float) -> float:
        return float(est._accumulate(y, h, exclude=idx)[0].mean())

    if grid is None:
        coarse = torch.logspace(-4, math.log10(2.0), 16, dtype=torch.float64)
        ll = torch.tensor([loo(float(h)) for h in coarse], dtype=torch.float64)
        k = int(torch.argmax(ll))
        lo, hi = coarse[max(k - 1, 0)], coarse[min(k + 1, len(coarse) - 1)]
        fine = torch.logspace(math.log10(lo), math.log10(hi), 9, dtype=torch.float64)
        llf = torch.tensor([loo(float(h)) for h in fine], dtype=torch.float64)
        grid, ll = torch.cat([coarse, fine]), torch.cat([ll, llf])
        order = torch.argsort(grid)
        grid, ll = grid[order], ll[order]
    else:
        grid = torch.as_tensor(grid, dtype=torch.float64)
        if not (grid > 0).all():
            raise ValueError("select_bandwidth: every grid bandwidth must be positive")
        ll = torch.tensor([loo(float(h)) for h in grid], dtype=torch.float64)
    return float(grid[int(torch.argmax(ll))]), grid, ll
