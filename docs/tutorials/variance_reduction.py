"""
OISM as variance reduction: the DSM-to-OISM gradient-variance ratio across t
============================================================================

A program: run it in full with ``python docs/tutorials/variance_reduction.py --out DIR``
(add ``--fast`` for the small version shown on this page).

Data ``N(0, s0^2)`` with ``s0 = 0.5`` under OU (``a = e^{-t}``, ``sigma^2 = 1 - e^{-2t}``), model
``s(x) = theta x`` at its optimum ``theta* = -1/v``, ``v = a^2 s0^2 + sigma^2``. Per-sample gradients
(``core.oism.linear_score_gradients``):

* DSM, ``l = |theta x_t + z/sigma|^2``: carries the forward noise ``z/sigma``;
* ISM with a sampled ``x_t``, ``l = theta^2 x_t^2 + 2 theta``: variance 8 at every t;
* OISM, ``l = P_t(|s|^2 + 2 div s)(x_0) = theta^2 (a^2 x_0^2 + sigma^2) + 2 theta``: the forward noise
  integrated out analytically, only the data sampling is left.

Closed form (Shen & Oates, arXiv 2406.09084): ``ratio = Var_DSM / Var_OISM = 2 + (v - 2 sigma^2)^2 /
(2 sigma^2 a^2 s0^2) >= 2``, unbounded as ``t -> 0`` (like ``1/sigma^2``) and as ``t -> inf`` (like
``e^{2t}``). The table compares Monte Carlo with the closed form; ``variance_ratio.png`` plots both.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from sciffusion.core.kernels.oism import gradient_variance_closed_form, linear_score_gradients

DOC = {1e-3: 63.6, 1e-2: 7.2, 0.1: 2.0, 0.5: 4.5, 1.0: 13.8, 2.0: 108}


def run(out: Path, fast: bool = False, s0: float = 0.5, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    n = 50_000 if fast else 400_000
    g = torch.Generator().manual_seed(seed)
    x0 = s0 * torch.randn(n, generator=g, dtype=torch.float64)
    rows = []
    for t, ref in DOC.items():
        a, sg2 = math.exp(-t), -math.expm1(-2 * t)
        theta = -1 / (a * a * s0 * s0 + sg2)
        g_dsm, g_oism = linear_score_gradients(x0, t, theta, generator=g)
        xt = a * x0 + math.sqrt(sg2) * torch.randn(n, generator=g, dtype=torch.float64)
        g_ism = 2 * theta * xt * xt + 2
        cf = gradient_variance_closed_form(s0, t)
        rows.append({
            "t": t, "var_dsm_mc": float(g_dsm.var()), "var_dsm": cf["dsm"], "var_ism_mc": float(g_ism.var()),
            "var_oism_mc": float(g_oism.var()), "var_oism": cf["oism"],
            "ratio_mc": float(g_dsm.var() / g_oism.var()), "ratio": cf["ratio"], "ratio_doc": ref,
        })
    print(f"DSM vs OISM per-sample gradient variance, N(0, {s0}^2) data, OU, {n} Monte Carlo samples")
    print("| t | Var DSM (MC / closed) | Var ISM, sampled x_t (MC; closed 8) | Var OISM (MC / closed) | ratio MC | ratio closed | Shen & Oates |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['t']:g} | {r['var_dsm_mc']:.4g} / {r['var_dsm']:.4g} | {r['var_ism_mc']:.3g} | "
              f"{r['var_oism_mc']:.4g} / {r['var_oism']:.4g} | {r['ratio_mc']:.3g} | {r['ratio']:.3g} | {r['ratio_doc']} |")
    (out / "variance_results.json").write_text(json.dumps(rows, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = np.logspace(-3.5, 0.6, 200)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog(ts, [gradient_variance_closed_form(s0, t)["ratio"] for t in ts], label="closed form")
    ax.loglog([r["t"] for r in rows], [r["ratio_mc"] for r in rows], "o", label="Monte Carlo")
    ax.axhline(2, color="k", ls=":", lw=1)
    ax.set_xlabel("t (OU time)")
    ax.set_ylabel("Var DSM / Var OISM")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "variance_ratio.png", dpi=80)
    plt.close(fig)
    return {"rows": rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="DSM vs OISM gradient variance")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    return run(a.out, fast=a.fast, seed=a.seed)


# %%
# Run it. The docs build runs the fast mode (``--fast``: smaller data, fewer iterations);
# the tables below are what it printed and the figures what it wrote.

if __name__ == "__main__":
    main()
