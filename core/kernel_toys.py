"""Kernel score estimators on 2-D toy data: data sets, the periodic box, metrics and one full run.

`run(KernelSmoothingConfig(dataset="pinwheel", method="rdks"), out)` fits one estimator, samples
from it, scores the samples and writes the outputs; `main(argv)` is the command line
(`sciffusion-kernel-smoothing`, or `python -m recipes.kernel_smoothing` from a checkout).

Datasets (``2spirals``, ``8gaussians``, ``pinwheel``, the usual 2-D toys) are mapped into the periodic box
``[0, 2 pi)^2`` by ``x_box = pi + x * BOX_SCALE`` (``BOX_SCALE = pi / 4.5``) and diffused by Brownian
motion on the torus, as in the paper's 2-D experiments. Methods:

* ``rdks``: RDKS (heat-kernel form, bandwidth by leave-one-out likelihood); held-out log-likelihood is
  the closed-form log density of the heat-kernel KDE;
* ``rdks-spectral``: the same estimator in spectral form;
* ``oism``: spectral OISM with a Fourier basis (``--degree``); log-likelihood by the probability-flow
  ODE with the exact divergence, evaluated at ``t_min``;
* ``dks``: DKS under OU on ``R^2`` (standardised data, no box).

Outputs under ``--out`` (default ``./kernel_smoothing_out``): ``samples.npy`` (data units),
``figure.png``, ``metrics.json`` (held-out log-likelihood in nats per point, in box units and in data
units, MMD^2 to held-out data, and precision/recall (k = 3), density/coverage (k = 5) of the samples
against held-out data in data units, with the training data against held-out data as the floor) and
``config.json``. Under a minute on a CPU core. ``--device`` (default ``auto``: CUDA when a GPU is
visible) is where the estimators run; the data and every draw come from one CPU generator, so a seed gives
the same data on every device.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sciffusion.core.atomic import atomic_write, atomic_write_text
from sciffusion.core.config import JsonConfig
from sciffusion.core.devices import DEVICE_HELP, resolve_device
from sciffusion.core.diffusion.sample_quality import density_coverage, precision_recall
from sciffusion.core.kernels import KernelSmoothingScore
from sciffusion.core.kernels.manifolds import Torus
from sciffusion.core.kernels.oism import SpectralOISM
from sciffusion.core.kernels.sde import pf_ode_log_likelihood, reverse_sample

__all__ = ["BOX_SCALE", "DATASETS", "METHODS", "KernelSmoothingConfig", "box_to_data_ll", "coverage_scores",
           "from_box", "main", "mmd2", "run", "to_box", "toy_data"]

DATASETS = ("2spirals", "8gaussians", "pinwheel")
METHODS = ("rdks", "rdks-spectral", "oism", "dks")
BOX_SCALE = math.pi / 4.5  # data in [-4.5, 4.5]^2 -> [0, 2 pi)^2


# ---------------------------------------------------------------- data
def toy_data(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points of a 2-D toy distribution in data units (float64, ``(n, 2)``).

    8gaussians: 8 components on a circle of radius ``4/sqrt 2``, std ``0.5/sqrt 2``; 2spirals: two
    interleaved arms ``r = theta`` for ``theta`` up to ``3 pi``, scaled by 1/3, noise 0.1; pinwheel: 5
    arms, radial std 0.3, tangential std 0.1, rate 0.25, scaled by 2.
    """
    g = generator
    if name == "8gaussians":
        ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        centres = 4 * torch.stack([torch.cos(ang), torch.sin(ang)], -1)
        k = torch.randint(0, 8, (n,), generator=g)
        x = centres[k] + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
        return x / math.sqrt(2)
    if name == "2spirals":
        m = (n + 1) // 2
        th = torch.sqrt(torch.rand(m, generator=g, dtype=torch.float64)) * 3 * math.pi
        arm = torch.stack([-torch.cos(th) * th, torch.sin(th) * th], -1)
        arm = arm + 0.5 * torch.rand(m, 2, generator=g, dtype=torch.float64)
        x = torch.cat([arm, -arm])[torch.randperm(2 * m, generator=g)[:n]] / 3  # both arms in any prefix
        return x + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    if name == "pinwheel":
        k = torch.randint(0, 5, (n,), generator=g)
        f = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([0.3, 0.1], dtype=torch.float64)
        f[:, 0] += 1.0
        ang = k.double() * (2 * math.pi / 5) + 0.25 * torch.exp(f[:, 0])
        c, s = torch.cos(ang), torch.sin(ang)
        return 2 * torch.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1]], -1)
    raise ValueError(f"toy_data: dataset must be one of {DATASETS}, got {name!r}")


def to_box(x: torch.Tensor) -> torch.Tensor:
    """Data units -> angles in ``[0, 2 pi)^2``."""
    return torch.remainder(math.pi + BOX_SCALE * x, 2 * math.pi)


def from_box(y: torch.Tensor) -> torch.Tensor:
    """Angles -> data units (the box is centred on the origin)."""
    return (torch.remainder(y, 2 * math.pi) - math.pi) / BOX_SCALE


def box_to_data_ll(ll_box: float, d: int = 2) -> float:
    """Change of variables: ``log p_data = log p_box + d log BOX_SCALE``."""
    return ll_box + d * math.log(BOX_SCALE)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.2, 0.5, 1.0, 2.0)) -> float:
    """Unbiased ``MMD^2`` with a sum of Gaussian kernels ``exp(-|a-b|^2 / (2 l^2))`` (data units)."""
    def k(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * bw * bw)) for bw in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


def coverage_scores(samples: torch.Tensor, reference: torch.Tensor, suffix: str = "") -> dict[str, float]:
    """Precision and recall (k = 3), density and coverage (k = 5) of ``samples`` against ``reference``,
    on raw 2-D coordinates (``sciffusion.core.diffusion.sample_quality``); keys get ``suffix`` appended."""
    scores = precision_recall(reference, samples) | density_coverage(reference, samples)
    return {f"{k}{suffix}": v for k, v in scores.items()}


# ---------------------------------------------------------------- run
@dataclass(frozen=True)
class KernelSmoothingConfig(JsonConfig):
    """One run of `run`: dataset, method, sizes, sampler steps, OISM degree and seed."""

    dataset: str = "pinwheel"
    method: str = "rdks"
    n_train: int = 2000
    n_test: int = 1000
    n_samples: int = 1000
    steps: int = 100
    degree: int = 8
    t_min: float = 0.01  # OISM only (the kernel methods use their bandwidth)
    shrinkage: float = 1e-3
    seed: int = 0
    device: str = "auto"  # resolved by `resolve_device` when the run starts


def run(cfg: KernelSmoothingConfig, out: str | Path, quiet: bool = False) -> dict:
    """Fit, sample and score one method on one dataset on `cfg.device`; write the outputs; return the metrics.

    The data are drawn on the CPU from one generator seeded with `cfg.seed` and moved to the device; the
    samples come back to the CPU before they are written.
    """
    device = resolve_device(cfg.device)
    if cfg.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {DATASETS}, got {cfg.dataset!r}")
    if cfg.method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {cfg.method!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    g = torch.Generator().manual_seed(cfg.seed)
    train, test = (toy_data(cfg.dataset, n, g).to(device) for n in (cfg.n_train, cfg.n_test))
    T = Torus(2)
    metrics: dict = {"dataset": cfg.dataset, "method": cfg.method}
    if cfg.method == "dks":
        mean, std = train.mean(0), train.std(0)
        est = KernelSmoothingScore((train - mean) / std, bandwidth="auto")
        z = est.sample(cfg.n_samples, steps=cfg.steps, generator=g)
        samples = z * std + mean
        ll = est.log_prob((test - mean) / std) - torch.log(std).sum()
        metrics.update(bandwidth=est.bandwidth, heldout_ll_data=float(ll.mean()))
    elif cfg.method.startswith("rdks"):
        form = "spectral" if cfg.method == "rdks-spectral" else "kernel"
        est = KernelSmoothingScore(to_box(train), manifold=T, bandwidth="auto", form=form)
        samples = from_box(est.sample(cfg.n_samples, steps=cfg.steps, generator=g))
        ll_box = float(est.log_prob(to_box(test)).mean())
        metrics.update(bandwidth=est.bandwidth, heldout_ll_box=ll_box, heldout_ll_data=box_to_data_ll(ll_box))
    else:
        oism = SpectralOISM(to_box(train), manifold=T, degree=cfg.degree, shrinkage=cfg.shrinkage, ridge=1e-6)
        samples = from_box(reverse_sample(oism.score, T, T.sample_uniform(cfg.n_samples, g, device=device), 5.0, cfg.t_min, cfg.steps, generator=g))
        lp = pf_ode_log_likelihood(oism.score, T, to_box(test), cfg.t_min, 5.0, cfg.steps, divergence=oism.divergence)
        ll_box = float(lp.mean())
        metrics.update(t_min=cfg.t_min, degree=cfg.degree, heldout_ll_box=ll_box, heldout_ll_data=box_to_data_ll(ll_box))
    metrics["mmd2_heldout"] = mmd2(samples[:1000], test[:1000])
    metrics["mmd2_train_vs_heldout"] = mmd2(train[:1000], test[:1000])  # the noise floor
    metrics.update(coverage_scores(samples[:1000], test[:1000], "_heldout"))
    metrics.update(coverage_scores(train[: len(samples[:1000])], test[:1000], "_train_vs_heldout"))
    metrics["seconds"] = round(time.time() - t0, 2)

    samples, train = samples.cpu(), train.cpu()
    atomic_write(out / "samples.npy", lambda p: np.save(p, samples.numpy()))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    cfg.to_json(out / "config.json")
    _figure(train, samples, f"{cfg.dataset}: {cfg.method}", out / "figure.png")
    if not quiet:
        print(json.dumps(metrics, indent=2))
    return metrics


def _figure(train: torch.Tensor, samples: torch.Tensor, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for a, pts, name in zip(ax, (train, samples), ("training data", "samples")):
        a.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        a.set_title(name)
        a.set_xlim(-4.5, 4.5)
        a.set_ylim(-4.5, 4.5)
        a.set_aspect("equal")
    fig.suptitle(title)
    try:
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=80))
    finally:
        plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `main`."""
    ap = argparse.ArgumentParser(prog="sciffusion-kernel-smoothing", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="pinwheel", choices=DATASETS)
    ap.add_argument("--method", default="rdks", choices=METHODS)
    ap.add_argument("--out", type=Path, default=Path("kernel_smoothing_out"),
                    help="output folder (default: ./kernel_smoothing_out)")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--degree", type=int, default=8, help="Fourier degree of OISM")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help=DEVICE_HELP)
    ap.add_argument("--quiet", action="store_true")
    return ap


def _check_counts(a: argparse.Namespace) -> None:
    for flag in ("n_train", "n_test", "n_samples", "steps", "degree"):
        if getattr(a, flag) < (2 if flag in ("n_train", "n_test", "n_samples") else 1):
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive count "
                             f"(at least {2 if flag.startswith('n_') else 1}), got {getattr(a, flag)}")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and `run` it; returns the exit status (2 with one line for bad input).

    Runs on one CPU thread: the estimators are small and gain nothing from more. The device is
    printed to stderr at the start (stdout carries the metrics as JSON) unless `--quiet`.
    """
    a = build_parser().parse_args(argv)
    try:
        _check_counts(a)
        cfg = KernelSmoothingConfig(
            dataset=a.dataset, method=a.method, n_train=a.n_train, n_test=a.n_test,
            n_samples=a.n_samples, steps=a.steps, degree=a.degree, seed=a.seed,
            device=str(resolve_device(a.device)),
        )
        if not a.quiet:
            print(f"device: {cfg.device}", file=sys.stderr, flush=True)
        torch.set_num_threads(1)
        run(cfg, a.out, quiet=a.quiet)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
