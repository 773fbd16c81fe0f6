"""
2-D toys on a periodic box: OISM and RDKS against neural score matching
=======================================================================

A program: run it in full with ``python docs/tutorials/toy2d_periodic.py --out DIR``
(add ``--fast`` for the small version shown on this page).

The three toys (2spirals, 8gaussians, pinwheel) are mapped into the box ``[0, 2 pi)^2`` by
``sciffusion.core.kernel_toys.to_box`` and diffused by Brownian motion on the torus (the paper's
"truncated BM"). For each dataset we fit

* OISM(H): spectral OISM with a rich Fourier basis (``|k|_inf <= 12``, 624 eigenfunctions), no training;
* OISM(L): the same with ``|k|_inf <= 2`` (24 eigenfunctions);
* OISM(L)+NN: a network trained by denoising score matching on top of the fixed OISM(L) score;
* NN (pre-trained): a network regressed onto OISM(L) for the first 5% of iterations, then DSM;
* NN-only: the network trained by DSM from scratch;
* RDKS: the heat-kernel smoother with its leave-one-out bandwidth,

and report the held-out log-likelihood (nats per point, density on the box) beside the published
numbers of Shen & Oates (arXiv 2406.09084, v2), and, for mode coverage,
precision / recall (k = 3) and coverage (k = 5) of each method's samples against the held-out points
in data units (``sciffusion.core.diffusion.sample_quality``; the training points against them are the floor). The network sees
``(cos x, sin x)`` and a time embedding, as in the paper. Score-based likelihoods are those of
``rho_{t_min}`` by the probability-flow ODE with the exact divergence; RDKS's is the closed-form KDE.
The paper's box scaling, ``t_min`` and network are unknown, so compare orderings more than digits.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from sciffusion.core.kernel_toys import DATASETS, coverage_scores, from_box, to_box, toy_data
from sciffusion.core.kernels import KernelSmoothingScore
from sciffusion.core.kernels.manifolds import Torus
from sciffusion.core.kernels.oism import SpectralOISM
from sciffusion.core.kernels.sde import pf_ode_log_likelihood, reverse_sample

PUBLISHED = {  # held-out log-likelihood, Shen & Oates (rebuttal table); higher is better
    "2spirals": {"OISM(H)": -2.262, "OISM(L)": -3.150, "OISM(L)+NN": -2.337, "NN (pre-trained)": -2.289, "NN-only": -2.375},
    "8gaussians": {"OISM(H)": -2.036, "OISM(L)": -2.581, "OISM(L)+NN": -2.169, "NN (pre-trained)": -2.195, "NN-only": -2.132},
    "pinwheel": {"OISM(H)": -1.576, "OISM(L)": -1.792, "OISM(L)+NN": -1.686, "NN (pre-trained)": -1.829, "NN-only": -1.842},
}
METHODS = ("OISM(H)", "OISM(L)", "OISM(L)+NN", "NN (pre-trained)", "NN-only", "RDKS")
T_MAX = 5.0  # BM on the torus mixes at rate lambda_1 = 1
TORUS = Torus(2)


class ScoreNet(torch.nn.Module):
    """MLP score ``s(x, t)`` on the torus: input ``(cos x, sin x, embedding of log t)``."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.freq = torch.arange(1, 5, dtype=torch.float64)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4 + 8, width), torch.nn.SiLU(),
            torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, 2),
        ).double()

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        lt = torch.log(t)[:, None] * self.freq / 4
        feats = torch.cat([torch.cos(x), torch.sin(x), torch.cos(lt), torch.sin(lt)], -1)
        # scale 1/sqrt(2t): the size of the true score at small t
        return self.net(feats) / torch.sqrt(2 * t)[:, None]


def wrapped_score(delta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``d/d delta log p_t(delta)`` of the wrapped Gaussian (variance ``2t``) per coordinate, 9 images."""
    m = torch.arange(-4, 5, dtype=delta.dtype) * 2 * math.pi
    d = torch.remainder(delta + math.pi, 2 * math.pi) - math.pi
    u = d[..., None] + m
    w = torch.softmax(-u * u / (4 * t[:, None, None]), -1)
    return (w * (-u / (2 * t[:, None, None]))).sum(-1)


def train_net(x0: torch.Tensor, iters: int, t_min: float, base=None, pretrain=None, seed: int = 0) -> ScoreNet:
    """Denoising score matching on the torus, weight ``2t``; ``base``: fixed score added (residual);
    ``pretrain``: score to regress onto for the first 5% of iterations."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = ScoreNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    n_pre = int(0.05 * iters) if pretrain is not None else 0
    for it in range(iters):
        idx = torch.randint(0, len(x0), (256,), generator=g)
        t = torch.exp(math.log(t_min) + (math.log(T_MAX) - math.log(t_min)) * torch.rand(256, generator=g, dtype=torch.float64))
        z = torch.randn(256, 2, generator=g, dtype=torch.float64)
        xt = torch.remainder(x0[idx] + torch.sqrt(2 * t)[:, None] * z, 2 * math.pi)
        pred = net(xt, t)
        if it < n_pre:
            with torch.no_grad():
                target = pretrain(xt, t)
        else:
            target = wrapped_score(xt - x0[idx], t)
            if base is not None:
                with torch.no_grad():
                    b = base(xt, t)
                pred = pred + b
        loss = (2 * t[:, None] * (pred - target) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def run_dataset(name: str, fast: bool = False, seed: int = 0) -> tuple[dict, dict, torch.Tensor]:
    """Fit the six estimators on one toy; return (log-likelihoods, samples per method, training data)."""
    n_train, n_test = (600, 200) if fast else (2000, 1000)
    iters = 100 if fast else 3000
    steps = 15 if fast else 100
    k_high = 6 if fast else 12
    t_min = 0.01
    g = torch.Generator().manual_seed(seed)
    train = to_box(toy_data(name, n_train, g))
    test = to_box(toy_data(name, n_test, g))
    res, smp = {}, {}
    t0 = time.time()

    def ll_of(score, div=None):
        return float(pf_ode_log_likelihood(score, TORUS, test, t_min, T_MAX, steps, divergence=div).mean())

    def draw(score):
        x = reverse_sample(score, TORUS, TORUS.sample_uniform(500, g), T_MAX, t_min, steps, generator=g)
        return from_box(x.detach())

    oism_h = SpectralOISM(train, manifold=TORUS, degree=k_high, ridge=1e-6, shrinkage=1e-3)
    oism_l = SpectralOISM(train, manifold=TORUS, degree=2, ridge=1e-6)
    res["OISM(H)"] = ll_of(oism_h.score, oism_h.divergence)
    res["OISM(L)"] = ll_of(oism_l.score, oism_l.divergence)
    smp["OISM(H)"], smp["OISM(L)"] = draw(oism_h.score), draw(oism_l.score)

    residual = train_net(train, iters, t_min, base=oism_l.score, seed=seed)
    pretrained = train_net(train, iters, t_min, pretrain=oism_l.score, seed=seed)
    alone = train_net(train, iters, t_min, seed=seed)
    scores = {
        "OISM(L)+NN": lambda x, t: oism_l.score(x, t) + residual(x, t),
        "NN (pre-trained)": pretrained,
        "NN-only": alone,
    }
    for key, score in scores.items():
        res[key] = ll_of(score)
        with torch.no_grad():
            smp[key] = draw(score)
    rdks = KernelSmoothingScore(train, manifold=TORUS, bandwidth="auto")
    res["RDKS"] = float(rdks.log_prob(test).mean())
    smp["RDKS"] = from_box(rdks.sample(500, steps=steps, generator=g))
    res["RDKS bandwidth"] = rdks.bandwidth
    ref = from_box(test[:500])
    res["sample_quality"] = {key: coverage_scores(x[: len(ref)], ref) for key, x in smp.items()}
    res["sample_quality"]["training data"] = coverage_scores(from_box(train[: len(ref)]), ref)
    res["seconds"] = round(time.time() - t0, 1)
    return res, smp, from_box(train[:500])


def run(out: Path, fast: bool = False, datasets=DATASETS, seed: int = 0) -> dict:
    """All datasets: print and write the table, draw the sample grid."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    results, samples = {}, {}
    for name in datasets:
        res, smp, data = run_dataset(name, fast, seed)
        results[name] = res
        samples[name] = (data, smp)
    _table(results, out)
    _figure(samples, out / "toy2d_samples.png")
    return results


def _table(results: dict, out: Path) -> None:
    head = "| dataset | " + " | ".join(METHODS) + " |"
    lines = [head, "|" + "---|" * (len(METHODS) + 1)]
    for name, res in results.items():
        cells = []
        for m in METHODS:
            pub = PUBLISHED[name].get(m)
            cells.append(f"{res[m]:.3f}" + (f" ({pub:.3f})" if pub is not None else " (-)"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print("held-out log-likelihood, nats per point on the box; published in parentheses\n" + text)
    cover = _coverage_table(results)
    print("\nprecision / recall / coverage of 500 samples against held-out points (data units)\n" + cover)
    (out / "toy2d_table.md").write_text(text + "\n\n" + cover + "\n")
    (out / "toy2d_results.json").write_text(json.dumps(results, indent=2))


def _coverage_table(results: dict) -> str:
    cols = (*METHODS, "training data")
    lines = ["| dataset | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, res in results.items():
        q = res["sample_quality"]
        cells = [f"{q[m]['precision']:.2f} / {q[m]['recall']:.2f} / {q[m]['coverage']:.2f}" for m in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure(samples: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ("data", *METHODS)
    fig, axes = plt.subplots(len(samples), len(cols), figsize=(2.2 * len(cols), 2.2 * len(samples)), squeeze=False)
    for r, (name, (data, smp)) in enumerate(samples.items()):
        for c, col in enumerate(cols):
            pts = data if col == "data" else smp[col]
            ax = axes[r, c]
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
            ax.set_xlim(-4.5, 4.5)
            ax.set_ylim(-4.5, 4.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col, fontsize=8)
        axes[r, 0].set_ylabel(name)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="2-D toys on a periodic box: OISM, RDKS and networks")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fast", action="store_true", help="small data, few iterations (for tests)")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    return run(a.out, fast=a.fast, datasets=a.datasets, seed=a.seed)


# %%
# Run it. The docs build runs the fast mode (``--fast``: smaller data, fewer iterations);
# the tables below are what it printed and the figures what it wrote.

if __name__ == "__main__":
    main()
