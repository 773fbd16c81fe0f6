"""Distribution-level sample-quality metrics: closed forms, a scipy reference, brute force, mode dropping."""

import numpy as np
import pytest
import scipy.linalg
import torch

from sciffusion.core import density_coverage, frechet_distance, precision_recall, sample_quality
from sciffusion.core.diffusion.sample_quality import frechet_distance_gaussians, gaussian_fit

F64 = torch.float64


def _feats(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=F64) / d**0.5
    return torch.randn(n, d, generator=g, dtype=F64) @ mix + torch.randn(d, generator=g, dtype=F64)


def _random_spd(d: int, seed: int, condition: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, 1.0 / condition, d)) @ q.T


def _scipy_fd(mu1, s1, mu2, s2) -> float:
    """The textbook formula, with scipy's general (non-symmetric) matrix square root of S1 S2."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


# ------------------------------------------------------------------------------- Fréchet distance


def test_frechet_identical_sets_is_zero():
    a = _feats(300, 12, 0)
    assert abs(frechet_distance(a, a)) < 1e-10 * float(torch.trace(gaussian_fit(a)[1]))


def test_frechet_shifted_means_is_squared_shift():
    a = _feats(300, 12, 1)
    delta = torch.linspace(-1.0, 2.0, 12, dtype=F64)
    assert frechet_distance(a, a + delta) == pytest.approx(float(delta @ delta), rel=1e-9)


@pytest.mark.parametrize("c", [0.3, 2.5])
def test_frechet_scaled_set_closed_form(c):
    # b = c a: mu_b = c mu, S_b = c^2 S, so FD = (1 - c)^2 (|mu|^2 + tr S)
    a = _feats(400, 10, 2)
    mu, cov = gaussian_fit(a)
    expected = (1 - c) ** 2 * float(mu @ mu + torch.trace(cov))
    assert frechet_distance(a, c * a) == pytest.approx(expected, rel=1e-9)


def test_frechet_gaussians_commuting_and_singular_closed_forms():
    g = torch.Generator().manual_seed(3)
    va, vb = torch.rand(6, generator=g, dtype=F64) + 0.1, torch.rand(6, generator=g, dtype=F64) + 0.1
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=F64))
    zero = torch.zeros(6, dtype=F64)
    expected = float(((va.sqrt() - vb.sqrt()) ** 2).sum())   # commuting covariances
    got = frechet_distance_gaussians(zero, (q * va) @ q.T, zero, (q * vb) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)
    # orthogonal rank-1 covariances: the cross term vanishes, FD = tr S_a + tr S_b
    e1, e2 = torch.diag(torch.tensor([1.0, 0.0], dtype=F64)), torch.diag(torch.tensor([0.0, 1.0], dtype=F64))
    assert frechet_distance_gaussians(torch.zeros(2), e1, torch.zeros(2), e2) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("d,condition", [(8, 10.0), (64, 1e3), (128, 1e4)])
def test_frechet_matches_scipy_on_random_spd(d, condition):
    s1, s2 = _random_spd(d, 10 + d, condition), _random_spd(d, 20 + d, condition)
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ours = frechet_distance_gaussians(*(torch.from_numpy(t) for t in (mu1, s1, mu2, s2)))
    assert ours == pytest.approx(_scipy_fd(mu1, s1, mu2, s2), rel=1e-6)


@pytest.mark.parametrize("d", [16, 64])
def test_frechet_matches_scipy_on_feature_sets(d):
    a, b = _feats(600, d, 30 + d), 1.3 * _feats(500, d, 40 + d)
    an, bn = a.numpy(), b.numpy()
    ref = _scipy_fd(an.mean(0), np.cov(an.T), bn.mean(0), np.cov(bn.T))
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(a.float(), b.float()) == pytest.approx(ref, rel=1e-4)   # float32 input, float64 maths


# --------------------------------------------------------------------------- k-NN manifold scores


def _brute_force(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int) -> dict[str, float]:
    """Loop-by-loop definitions of Kynkäänniemi et al. (2019) and Naeem et al. (2020)."""
    def radii(x, k):
        out = []
        for i in range(len(x)):
            others = [np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i]
            out.append(sorted(others)[k - 1])
        return out

    def inside(p, centres, rad):
        return [np.linalg.norm(p - c) <= r for c, r in zip(centres, rad)]

    r_pr, f_pr, r_dc = radii(real, k_pr), radii(fake, k_pr), radii(real, k_dc)
    return {
        "precision": np.mean([any(inside(y, real, r_pr)) for y in fake]),
        "recall": np.mean([any(inside(x, fake, f_pr)) for x in real]),
        "density": np.mean([sum(inside(y, real, r_dc)) for y in fake]) / k_dc,
        "coverage": np.mean([any(inside(y, [x], [r])[0] for y in fake) for x, r in zip(real, r_dc)]),
    }


@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_knn_scores_match_brute_force(chunk_size):
    g = torch.Generator().manual_seed(5)
    real = torch.randn(70, 3, generator=g, dtype=F64)
    fake = 1.3 * torch.randn(55, 3, generator=g, dtype=F64) + 0.4
    ref = _brute_force(real.numpy(), fake.numpy(), k_pr=3, k_dc=5)
    got = precision_recall(real, fake, chunk_size=chunk_size) | density_coverage(real, fake, chunk_size=chunk_size)
    assert got == pytest.approx(ref, abs=1e-12)
    assert 0.3 < got["precision"] < 0.95 and 0.3 < got["coverage"] < 0.95   # the sets are neither equal nor apart


def test_knn_scores_closed_form_on_a_lattice():
    # reals 0..9 on a line: every k = 1 radius is 1. Fakes 0.5, 2.5 (radius 2 among fakes), 20, 21 (radius 1).
    real = torch.arange(10, dtype=F64)[:, None]
    fake = torch.tensor([[0.5], [2.5], [20.0], [21.0]], dtype=F64)
    assert precision_recall(real, fake, k=1) == {"precision": 0.5, "recall": 0.5}   # reals 0..4 lie in fake balls
    assert density_coverage(real, fake, k=1) == {"density": 1.0, "coverage": 0.4}   # 2 + 2 + 0 + 0 hits; balls 0..3


def test_identical_sets_score_one():
    x = _feats(200, 4, 6)
    s = sample_quality(x, x)
    assert s["precision"] == s["recall"] == s["coverage"] == 1.0
    assert s["frechet_distance"] < 1e-10


def _mixture(n: int, weights: list[float], g: torch.Generator) -> torch.Tensor:
    means = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]], dtype=F64)
    comp = torch.multinomial(torch.tensor(weights, dtype=F64), n, replacement=True, generator=g)
    return means[comp] + 0.7 * torch.randn(n, 2, generator=g, dtype=F64)


def test_dropping_a_mode_costs_recall_and_coverage_not_precision():
    g = torch.Generator().manual_seed(0)
    weights, w = [0.4, 0.3, 0.2, 0.1], 0.2
    dropped = [0.4, 0.3, 0.0, 0.1]      # mode 3 (weight w) never sampled; the others renormalised
    real, full, drop = _mixture(1500, weights, g), _mixture(1500, weights, g), _mixture(1500, dropped, g)
    boot = torch.Generator().manual_seed(1)
    a = sample_quality(real, full, bootstrap=200, generator=boot)
    b = sample_quality(real, drop, bootstrap=200, generator=boot)

    def half(s, name):
        return (s[f"{name}_high"] - s[f"{name}_low"]) / 2

    for name in ("recall", "coverage"):
        assert a[name] >= 0.95 - half(a, name), (name, a)                   # a matched sampler covers the data
        assert b[name] <= 1.0 - w + half(b, name), (name, b)                # the dropped mode's reals are lost
        assert a[name] - b[name] >= w - (1.0 - a[name]) - half(a, name) - half(b, name)
        assert a[name] - b[name] <= w + half(a, name) + half(b, name)       # and not more than its mass
    for name in ("precision", "density"):
        assert abs(a[name] - b[name]) <= half(a, name) + half(b, name), (name, a[name], b[name])
    assert b["frechet_distance_low"] > a["frechet_distance_high"]


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    both = _feats(550, 3, 7)
    real, fake = both[:300], 1.1 * both[300:] + 0.2
    kw = {"bootstrap": 50, "generator": torch.Generator().manual_seed(4)}
    first = sample_quality(real, fake, **kw)
    kw["generator"] = torch.Generator().manual_seed(4)
    assert sample_quality(real, fake, **kw) == first
    assert sample_quality(real, fake, bootstrap=50) == sample_quality(real, fake, bootstrap=50)   # default seed
    for name in ("frechet_distance", "precision", "recall", "density", "coverage"):
        assert first[f"{name}_low"] <= first[name] <= first[f"{name}_high"], name
        assert first[f"{name}_low"] < first[f"{name}_high"], name
    plain = sample_quality(real, fake)
    assert set(plain) == {"frechet_distance", "precision", "recall", "density", "coverage"}
    assert all(plain[n] == first[n] for n in plain)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: precision_recall(torch.zeros(3, 2), torch.zeros(10, 2)), "more than 3 samples"),
        (lambda: density_coverage(torch.zeros(10, 2), torch.zeros(10, 3)), "same feature size"),
        (lambda: frechet_distance(torch.zeros(10), torch.zeros(10)), "2-D"),
        (lambda: frechet_distance(torch.full((4, 2), float("nan")), torch.zeros(4, 2)), "non-finite"),
        (lambda: precision_recall(torch.randn(9, 2), torch.randn(9, 2), bootstrap=5, level=1.5), "level"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_with_a_generator_on_either_device():
    real, fake = _feats(500, 16, 9), _feats(400, 16, 10) + 0.1
    cpu = sample_quality(real, fake, bootstrap=20, generator=torch.Generator().manual_seed(2))
    gpu = sample_quality(real.cuda(), fake.cuda(), bootstrap=20, generator=torch.Generator().manual_seed(2))
    assert gpu == pytest.approx(cpu, rel=1e-9, abs=1e-12)
    on_gpu = sample_quality(real.cuda(), fake, bootstrap=20, generator=torch.Generator("cuda").manual_seed(2))
    assert on_gpu["precision"] == cpu["precision"] and "precision_low" in on_gpu


def test_frechet_interval_matches_the_spread_over_fresh_draws():
    g = torch.Generator().manual_seed(11)
    shift = torch.tensor([0.3, 0.0, 0.0, 0.0], dtype=F64)

    def draw():
        return torch.randn(400, 4, generator=g, dtype=F64), torch.randn(400, 4, generator=g, dtype=F64) + shift

    fresh = torch.tensor([frechet_distance(*draw()) for _ in range(60)])
    s = sample_quality(*draw(), bootstrap=200)
    width = s["frechet_distance_high"] - s["frechet_distance_low"]
    assert s["frechet_distance_low"] <= s["frechet_distance"] <= s["frechet_distance_high"]
    assert 0.5 < width / (2 * 1.96 * float(fresh.std())) < 2.0
