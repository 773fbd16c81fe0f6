"""Distribution-level sample quality: Fréchet distance, improved precision/recall, density/coverage.

Every function takes two feature matrices of shape `(n, d)` (any features: raw coordinates,
ChemNet activations, spectra), runs on their device and computes in float64. Pairwise distances
are built `chunk_size` rows at a time, so memory stays `O(chunk_size * n)` however large the sets.

    from sciffusion.core import sample_quality
    scores = sample_quality(real_feats, fake_feats, bootstrap=200)   # dict of floats

Definitions (`X` real, `n` points; `Y` generated, `m` points; `NND_k(x)` the distance from `x` to its
k-th nearest neighbour in its own set, itself excluded; `B(x, r)` the closed ball):

- Fréchet distance: `|mu_X - mu_Y|^2 + tr(S_X + S_Y - 2 (S_X^{1/2} S_Y S_X^{1/2})^{1/2})` between the
  Gaussian fits (sample mean, unbiased covariance).
- precision = `1/m sum_j 1[Y_j in M(X)]`, recall = `1/n sum_i 1[X_i in M(Y)]` with the k-NN manifold
  `M(X) = union_i B(X_i, NND_k(X_i))` (Kynkäänniemi et al. 2019, k = 3).
- density = `1/(k m) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]`, coverage =
  `1/n sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]` (Naeem et al. 2020, k = 5).

Bootstrap intervals (`bootstrap=B`) resample both sets with replacement (counts drawn from a seeded
generator, on the generator's device). The k-NN scores report the percentile interval at `level`; their
balls stay those of the full sets and the resampled points are the ones averaged over
(fakes for precision and density, reals for recall and coverage): a resampled set holds only about
63 % distinct points, so its own union of balls would shrink and bias every score down. The interval
is therefore conditional on the k-NN manifolds: it measures the error of averaging over finitely many
evaluated points, not the variation of the manifold itself, and is narrower than the spread over
independent redraws of both sets (about 1.5x narrower for precision, recall and density on a 2-D
four-mode mixture of 1,000 points per set; as wide for recall when a mode is missing). The Fréchet
interval resamples both Gaussian fits and places the replicates' spread around the estimate (the
estimate itself is biased upwards by O(d / n): compare Fréchet distances at equal set sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_F64 = torch.float64


def gaussian_fit(feats: Tensor) -> tuple[Tensor, Tensor]:
    """Mean `(d,)` and unbiased covariance `(d, d)` of `feats` `(n, d)`, in float64, n >= 2."""
    x = _check_features(feats, "feats").to(_F64)
    if x.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs at least 2 samples, got {x.shape[0]}")
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def frechet_distance_gaussians(mu_a: Tensor, cov_a: Tensor, mu_b: Tensor, cov_b: Tensor) -> float:
    """Squared 2-Wasserstein distance between `N(mu_a, cov_a)` and `N(mu_b, cov_b)`.

    `FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})`. The matrix
    square roots come from symmetric eigendecompositions (negative round-off eigenvalues clipped to 0),
    so singular or ill-conditioned covariances give a finite, real answer; `tr((S_a S_b)^{1/2})` equals
    the trace term because `S_a S_b` is similar to `S_a^{1/2} S_b S_a^{1/2}`. Float64 throughout.
    """
    mu_a, mu_b, cov_a, cov_b = (t.to(_F64) for t in (mu_a, mu_b, cov_a, cov_b))
    d = mu_a.shape[-1]
    for name, m in (("cov_a", cov_a), ("cov_b", cov_b)):
        if m.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}) to match the means, got {tuple(m.shape)}")
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b.to(root_a.device) @ root_a
    eig = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp_min(0.0)
    diff = mu_a - mu_b.to(mu_a.device)
    fd = diff @ diff + torch.trace(cov_a) + torch.trace(cov_b.to(cov_a.device)) - 2.0 * eig.sqrt().sum()
    return float(fd.clamp_min(0.0))


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets `(n_a, d)` and `(n_b, d)`.

    `FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})` with sample means and
    unbiased covariances (the FID/FCD convention, Heusel et al. 2017). Runs on `feats_a`'s device.
    """
    _check_pair(feats_a, feats_b)
    return frechet_distance_gaussians(*gaussian_fit(feats_a), *gaussian_fit(feats_b.to(feats_a.device)))


def precision_recall(
    real: Tensor,
    fake: Tensor,
    k: int = 3,
    *,
    bootstrap: int = 0,
    level: float = 0.95,
    generator: torch.Generator | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Improved precision and recall of `fake` `(m, d)` against `real` `(n, d)` (Kynkäänniemi et al. 2019).

    precision = `1/m sum_j 1[fake_j in M(real)]`, recall = `1/n sum_i 1[real_i in M(fake)]`, with
    `M(X) = union_i B(X_i, NND_k(X_i))` the union of closed balls reaching each point's k-th nearest
    neighbour in its own set. Returns `{"precision", "recall"}`, plus `<name>_low` / `<name>_high`
    (percentile interval at `level` over `bootstrap` resamples) when `bootstrap > 0`.
    """
    c = _ball_counts(real, fake, k, chunk_size, fake_balls=True)
    reps = _bootstrap_means(
        {"recall": (c.real_in_fake > 0).to(_F64)}, {"precision": (c.fake_in_real > 0).to(_F64)},
        real.shape[0], fake.shape[0], bootstrap, generator, real.device,
    )
    return _summarise({"precision": reps["precision"], "recall": reps["recall"]}, level)


def density_coverage(
    real: Tensor,
    fake: Tensor,
    k: int = 5,
    *,
    bootstrap: int = 0,
    level: float = 0.95,
    generator: torch.Generator | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Density and coverage of `fake` `(m, d)` against `real` `(n, d)` (Naeem et al. 2020).

    density = `1/(k m) sum_j sum_i 1[fake_j in B(real_i, NND_k(real_i))]` (about 1 when the sets share a
    distribution, above 1 when fakes crowd the dense regions, robust to real outliers), coverage =
    `1/n sum_i 1[exists j: fake_j in B(real_i, NND_k(real_i))]`. Returns `{"density", "coverage"}`, plus
    `_low` / `_high` bootstrap bounds when `bootstrap > 0`.
    """
    c = _ball_counts(real, fake, k, chunk_size, fake_balls=False)
    reps = _bootstrap_means(
        {"coverage": (c.real_hits > 0).to(_F64)}, {"density": c.fake_in_real / k},
        real.shape[0], fake.shape[0], bootstrap, generator, real.device,
    )
    return _summarise({"density": reps["density"], "coverage": reps["coverage"]}, level)


def sample_quality(
    real: Tensor,
    fake: Tensor,
    *,
    k_pr: int = 3,
    k_dc: int = 5,
    bootstrap: int = 0,
    level: float = 0.95,
    generator: torch.Generator | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """All five scores of `fake` against `real`: `frechet_distance`, `precision`, `recall` (k = `k_pr`),
    `density`, `coverage` (k = `k_dc`), each with `_low` / `_high` bootstrap bounds when `bootstrap > 0`
    (the same resamples for every score). Definitions in the module docstring."""
    gen = _generator(generator)
    state = gen.get_state()
    out = {"frechet_distance": frechet_distance(real, fake)}
    if bootstrap > 0:
        out.update(_centred_interval(out["frechet_distance"], _fd_replicates(real, fake, bootstrap, gen), level))
    for fn, k in ((precision_recall, k_pr), (density_coverage, k_dc)):
        gen.set_state(state)
        out.update(fn(real, fake, k, bootstrap=bootstrap, level=level, generator=gen, chunk_size=chunk_size))
    return out


# ----------------------------------------------------------------------------------------- helpers


def _check_features(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (samples, features) tensor, got {getattr(x, 'shape', type(x))}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds non-finite values")
    return x


def _check_pair(real: Tensor, fake: Tensor, k: int | None = None) -> None:
    _check_features(real, "real")
    _check_features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake must have the same feature size, got {real.shape[1]} and {fake.shape[1]}")
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        small = min(real.shape[0], fake.shape[0])
        if small <= k:
            raise ValueError(f"k-NN radii with k = {k} need more than {k} samples per set, got {small}")


def _sqrt_psd(m: Tensor) -> Tensor:
    """Symmetric square root of a positive semi-definite matrix: `V diag(sqrt(max(w, 0))) V^T`."""
    w, v = torch.linalg.eigh(0.5 * (m + m.T))
    return (v * w.clamp_min(0.0).sqrt()) @ v.T


def _sq_dists(a: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
    """Squared Euclidean distances `(len(a), len(b))`, `|a|^2 + |b|^2 - 2 a.b` clipped at 0."""
    return ((a * a).sum(1, keepdim=True) + b_sq - 2.0 * (a @ b.T)).clamp_min(0.0)


def _knn_sq_radii(x: Tensor, k: int, chunk_size: int) -> Tensor:
    """Squared distance from each row of `x` to its k-th nearest other row (the (k+1)-th counting itself)."""
    x_sq = (x * x).sum(1)
    out = [
        _sq_dists(x[i : i + chunk_size], x, x_sq).topk(k + 1, dim=1, largest=False).values[:, k]
        for i in range(0, x.shape[0], chunk_size)
    ]
    return torch.cat(out)


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _resample_counts(n: int, bootstrap: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Multiplicities `(n, 1 + bootstrap)`: column 0 is the full set, the others are bootstrap draws
    (drawn on the generator's device, then moved to `device`; `generator` is set when bootstrap > 0)."""
    ones = torch.ones(n, 1, dtype=_F64, device=device)
    if bootstrap <= 0:
        return ones
    idx = torch.randint(n, (bootstrap, n), generator=generator, device=generator.device).to(device)
    counts = torch.zeros(bootstrap, n, dtype=_F64, device=device).scatter_add_(1, idx, torch.ones_like(idx, dtype=_F64))
    return torch.cat([ones, counts.T], dim=1)


@dataclass(frozen=True)
class _BallCounts:
    """Ball memberships between the full sets. `fake_in_real (m,)`: how many real balls hold each fake
    point; `real_hits (n,)`: how many fake points each real ball holds; `real_in_fake (n,)`: how many
    fake balls hold each real point (None unless the fake radii were asked for)."""

    fake_in_real: Tensor
    real_hits: Tensor
    real_in_fake: Tensor | None


def _ball_counts(real: Tensor, fake: Tensor, k: int, chunk_size: int, fake_balls: bool) -> _BallCounts:
    """One chunked pass over the `(m, n)` squared distances; balls are closed, of k-NN radius."""
    _check_pair(real, fake, k)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    x, y = real.to(_F64), fake.to(device=real.device, dtype=_F64)
    r_real = _knn_sq_radii(x, k, chunk_size)
    r_fake = _knn_sq_radii(y, k, chunk_size) if fake_balls else None
    x_sq = (x * x).sum(1)
    fake_in_real, real_hits = [], torch.zeros(x.shape[0], dtype=_F64, device=x.device)
    real_in_fake = torch.zeros_like(real_hits) if fake_balls else None
    for i in range(0, y.shape[0], chunk_size):
        d = _sq_dists(y[i : i + chunk_size], x, x_sq)  # (chunk, n)
        inside_real = d <= r_real  # fake j inside real ball i
        fake_in_real.append(inside_real.sum(1, dtype=_F64))
        real_hits += inside_real.sum(0, dtype=_F64)
        if real_in_fake is not None:
            real_in_fake += (d <= r_fake[i : i + chunk_size, None]).sum(0, dtype=_F64)
    return _BallCounts(torch.cat(fake_in_real), real_hits, real_in_fake)


def _bootstrap_means(
    per_real: dict[str, Tensor], per_fake: dict[str, Tensor], n_real: int, n_fake: int,
    bootstrap: int, generator: torch.Generator | None, device: torch.device,
) -> dict[str, Tensor]:
    """Means of per-point statistics over the full set (entry 0) and over `bootstrap` resamples."""
    gen = _generator(generator) if bootstrap > 0 else None
    w_real = _resample_counts(n_real, bootstrap, gen, device)
    w_fake = _resample_counts(n_fake, bootstrap, gen, device)
    out = {name: v @ w_real / n_real for name, v in per_real.items()}
    out.update({name: v @ w_fake / n_fake for name, v in per_fake.items()})
    return out


def _fd_replicates(real: Tensor, fake: Tensor, bootstrap: int, generator: torch.Generator) -> Tensor:
    """Fréchet distances of `bootstrap` resamples, with the full-set value first."""
    device = real.device
    x, y = real.to(_F64), fake.to(device=device, dtype=_F64)
    wx = _resample_counts(x.shape[0], bootstrap, generator, device)
    wy = _resample_counts(y.shape[0], bootstrap, generator, device)
    out = [frechet_distance_gaussians(*_weighted_fit(x, wx[:, r]), *_weighted_fit(y, wy[:, r])) for r in range(wx.shape[1])]
    return torch.tensor(out, dtype=_F64)


def _centred_interval(estimate: float, replicates: Tensor, level: float) -> dict[str, float]:
    """The bootstrap spread around `estimate`: `[FD - (q_50 - q_lo), FD + (q_hi - q_50)]`, low end >= 0.

    Resampling with replacement adds an upward bias of about the size of the Fréchet distance's own
    finite-sample bias, so raw percentiles of the replicates sit above the estimate; their spread
    around their median is the sampling error of the estimate.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    q = torch.tensor([(1 - level) / 2, 0.5, (1 + level) / 2], dtype=_F64)
    lo, mid, hi = torch.quantile(replicates[1:].cpu(), q).tolist()
    return {"frechet_distance_low": max(0.0, estimate - (mid - lo)), "frechet_distance_high": estimate + (hi - mid)}


def _weighted_fit(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of the multiset holding row i of `x` `w_i` times."""
    n = w.sum()
    mu = w @ x / n
    xc = x - mu
    return mu, (xc * w[:, None]).T @ xc / (n - 1)


def _summarise(replicates: dict[str, Tensor], level: float) -> dict[str, float]:
    """Column 0 is the estimate; the rest give the percentile interval at `level`."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    out: dict[str, float] = {}
    for name, values in replicates.items():
        out[name] = float(values[0])
        if values.shape[0] > 1:
            q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=_F64, device=values.device)
            low, high = torch.quantile(values[1:], q).tolist()
            out[f"{name}_low"], out[f"{name}_high"] = low, high
    return out
