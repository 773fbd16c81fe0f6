"""A graph model trained on MOSES, scored with the MOSES metrics against MOSES' published baselines.

    pip install --no-deps molsets        # the MOSES data and filter lists (see docs/molecules.md)
    python -m benchmarks.mol_moses_eval --checkpoint plugins/molecules/checkpoints/moses_graph.pt \
        --n 1000 --out runs/moses_eval

Rows: the model's valid samples; as many MOSES training molecules, scored by the same code (the
ceiling a perfect sampler of the training data reaches at this sample size); then the published
MOSES baselines (Polykovskiy et al. 2020, means over three runs of 30,000 samples each).

Columns: validity (RDKit sanitises the graph as generated, fragments and all, as MOSES counts it);
connected (valid and in one piece; not a MOSES column, so the published rows leave it out);
Unique@1k; novelty against the whole MOSES training split; filters; internal diversity; and FCD / SNN / Frag / Scaf against the test split ("Test") and the scaffold test split ("TestSF").

FCD here is the `fcd` package's ChemNet distance against a seeded draw of `--fcd-reference`
molecules of each split; it grows as the generated set shrinks, so compare it with the ceiling
row of the same size rather than with the published 30,000-sample figures. SNN, Frag and Scaf
use the whole splits. Writes moses_eval.json and moses_eval.md to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sciffusion.plugins.molecules.graph_diffusion import DEFAULT_STEPS, GRID_POWER

REFERENCES = {"Test": "test", "TestSF": "test_scaffolds"}
COLUMNS = ("validity", "connected", "unique@1k", "novelty", "filters", "intdiv", "fcd/Test", "fcd/TestSF", "snn/Test",
           "snn/TestSF", "frag/Test", "frag/TestSF", "scaf/Test", "scaf/TestSF")
# MOSES' published baselines (their README's table: means over three runs of 30,000 samples).
MOSES_PUBLISHED = {
    "MOSES training set (published)": dict(zip(COLUMNS, (1.0, None, 1.0, None, 1.0, 0.8567, 0.008, 0.4755, 0.6419, 0.5859,
                                                          1.0, 0.9986, 0.9907, 0.0))),
    "CharRNN (published)": dict(zip(COLUMNS, (0.9748, None, 1.0, 0.8419, 0.9943, 0.8562, 0.0732, 0.5204, 0.6015, 0.5649,
                                              0.9998, 0.9983, 0.9242, 0.1101))),
    "VAE (published)": dict(zip(COLUMNS, (0.9767, None, 1.0, 0.6949, 0.997, 0.8558, 0.099, 0.567, 0.6257, 0.5783, 0.9994,
                                          0.9984, 0.9386, 0.0588))),
    "JTN-VAE (published)": dict(zip(COLUMNS, (1.0, None, 1.0, 0.9143, 0.976, 0.8551, 0.3954, 0.9382, 0.5477, 0.5194, 0.9965,
                                              0.9947, 0.8964, 0.1009))),
    "LatentGAN (published)": dict(zip(COLUMNS, (0.8966, None, 1.0, 0.9498, 0.9735, 0.8565, 0.2968, 0.8281, 0.5371, 0.5132,
                                                0.9986, 0.9972, 0.8867, 0.1072))),
    "NGram (published)": dict(zip(COLUMNS, (0.2376, None, 0.974, 0.9694, 0.9582, 0.8738, 5.5069, 6.2306, 0.5209, 0.4997,
                                            0.9846, 0.9815, 0.5302, 0.0977))),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mol_moses_eval", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a graph model trained with --data moses")
    p.add_argument("--n", type=int, default=1000, help="molecules to sample")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--grid-power", type=float, default=GRID_POWER)
    p.add_argument("--fcd-reference", type=int, default=10000, help="molecules of each split for FCD")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/moses_eval")
    return p


def set_scores(smiles: list[str], mols: list, train: set[str], fcd_refs: dict[str, list[str]],
               stats: dict[str, dict]) -> dict:
    """Every column of COLUMNS for one set (`mols`: RDKit Mol or None per molecule, `smiles` their
    canonical SMILES or None)."""
    from sciffusion.plugins.molecules.distribution import distribution_metrics
    from sciffusion.plugins.molecules.moses_metrics import moses_scores

    valid = [(s, m) for s, m in zip(smiles, mols) if m is not None]
    first = [s for s, _ in valid[:1000]]
    distinct = {s for s, _ in valid}
    row = {"n": len(mols), "validity": len(valid) / len(mols),
           "connected": sum("." not in s for s, _ in valid) / len(mols), "unique@1k": len(set(first)) / max(len(first), 1),
           "novelty": sum(s not in train for s in distinct) / max(len(distinct), 1)}
    for label, split in REFERENCES.items():
        scores = moses_scores([m for _, m in valid], stats[split])
        row.update({"filters": scores["filters"], "intdiv": scores["intdiv"]})
        row.update({f"{k}/{label}": scores[k] for k in ("snn", "frag", "scaf")})
        row[f"fcd/{label}"] = distribution_metrics([s for s, _ in valid], fcd_refs[split])["fcd"]
    return row


def _table(rows: dict[str, dict]) -> list[str]:
    lines = ["| | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in rows.items():
        cells = ["-" if row.get(k) is None else f"{row[k]:.3f}" for k in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    from rdkit import Chem

    from sciffusion.plugins.molecules.build import canonical_smiles
    from sciffusion.plugins.molecules.graph_diffusion import load_graph_model
    from sciffusion.plugins.molecules.graph_pipeline import generate_graphs
    from sciffusion.plugins.molecules.moses_data import moses_smiles, moses_subset
    from sciffusion.plugins.molecules.moses_metrics import reference_statistics

    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_graph_model(args.checkpoint)
    t0 = time.perf_counter()
    gen = generate_graphs(model, args.n, args.steps, seed=args.seed, grid_power=args.grid_power)
    sampling = {"seconds": gen.seconds, "molecules_per_second": gen.throughput, "steps": args.steps}
    print(f"sampled {args.n} molecules in {time.perf_counter() - t0:.0f} s", flush=True)
    train_smiles = moses_smiles("train")
    train = {canonical_smiles(s) for s in train_smiles}
    stats = {split: reference_statistics(split) for split in REFERENCES.values()}
    fcd_refs = {split: moses_subset(moses_smiles(split), args.fcd_reference, args.seed) for split in REFERENCES.values()}
    ceiling = moses_subset(train_smiles, args.n, args.seed + 1)
    ceiling_mols = [Chem.MolFromSmiles(s) for s in ceiling]
    rows = {f"sciffusion graph ({args.n} samples, {args.steps} steps)":
            set_scores(gen.smiles, gen.mols, train, fcd_refs, stats),
            f"{args.n} MOSES training molecules (ceiling)":
            set_scores([Chem.MolToSmiles(m) for m in ceiling_mols], ceiling_mols, train, fcd_refs, stats),
            **MOSES_PUBLISHED}
    lines = _table(rows)
    result = {"checkpoint": args.checkpoint, "grid_power": args.grid_power, "sampling": sampling, "rows": rows,
              "fcd_reference_size": args.fcd_reference}
    (out / "moses_eval.json").write_text(json.dumps(result, indent=2))
    (out / "moses_eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
