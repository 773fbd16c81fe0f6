"""Quality of the graph diffusion model on QM9 against DiGress's published figures.

    python -m benchmarks.mol_graph_eval --checkpoint plugins/molecules/checkpoints/qm9_graph.pt \
        --n 10000 --steps 100 --cond-n 500 --out runs/graph_eval

Rows: the model's unconditional samples; the QM9 test split scored by the same code (ceiling);
DiGress (Vignac et al. 2023, QM9 with implicit hydrogens, as published). Then FCD and ChemNet
precision/recall/density/coverage of the valid samples against the test split, next to as many
training molecules against the test split (the floor); then the negative ELBO
(nats per molecule, labelled terms) on test molecules, and the logP MAE of conditional samples
against the unconditional samples' MAE to the same targets. Writes eval.json and eval.md to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sciffusion.plugins.molecules.graph_diffusion import DEFAULT_STEPS, GRID_POWER

DIGRESS_PUBLISHED = {"validity": 0.990, "uniqueness": 0.962}
DIST_KEYS = ("fcd", "precision", "recall", "density", "coverage", "n_generated", "n_reference")


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mol_graph_eval", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--grid-power", type=float, default=GRID_POWER, help="exponent of the sampling grid")
    p.add_argument("--cond-n", type=int, default=500, help="molecules per conditional setting")
    p.add_argument("--targets", default="-0.5,1.5", help="logP targets (comma-separated)")
    p.add_argument("--guidance", default="0,1", help="guidance weights (comma-separated)")
    p.add_argument("--nll-n", type=int, default=500, help="test molecules for the negative ELBO")
    p.add_argument("--nll-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/graph_eval")
    return p


def main(argv: list[str] | None = None) -> int:
    from sciffusion.plugins.molecules.graph_data import qm9_graph_split, sanitized
    from sciffusion.plugins.molecules.graph_diffusion import load_graph_model
    from sciffusion.plugins.molecules.graph_pipeline import (
        evaluate_nll,
        format_graph_table,
        generate_graphs,
        graph_training_smiles,
        molecule_metrics,
        property_mae,
    )

    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_graph_model(args.checkpoint)
    train = graph_training_smiles(args.checkpoint)
    split = qm9_graph_split()
    from rdkit import Chem

    test_mols = [sanitized(Chem.MolFromSmiles(d.smiles)) for d in split["test"]]
    result: dict = {"checkpoint": args.checkpoint, "steps": args.steps, "threads": args.threads}
    t0 = time.perf_counter()
    gen = generate_graphs(model, args.n, args.steps, seed=0, train_smiles=train, grid_power=args.grid_power)
    result["unconditional"] = {**gen.metrics, "molecules_per_second": gen.throughput,
                               "wall_seconds": time.perf_counter() - t0}
    result["grid_power"] = args.grid_power
    result["test_split"] = molecule_metrics(test_mols, train)
    rows = {f"sciffusion graph ({args.n} samples, {args.steps} steps)": gen.metrics,
            "QM9 test split (ceiling)": result["test_split"], "DiGress (published)": DIGRESS_PUBLISHED}
    lines = [format_graph_table(rows), ""]
    result["distribution"] = _distribution(gen.smiles, split)
    lines += [*_distribution_table(result["distribution"]), ""]
    result["nll"] = evaluate_nll(model, split["test"][: args.nll_n], args.nll_steps)
    lines.append(f"negative ELBO on {args.nll_n} test molecules ({args.nll_steps} steps), nats per molecule: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in sorted(result["nll"].items())))
    result["conditional"] = []
    if model.cfg.properties:
        lines += ["", "| logP target | guidance | valid | unique | MAE | unconditional MAE |", "|---|---|---|---|---|---|"]
        for target in [float(x) for x in args.targets.split(",")]:
            base = property_mae(gen.mols, "logp", target)
            for w in [float(x) for x in args.guidance.split(",")]:
                c = generate_graphs(model, args.cond_n, args.steps, seed=1, targets={"logp": target}, guidance=w,
                                    grid_power=args.grid_power)
                row = {"target": target, "guidance": w, **c.metrics, "unconditional_mae": base}
                result["conditional"].append(row)
                lines.append(f"| {target} | {w} | {100 * c.metrics['validity']:.1f} % | "
                             f"{100 * c.metrics['uniqueness']:.1f} % | {_num(c.metrics['logp_mae'])} | {_num(base)} |")
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    (out / "eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _distribution(smiles: list, split: dict) -> dict:
    """FCD etc. of the valid generated SMILES against the test split, and of as many training
    molecules (a seeded draw) against it: the floor a sampler of the training data reaches."""
    from sciffusion.plugins.molecules.distribution import reference_scores

    scores = reference_scores([s for s in smiles if s], "qm9", None,
                              split_smiles=lambda name: [d.smiles for d in split[name]])
    floor = scores.pop("floor")
    scores.pop("reference")
    return {"generated": scores, "train_floor": floor}


def _distribution_table(dist: dict) -> list[str]:
    lines = ["| against the QM9 test split | " + " | ".join(DIST_KEYS) + " |", "|---" * (len(DIST_KEYS) + 1) + "|"]
    for name, row in (("generated (valid)", dist["generated"]), ("training molecules (floor)", dist["train_floor"])):
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in DIST_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
