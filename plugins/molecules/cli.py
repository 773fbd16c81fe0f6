"""The molecule command line: `main(argv)` generates, scores or trains (`sciffusion-mol-generate`).

`python -m recipes.mol_generate` from a checkout calls the same `main`. The defaults that depend
on the model (`DEFAULTS`: batch size, learning rate, sampling steps, molecule size) and the
training rules of thumb (`train.train_config`, `TransformerConfig.scaled`) live in this plugin.
Bad input (a bad file, record, checkpoint or count) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sciffusion.core.devices import DEVICE_HELP, resolve_device

USAGE = """Generate molecules with the shipped graph diffusion model (or the 3-D EGNN) and score them.

    sciffusion-mol-generate                      # 100 molecules, shipped graph model
    sciffusion-mol-generate --property logp --target 1.5 --guidance 1 --n 500
    sciffusion-mol-generate --model egnn --n 100 # the 3-D route (E(3)-equivariant EDM)
    sciffusion-mol-generate --score my.sdf       # score any SDF (or .smi) with the same metrics
    sciffusion-mol-generate --train --data qm9 --train-steps 20000 --out runs/graph
    sciffusion-mol-generate --train --data my.smi --out runs/mine   # SMILES file
    sciffusion-mol-generate --train --data moses --property none --out runs/moses   # pip install --no-deps molsets
    sciffusion-mol-generate --checkpoint moses_graph --n 1000   # the shipped MOSES model
    sciffusion-mol-generate --model egnn --train --data qm9 --train-steps 2000 --out runs/egnn

(`python -m recipes.mol_generate ...` from a checkout is the same command.)
Writes molecules.sdf, smiles.txt, grid.png, metrics.json and config.json to --out and prints
a table of metrics.
"""

# per model: training batch size and learning rate, sampling steps (graph: `graph_diffusion.DEFAULT_STEPS`),
# largest molecule (graph: heavy atoms)
DEFAULTS = {
    "graph": {"batch_size": 128, "lr": 5e-4},
    "egnn": {"batch_size": 64, "lr": 5e-4, "steps": 200, "max_atoms": 29},
}
# options that count something, and their smallest allowed value (None: not given, default applies)
COUNTS = {"n": 1, "steps": 1, "size": 1, "train_steps": 1, "batch_size": 1, "max_atoms": 1, "train_limit": 1,
          "hidden": 1, "layers": 1, "edge_hidden": 1, "threads": 1}


def build_parser(prog: str = "sciffusion-mol-generate") -> argparse.ArgumentParser:
    """The command line (see `USAGE`)."""
    p = argparse.ArgumentParser(prog=prog, description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="graph", choices=["graph", "egnn"],
                   help="graph: discrete diffusion of molecular graphs (default); egnn: 3-D E(3) diffusion")
    p.add_argument("--n", type=int, default=100, help="number of molecules to sample (default 100)")
    p.add_argument("--checkpoint", default=None,
                   help="model .pt, or the name of a shipped one: qm9_graph (the default), moses_graph, qm9_small")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: graph 40, egnn 200)")
    p.add_argument("--grid-power", type=float, default=None,
                   help="graph model: the sampling times are t = u^power, u in equal steps from 1 to 0 "
                        "(default 5: most steps near t = 0; 1 is equal steps)")
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
    p.add_argument("--method", default="ddpm", help="egnn model: core sampler (default ddpm: ancestral steps gave "
                   "more stable molecules than the deterministic samplers; or unipc, ddim, heun, dpmpp_2m, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--out", default="./mol_generate_out")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's own choice, one per core; pass 1 on a "
                        "machine shared with other jobs)")
    p.add_argument("--score", metavar="SDF", help="score the molecules of an SDF file and exit")
    p.add_argument("--train", action="store_true", help="train a new model on --data")
    p.add_argument("--data", default="qm9", help="'qm9', 'moses' (graph model; needs the molsets package's data) "
                   "or a SMILES/SDF/XYZ file (with --train)")
    p.add_argument("--train-limit", type=int, default=None,
                   help="with --data moses: train on a seeded subset of this many molecules (default 200,000)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input record")
    _add_scoring_and_training_arguments(p)
    return p


def _add_scoring_and_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", default=None,
                   help="FCD and precision/recall/density/coverage of the valid generated molecules against "
                        "'qm9' (its test split, with the train-split floor), a SMILES file, or 'none' (default: "
                        "qm9 for the egnn model; none for the graph model, whose QM9 test split of 13,000 "
                        "molecules takes minutes to embed)")
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=None, help="default: graph 128, egnn 64")
    p.add_argument("--lr", type=float, default=None, help="default 5e-4")
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine", "linear"],
                   help="graph model: the rate after the warm-up (default constant; cosine and linear decay to 0)")
    p.add_argument("--max-atoms", type=int, default=None,
                   help="default: graph 9 heavy atoms (27 with --data moses), egnn 29 atoms")
    p.add_argument("--type-mode", default="continuous", choices=["continuous", "categorical"])
    p.add_argument("--prediction", default="x0", choices=["x0", "eps"])
    p.add_argument("--init", metavar="MODEL_PT", default=None,
                   help="with --train: start from this model's weights and configuration (warm start)")
    p.add_argument("--hidden", type=int, default=96, help="EGNN width / graph transformer node width")
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--edge-hidden", type=int, default=24, help="graph transformer edge width")


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
    net = TransformerConfig.scaled(args.hidden, args.edge_hidden, args.layers)
    train_graph_model(args.data, args.out, steps=args.train_steps, batch_size=args.batch_size, lr=args.lr,
                      net=net, seed=args.seed, device=args.device, progress=not args.quiet,
                      max_atoms=args.max_atoms, properties=props, train_limit=args.train_limit,
                      log=lambda m: print(m, file=sys.stderr), init=args.init, lr_schedule=args.lr_schedule)
    _say(args, f"model written to {Path(args.out) / 'model.pt'}")
    return 0


def _train(args) -> int:
    defaults = DEFAULTS[args.model]
    args.batch_size = args.batch_size or defaults["batch_size"]
    args.lr = args.lr or defaults["lr"]
    if args.model == "graph":
        return _train_graph(args)
    return _train_egnn(args)


def _egnn_training_set(args):
    """The molecules of `--data` (QM9 or a file, bad records reported) and the training split."""
    from sciffusion.plugins.molecules.data import load_qm9, pack, read_molecules, split_indices

    if args.data.lower() == "qm9":
        data = load_qm9(max_atoms=args.max_atoms)
    else:
        rep = read_molecules(args.data, max_atoms=args.max_atoms, strict=args.strict, seed=args.seed)
        for err in rep.errors:
            print(f"skipped: {err}", file=sys.stderr)
        _say(args, f"read {len(rep.data)} molecules from {args.data}, skipped {rep.n_skipped}")
        data = pack(rep.data)
    split = split_indices(len(data), seed=args.seed)
    return data, (data.subset(split["train"]) if len(data) >= 10 else data)


def _train_egnn(args) -> int:
    from sciffusion.plugins.molecules.diffusion import MolDiffusion, MolDiffusionConfig
    from sciffusion.plugins.molecules.model import EGNNConfig
    from sciffusion.plugins.molecules.train import load_model, train, train_config

    args.max_atoms = args.max_atoms or DEFAULTS["egnn"]["max_atoms"]
    data, train_set = _egnn_training_set(args)
    if args.init:
        model = load_model(args.init).train()  # its config wins over --hidden/--layers/--type-mode
        if model.cfg.max_atoms < int(data.n_atoms.max()):
            raise ValueError(f"--init model allows {model.cfg.max_atoms} atoms; the data has molecules of "
                             f"{int(data.n_atoms.max())}: pass --max-atoms {model.cfg.max_atoms}")
    else:
        model = MolDiffusion(MolDiffusionConfig(type_mode=args.type_mode, max_atoms=args.max_atoms,
                                                prediction=args.prediction,
                                                egnn=EGNNConfig(hidden=args.hidden, layers=args.layers)))
    tcfg = train_config(args.train_steps, args.batch_size, args.lr, args.out, seed=args.seed, device=args.device)
    train(model, train_set, tcfg, train_smiles=train_set.smiles, progress=not args.quiet)
    _say(args, f"model written to {Path(args.out) / 'model.pt'}")
    return 0


def _generate_graph(args) -> int:
    from sciffusion.plugins.molecules.graph_diffusion import DEFAULT_STEPS, GRID_POWER
    from sciffusion.plugins.molecules.graph_pipeline import generate_to_dir

    steps = args.steps or DEFAULT_STEPS
    power = GRID_POWER if args.grid_power is None else args.grid_power
    if not power > 0:
        raise ValueError(f"--grid-power must be a positive exponent, got {args.grid_power}")
    _say(args, f"sampling {args.n} molecules with the graph model ({steps} steps, grid power {power:g})")
    gen, table = generate_to_dir(args.checkpoint, args.out, args.n, steps, args.seed, args.size, args.property,
                                 args.target, args.guidance, args.device, progress=not args.quiet,
                                 config={"args": vars(args)}, final=args.final,
                                 reference=args.reference or "none", grid_power=power)
    _say(args, table)
    _say(args, f"{len(gen.graphs)} molecules in {gen.seconds:.1f} s ({gen.throughput:.1f} molecules/s); "
               f"files in {args.out}")
    return 0


def _generate(args) -> int:
    if args.model == "graph":
        return _generate_graph(args)
    if args.property or args.guidance or args.grid_power is not None:
        raise ValueError("--property/--target/--guidance/--grid-power need the graph model (--model graph)")
    args.steps = args.steps or DEFAULTS["egnn"]["steps"]
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


def check_counts(args: argparse.Namespace) -> None:
    """Raise `MolInputError` naming the first count option (`COUNTS`) below its minimum."""
    from sciffusion.plugins.molecules.data import MolInputError

    for name, least in COUNTS.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise MolInputError(f"{flag} must be a positive count (at least {least}), got {value}")


def main(argv: list[str] | None = None, prog: str = "sciffusion-mol-generate") -> int:
    """Entry point; returns the exit status (2 for bad input, with a one-line message).

    As a program it sets torch's CPU threads when `--threads` is given; library calls never do.
    """
    import torch

    from sciffusion.plugins.molecules.data import MolInputError

    args = build_parser(prog).parse_args(argv)
    try:
        check_counts(args)
        if args.checkpoint:
            from sciffusion.plugins.molecules.graph_pipeline import resolve_checkpoint

            args.checkpoint = str(resolve_checkpoint(args.checkpoint))
        if args.threads is not None:
            torch.set_num_threads(args.threads)
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
