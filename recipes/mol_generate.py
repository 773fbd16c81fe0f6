"""Generate molecules with the shipped graph diffusion model (or the 3-D EGNN) and score them.

    python -m recipes.mol_generate                      # 100 molecules, shipped graph model
    python -m recipes.mol_generate --property logp --target 1.5 --guidance 1 --n 500
    python -m recipes.mol_generate --model egnn --n 100 # the 3-D route (E(3)-equivariant EDM)
    python -m recipes.mol_generate --score my.sdf       # score any SDF (or .smi) with the same metrics
    python -m recipes.mol_generate --train --data qm9 --train-steps 20000 --out runs/graph
    python -m recipes.mol_generate --train --data my.smi --out runs/mine   # SMILES file
    python -m recipes.mol_generate --model egnn --train --data qm9 --train-steps 2000 --out runs/egnn

Writes molecules.sdf, smiles.txt, grid.png, metrics.json and config.json to --out and prints
a table of metrics. See docs/molecules.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sciffusion.core.devices import DEVICE_HELP, resolve_device


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.mol_generate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="graph", choices=["graph", "egnn"],
                   help="graph: discrete diffusion of molecular graphs (default); egnn: 3-D E(3) diffusion")
    p.add_argument("--n", type=int, default=100, help="number of molecules to sample (default 100)")
    p.add_argument("--checkpoint", default=None, help="model .pt (default: the shipped QM9 model)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: graph 100, egnn 200)")
    p.add_argument("--property", default=None,
                   help="graph model: condition on this property (e.g. logp); with --train, the properties "
                        "to learn (comma-separated, 'none' for an unconditional model; default logp)")
    p.add_argument("--target", type=float, default=None, help="graph model: target value of --property")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="graph model: classifier-free guidance weight w (0: plain conditional)")
    p.add_argument("--final", default="argmax", choices=["argmax", "sample"],
                   help="graph model: last step returns the most probable clean graph (default) or a draw")
    p.add_argument("--size", type=int, default=None, help="graph model: heavy atoms per molecule (default: "
                   "drawn from the training histogram)")
    p.add_argument("--method", default="ddpm", help="core sampler: ddpm, ddim, euler_maruyama, heun, dpmpp_2m")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--out", default="./mol_generate_out")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: small graphs gain nothing from more, and "
                        "on a shared machine extra threads wait on each other)")
    p.add_argument("--score", metavar="SDF", help="score the molecules of an SDF file and exit")
    p.add_argument("--train", action="store_true", help="train a new model on --data")
    p.add_argument("--data", default="qm9", help="'qm9' or a SMILES/SDF/XYZ file (with --train)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input record")
    p.add_argument("--reference", default=None,
                   help="FCD and precision/recall/density/coverage of the valid generated molecules against "
                        "'qm9' (its test split, with the train-split floor), a SMILES file, or 'none' (default: "
                        "qm9 for the egnn model; none for the graph model, whose QM9 test split of 13,000 "
                        "molecules takes minutes to embed)")
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=None, help="default: graph 128, egnn 64")
    p.add_argument("--lr", type=float, default=None, help="default 5e-4")
    p.add_argument("--max-atoms", type=int, default=None, help="default: graph 9 (heavy atoms), egnn 29")
    p.add_argument("--type-mode", default="continuous", choices=["continuous", "categorical"])
    p.add_argument("--prediction", default="x0", choices=["x0", "eps"])
    p.add_argument("--init", metavar="MODEL_PT", default=None,
                   help="with --train: start from this model's weights and configuration (warm start)")
    p.add_argument("--hidden", type=int, default=96, help="EGNN width / graph transformer node width")
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--edge-hidden", type=int, default=24, help="graph transformer edge width")
    return p


def _say(args, *msg) -> None:
    if not args.quiet:
        print(*msg, flush=True)


def _score_graph(args) -> int:
    from sciffusion.plugins.molecules.graph_pipeline import (
        DEFAULT_GRAPH_CHECKPOINT,
        format_graph_table,
        graph_training_smiles,
        score_file,
    )

    metrics = score_file(args.score, graph_training_smiles(args.checkpoint or DEFAULT_GRAPH_CHECKPOINT))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"file": str(args.score), **metrics}, indent=2))
    print(format_graph_table({Path(args.score).name: metrics}))
    return 0


def _score(args) -> int:
    if args.model == "graph":
        return _score_graph(args)
    from sciffusion.plugins.molecules.generate import format_table, training_smiles
    from sciffusion.plugins.molecules.metrics import score_sdf

    metrics = score_sdf(args.score, training_smiles())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"file": str(args.score), **metrics.to_dict()}, indent=2))
    print(format_table({Path(args.score).name: metrics.to_dict()}))
    return 0


def _train_graph(args) -> int:
    from sciffusion.plugins.molecules.graph_model import TransformerConfig
    from sciffusion.plugins.molecules.graph_pipeline import train_graph_model

    props = ("logp",) if args.property is None else tuple(p for p in args.property.split(",") if p != "none")
    heads = max(1, args.hidden // 16)
    net = TransformerConfig(layers=args.layers, dx=args.hidden, de=args.edge_hidden, dy=64, heads=heads,
                            ff_x=2 * args.hidden, ff_e=2 * args.edge_hidden, ff_y=128)
    train_graph_model(args.data, args.out, steps=args.train_steps, batch_size=args.batch_size, lr=args.lr,
                      net=net, seed=args.seed, device=args.device, progress=not args.quiet,
                      max_atoms=args.max_atoms or 9, properties=props, log=lambda m: print(m, file=sys.stderr))
    _say(args, f"model written to {Path(args.out) / 'model.pt'}")
    return 0


def _train(args) -> int:
    graph = args.model == "graph"
    args.batch_size = args.batch_size or (128 if graph else 64)
    args.lr = args.lr or 5e-4
    if graph:
        return _train_graph(args)
    from sciffusion.core.train.trainer import TrainConfig
    from sciffusion.plugins.molecules.data import load_qm9, pack, read_molecules, split_indices
    from sciffusion.plugins.molecules.diffusion import MolDiffusion, MolDiffusionConfig
    from sciffusion.plugins.molecules.model import EGNNConfig
    from sciffusion.plugins.molecules.train import load_model, train

    args.max_atoms = args.max_atoms or 29
    if args.data.lower() == "qm9":
        data = load_qm9(max_atoms=args.max_atoms)
    else:
        rep = read_molecules(args.data, max_atoms=args.max_atoms, strict=args.strict, seed=args.seed)
        for err in rep.errors:
            print(f"skipped: {err}", file=sys.stderr)
        _say(args, f"read {len(rep.data)} molecules from {args.data}, skipped {rep.n_skipped}")
        data = pack(rep.data)
    split = split_indices(len(data), seed=args.seed)
    train_set = data.subset(split["train"]) if len(data) >= 10 else data
    if args.init:
        model = load_model(args.init).train()  # its config wins over --hidden/--layers/--type-mode
        if model.cfg.max_atoms < int(data.n_atoms.max()):
            raise ValueError(f"--init model allows {model.cfg.max_atoms} atoms; the data has molecules of "
                             f"{int(data.n_atoms.max())}: pass --max-atoms {model.cfg.max_atoms}")
    else:
        model = MolDiffusion(MolDiffusionConfig(type_mode=args.type_mode, max_atoms=args.max_atoms,
                                                prediction=args.prediction,
                                                egnn=EGNNConfig(hidden=args.hidden, layers=args.layers)))
    tcfg = TrainConfig(steps=args.train_steps, batch_size=args.batch_size, lr=args.lr,
                       warmup_steps=min(200, args.train_steps // 10), min_lr_ratio=0.1,
                       ema_half_life=max(10.0, args.train_steps / 20), checkpoint_every=250,
                       seed=args.seed, out_dir=args.out, device=args.device)
    train(model, train_set, tcfg, train_smiles=train_set.smiles, progress=not args.quiet)
    _say(args, f"model written to {Path(args.out) / 'model.pt'}")
    return 0


def _generate_graph(args) -> int:
    from sciffusion.plugins.molecules.graph_pipeline import generate_to_dir

    steps = args.steps or 100
    _say(args, f"sampling {args.n} molecules with the graph model ({steps} steps)")
    gen, table = generate_to_dir(args.checkpoint, args.out, args.n, steps, args.seed, args.size, args.property,
                                 args.target, args.guidance, args.device, progress=not args.quiet,
                                 config={"args": vars(args)}, final=args.final,
                                 reference=args.reference or "none")
    _say(args, table)
    _say(args, f"{len(gen.graphs)} molecules in {gen.seconds:.1f} s ({gen.throughput:.1f} molecules/s); "
               f"files in {args.out}")
    return 0


def _generate(args) -> int:
    if args.model == "graph":
        return _generate_graph(args)
    if args.property or args.guidance:
        raise ValueError("--property/--target/--guidance need the graph model (--model graph)")
    args.steps = args.steps or 200
    from sciffusion.plugins.molecules.generate import (
        DEFAULT_CHECKPOINT,
        EDM_PUBLISHED,
        format_table,
        generate,
        shipped_checkpoint_info,
        training_smiles,
        write_outputs,
    )
    from sciffusion.plugins.molecules.train import load_model

    ckpt = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    model = load_model(ckpt, args.device)
    card = shipped_checkpoint_info(ckpt)
    smiles = training_smiles(ckpt)
    if smiles is None and (ckpt.parent / "train_smiles.txt").exists():
        smiles = (ckpt.parent / "train_smiles.txt").read_text().split()
    _say(args, f"sampling {args.n} molecules with {ckpt.name} ({args.method}, {args.steps} steps)")
    gen = generate(model, args.n, args.steps, args.method, args.seed, args.device,
                   train_smiles=smiles, progress=not args.quiet)
    ceilings = card.get("ceilings", {})
    gen.extra = {"qm9_ceiling": ceilings, "edm_published": EDM_PUBLISHED}
    args.reference = args.reference or "qm9"
    if args.reference != "none":
        from sciffusion.plugins.molecules.distribution import reference_scores

        valid = [r["smiles"] for r in gen.records if r["valid"]]
        gen.extra["distribution"] = reference_scores(valid, args.reference, model.cfg.max_atoms, args.device)
        _say(args, "distribution vs reference:", json.dumps(gen.extra["distribution"]))
    rows = {"sciffusion (this run)": gen.metrics.to_dict(), **ceilings,
            "EDM, QM9 (published)": EDM_PUBLISHED}
    table = format_table(rows)
    config = {"args": vars(args), "checkpoint": str(ckpt), "model": model.cfg.to_dict(),
              "training": card.get("training")}
    write_outputs(gen, args.out, config, table)
    _say(args, table)
    _say(args, f"{gen.metrics.n_molecules} molecules in {gen.seconds:.1f} s "
               f"({gen.throughput:.2f} molecules/s); files in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with a one-line message)."""
    from sciffusion.plugins.molecules.data import MolInputError

    args = _parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    try:
        if args.n < 1:
            raise MolInputError(f"--n must be a positive number of molecules, got {args.n}")
        args.device = str(resolve_device(args.device))
        _say(args, f"device: {args.device}")
        if args.score:
            return _score(args)
        if args.train:
            return _train(args)
        return _generate(args)
    except (MolInputError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
