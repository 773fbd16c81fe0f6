"""Lab-pipeline entry points of the graph model: load data, train, generate, score, write files.

    splits, skipped = load_graph_data("qm9")                    # or a SMILES file
    model = train_graph_model("qm9", "runs/graph", steps=20000)  # core Trainer, resumable
    gen = generate_graphs(model, 1000, targets={"logp": 1.0}, guidance=1.0)
    write_graph_outputs(gen, "out/", config)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sciffusion.core.atomic import atomic_write

from .build import canonical_smiles
from .data import MolInputError, check_molecule_file, split_indices
from .generate import SamplingRate, write_run_files
from .graph_data import (
    ATOM_TYPES,
    PROPERTIES,
    SkipReport,
    dense_to_graphs,
    graph_to_mol,
    qm9_graph_split,
    qm9_graph_split_smiles,
    read_smiles_file,
    sanitized,
)
from .graph_diffusion import (
    DEFAULT_STEPS,
    GRID_POWER,
    GraphDiffusion,
    GraphDiffusionConfig,
    load_graph_model,
    train_graph,
)
from .graph_model import TransformerConfig


def source_vocabulary(source: str) -> tuple[tuple[str, ...], int]:
    """Atom types and largest size (heavy atoms) of a graph model for `source`: MOSES' seven
    elements and 27 atoms for 'moses'; QM9's vocabulary and 9 atoms otherwise."""
    if source.lower() == "moses":
        from .moses_data import MOSES_ATOM_TYPES, MOSES_MAX_ATOMS

        return MOSES_ATOM_TYPES, MOSES_MAX_ATOMS
    return ATOM_TYPES, 9


def load_graph_data(source: str, max_atoms: int | None = None, seed: int = 0,
                    properties: Sequence[str] = ("logp",),
                    train_limit: int | None = None) -> tuple[dict[str, list], SkipReport]:
    """'qm9' (the standard seeded 80/10/10 random split), 'moses' (a seeded subset of
    `train_limit` training molecules, 200,000 by default, and 2,000 of its test split), or a SMILES
    file (80/10/10; a file of fewer than 10 molecules trains and tests on all of them). Skipped
    records are counted by reason. `max_atoms` defaults to `source_vocabulary(source)`'s size."""
    atom_types, default_size = source_vocabulary(source)
    max_atoms = max_atoms or default_size
    if source.lower() == "moses":
        from .moses_data import load_moses_graphs

        return load_moses_graphs(train_limit or 200_000, 2_000, seed, tuple(properties))
    if source.lower() == "qm9":
        from .graph_data import QM9_PROPERTIES, load_qm9_graphs

        if tuple(properties) not in (QM9_PROPERTIES, ()):
            raise MolInputError(f"QM9 graphs carry the properties {list(QM9_PROPERTIES)}, not {list(properties)}")
        _, report = load_qm9_graphs()
        return qm9_graph_split(seed), report
    data, report = read_smiles_file(source, atom_types=atom_types, max_atoms=max_atoms, properties=tuple(properties))
    if not data:
        raise MolInputError(f"{source}: no usable molecules ({report.total} skipped)")
    if len(data) < 10:
        return {"train": data, "val": data, "test": data}, report
    idx = split_indices(len(data), seed=seed)
    return {k: [data[i] for i in v.tolist()] for k, v in idx.items()}, report


def train_graph_model(source: str, out_dir: str | Path, steps: int = 20000, batch_size: int = 128,
                      lr: float = 3e-4, net: TransformerConfig | None = None, seed: int = 0,
                      checkpoint_every: int = 200, device: str | None = None, progress: bool = True,
                      max_atoms: int | None = None, properties: Sequence[str] = ("logp",), log=print,
                      spectral: bool = False, init: str | Path | None = None,
                      lr_schedule: str = "constant", train_limit: int | None = None) -> GraphDiffusion:
    """Train a graph model on `source` (see `load_graph_data`) with core's Trainer (`lr_schedule`
    after a warm-up, EMA 0.998), conditioned on `properties` (() for an unconditional model);
    resumes from the newest checkpoint in `out_dir`. The vocabulary and default size come from
    `source_vocabulary(source)`. `spectral` adds the connectivity and Laplacian features of the
    noisy graph (`graph_model.spectral_features`). `init`: start from this saved graph model (its
    configuration wins over `net`, `properties`, `spectral` and `max_atoms`), e.g. to continue a
    finished run with a decaying rate. Returns the EMA model."""
    from sciffusion.core.train.trainer import TrainConfig

    unknown = [p for p in properties if p not in PROPERTIES]
    if unknown:
        raise MolInputError(f"unknown property {unknown[0]!r}; known: {', '.join(sorted(PROPERTIES))}")
    start = load_graph_model(init).train() if init is not None else None
    atom_types, default_size = source_vocabulary(source)
    max_atoms = max_atoms or default_size
    if start is not None:
        atom_types, max_atoms, properties = start.cfg.atom_types, start.cfg.max_atoms, start.cfg.properties
    splits, report = load_graph_data(source, max_atoms, seed, properties, train_limit)
    for line in report.lines():
        log(line)
    train = splits["train"]
    log(f"training on {len(train)} graphs ({source}, split seed {seed})")
    model = start or GraphDiffusion(GraphDiffusionConfig(atom_types=atom_types, max_atoms=max_atoms,
                                                         properties=tuple(properties), spectral=spectral,
                                                         net=net or TransformerConfig()))
    cfg = TrainConfig(steps=steps, batch_size=min(batch_size, len(train)), lr=lr, lr_schedule=lr_schedule,
                      warmup_steps=min(300, steps // 10), ema_decay=0.998, checkpoint_every=checkpoint_every,
                      keep_last=3, log_every=20, seed=seed, out_dir=str(out_dir), device=device)
    return train_graph(model, train, cfg, progress=progress)


# ----------------------------------------------------------------------------- generation
@dataclass
class GraphGeneration(SamplingRate):
    """Generated graphs: per molecule (atom types, bonds), the sanitised RDKit Mol (None if
    RDKit rejects the graph), its canonical SMILES, the sampling time and the metrics."""

    graphs: list
    mols: list
    smiles: list
    seconds: float
    metrics: dict
    extra: dict = dc_field(default_factory=dict)


def sample_graphs(model: GraphDiffusion, n: int, steps: int = DEFAULT_STEPS, seed: int = 0, size: int | None = None,
                  targets: dict[str, float] | None = None, guidance: float = 0.0, batch_size: int = 512,
                  progress: bool = False, final: str = "argmax",
                  grid_power: float = GRID_POWER) -> tuple[list, float]:
    """n graphs in batches of mixed sizes (drawn from the training histogram, or all `size`);
    returns ([(atom types, bonds)], seconds of sampling). `final`, `grid_power`: see `GraphDiffusion.sample`."""
    if n < 1:
        raise MolInputError(f"--n must be a positive number of molecules, got {n}")
    if guidance and not model.cfg.properties:
        raise MolInputError("this checkpoint is unconditional (trained without properties): "
                            "guidance needs a conditional model")
    if guidance and not targets:
        raise MolInputError("--guidance needs --property NAME --target VALUE")
    gen = torch.Generator(device=model.node_marginal.device).manual_seed(seed)  # draws where the model runs
    sizes = torch.full((n,), size) if size is not None else model.sample_sizes(n, gen)
    graphs, seconds = [], 0.0
    for start in tqdm(range(0, n, batch_size), disable=not progress or n <= batch_size, desc="batches"):
        t0 = time.perf_counter()
        out = model.sample(sizes[start: start + batch_size], steps, gen, targets, guidance,
                           progress=progress and n <= batch_size, final=final, grid_power=grid_power)
        seconds += time.perf_counter() - t0
        graphs.extend(dense_to_graphs(out.X, out.E, out.mask))
    return graphs, seconds


def molecule_metrics(mols: Sequence, train_smiles: Iterable[str] | None = None) -> dict:
    """validity (RDKit sanitises the graph, no valence correction), connectivity (valid and one
    fragment), uniqueness (distinct canonical SMILES / valid), valid_and_unique, novelty
    (distinct valid SMILES absent from `train_smiles` / distinct valid), all fractions."""
    from rdkit import Chem

    n = len(mols)
    smiles = [Chem.MolToSmiles(m) if m is not None else None for m in mols]
    valid = [s for s in smiles if s is not None]
    connected = [s for s in valid if "." not in s]
    distinct = set(valid)
    out = {"n_molecules": n, "validity": len(valid) / max(n, 1), "connectivity": len(connected) / max(n, 1),
           "uniqueness": len(distinct) / max(len(valid), 1), "valid_and_unique": len(distinct) / max(n, 1),
           "novelty": None}
    if train_smiles is not None and distinct:
        train = {canonical_smiles(s) for s in train_smiles}
        out["novelty"] = sum(s not in train for s in distinct) / len(distinct)
    return out


def property_values(mols: Sequence, name: str) -> list[float | None]:
    """RDKit property `name` of each molecule (None where invalid)."""
    fn = PROPERTIES[name]
    return [fn(m) if m is not None else None for m in mols]


def property_mae(mols: Sequence, name: str, target: float) -> float | None:
    """Mean ``|property(m) - target|`` over the valid molecules (None if there are none)."""
    vals = [v for v in property_values(mols, name) if v is not None]
    return float(sum(abs(v - target) for v in vals) / len(vals)) if vals else None


def generate_graphs(model: GraphDiffusion, n: int = 100, steps: int = DEFAULT_STEPS, seed: int = 0,
                    size: int | None = None, targets: dict[str, float] | None = None, guidance: float = 0.0,
                    train_smiles: Sequence[str] | None = None, progress: bool = False,
                    final: str = "argmax", grid_power: float = GRID_POWER) -> GraphGeneration:
    """Sample, convert (graph -> RDKit Mol -> SMILES) and score n molecules; with `targets`, also
    the MAE of each targeted property over the valid molecules."""
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    graphs, seconds = sample_graphs(model, n, steps, seed, size, targets, guidance, progress=progress, final=final,
                                    grid_power=grid_power)
    raw = [graph_to_mol(t, b, model.cfg.atom_types) for t, b in graphs]
    mols = [sanitized(m) for m in raw]
    metrics = molecule_metrics(mols, train_smiles)
    for name, value in (targets or {}).items():
        metrics[f"{name}_target"] = value
        metrics[f"{name}_mae"] = property_mae(mols, name, value)
    from rdkit import Chem

    smiles = [Chem.MolToSmiles(m) if m is not None else None for m in mols]
    return GraphGeneration(graphs, mols, smiles, seconds, metrics, {"raw": raw})


def evaluate_nll(model: GraphDiffusion, graphs: Sequence, num_steps: int = 100, batch_size: int = 256,
                 seed: int = 0) -> dict[str, float]:
    """Mean negative ELBO over `graphs` (PyG `Data`), nats per molecule, with its labelled terms
    (`GraphDiffusion.nll`: size, prior, diffusion and reconstruction of X and E, total)."""
    from .graph_data import collate_graphs, to_dense

    gen = torch.Generator(device=model.node_marginal.device).manual_seed(seed)
    sums: dict[str, float] = {}
    for start in range(0, len(graphs), batch_size):
        dense = to_dense(collate_graphs(graphs[start: start + batch_size]), model.cfg.max_atoms)
        for k, v in model.nll(dense, num_steps, gen).items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
    return {k: v / len(graphs) for k, v in sums.items()}


def embed_3d(mol, seed: int = 0):
    """A copy of a sanitised Mol with explicit hydrogens and one ETKDG (v3) conformer relaxed with
    MMFF94 where parameters exist; None if embedding fails."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    m = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(m, params) != 0:
        return None
    if AllChem.MMFFHasAllMoleculeParams(m):
        AllChem.MMFFOptimizeMolecule(m, maxIters=500)
    return m


def write_graph_outputs(gen: GraphGeneration, out_dir: str | Path, config: dict, table: str = "",
                        conformers: bool = True) -> dict[str, Path]:
    """molecules.sdf (every graph: valid ones with a 3-D ETKDG+MMFF conformer, invalid ones as
    written by the model, unsanitised, flagged valid=0), smiles.txt (valid ones), grid.png,
    metrics.json, config.json (and table.md if given)."""
    from rdkit import Chem

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mols, props, n_3d = [], [], 0
    for k, (mol, raw) in enumerate(zip(gen.mols, gen.extra.get("raw", gen.mols))):
        m3 = embed_3d(mol, seed=k) if (mol is not None and conformers) else None
        n_3d += m3 is not None
        m = m3 if m3 is not None else Chem.Mol(mol if mol is not None else raw)
        m.SetProp("_Name", f"mol_{k}")
        mols.append(m)
        props.append({"valid": int(mol is not None), "conformer_3d": int(m3 is not None),
                      "smiles": gen.smiles[k] or ""})
    files = {"sdf": _write_sdf_any(mols, out / "molecules.sdf", props)}
    lines = [f"{s} mol_{k}" for k, s in enumerate(gen.smiles) if s is not None]
    metrics = {"sciffusion": gen.metrics, "sampling_seconds": gen.seconds,
               "molecules_per_second": gen.throughput, "conformers_3d": n_3d}
    if "distribution" in gen.extra:
        metrics["distribution"] = gen.extra["distribution"]
    return write_run_files(out, files, lines, gen.mols, metrics, config, table)


def _write_sdf_any(mols: Sequence, path: Path, props: Sequence[dict]) -> Path:
    """Like build.write_sdf, but writes unsanitised molecules too (no kekulisation or H perception)."""
    from rdkit import Chem

    def write(tmp: Path) -> None:
        writer = Chem.SDWriter(str(tmp))
        writer.SetKekulize(False)
        for mol, pr in zip(mols, props):
            for key, value in pr.items():
                mol.SetProp(key, str(value))
            if not mol.GetNumConformers():
                mol.UpdatePropertyCache(strict=False)
            writer.write(mol)
        writer.close()

    return atomic_write(path, write)


def format_graph_table(rows: dict[str, dict | None]) -> str:
    """A markdown table of graph metrics (fractions as %; property MAEs as numbers)."""
    cols = [("validity", "valid"), ("uniqueness", "unique"), ("valid_and_unique", "valid & unique"),
            ("connectivity", "connected"), ("novelty", "novel")]
    extra = sorted({k for v in rows.values() for k in (v or {}) if k.endswith("_mae")})
    head = "| | " + " | ".join([c[1] for c in cols] + [e.replace("_", " ") for e in extra]) + " |"
    lines = [head, "|" + "---|" * (len(cols) + len(extra) + 1)]
    for name, vals in rows.items():
        vals = vals or {}
        cells = ["-" if vals.get(k) is None else f"{100 * vals[k]:.1f} %" for k, _ in cols]
        cells += ["-" if vals.get(k) is None else f"{vals[k]:.3f}" for k in extra]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- shipped model
CHECKPOINTS = Path(__file__).parent / "checkpoints"
DEFAULT_GRAPH_CHECKPOINT = CHECKPOINTS / "qm9_graph.pt"


def resolve_checkpoint(name: str | Path) -> Path:
    """`name` as a path when that file exists, else the shipped checkpoint of that name (with or
    without `.pt`, e.g. "moses_graph"); a name that is neither is returned unchanged, so loading
    it reports the missing file."""
    path = Path(name)
    if path.exists() or path.parent != Path("."):
        return path
    for candidate in (CHECKPOINTS / path.name, CHECKPOINTS / f"{path.name}.pt"):
        if candidate.exists():
            return candidate
    return path


def graph_card(path: str | Path) -> dict:
    """The JSON model card beside a checkpoint, or {}."""
    card = Path(path).with_suffix(".json")
    return json.loads(card.read_text()) if card.exists() else {}


def graph_training_smiles(path: str | Path) -> list[str] | None:
    """Training SMILES beside a checkpoint: <stem>_train_smiles.txt.gz, or train_smiles.txt in its
    folder (a training run's output), else None."""
    import gzip

    path = Path(path)
    shipped = path.with_name(path.stem + "_train_smiles.txt.gz")
    if shipped.exists():
        with gzip.open(shipped, "rt") as fh:
            return [line.strip() for line in fh if line.strip()]
    run = path.parent / "train_smiles.txt"
    return run.read_text().split() if run.exists() else None


def generate_to_dir(checkpoint: str | Path | None, out_dir: str | Path, n: int = 100, steps: int = DEFAULT_STEPS,
                    seed: int = 0, size: int | None = None, prop: str | None = None, target: float | None = None,
                    guidance: float = 0.0, device: str = "cpu", progress: bool = False,
                    config: dict | None = None, final: str = "argmax",
                    reference: str = "none", grid_power: float = GRID_POWER) -> tuple[GraphGeneration, str]:
    """Load a graph checkpoint (default: the shipped QM9 model), sample n molecules (optionally
    toward prop = target with guidance), write the output files and return (generation, table).

    `reference` ("qm9", a SMILES file, or "none") adds FCD and precision/recall/density/coverage of the
    valid molecules to metrics.json (`distribution.reference_scores`; "qm9" is the test split of
    `qm9_graph_split`, the molecules the shipped model did not train on, and its train-split floor)."""
    if n < 1:
        raise MolInputError(f"--n must be a positive number of molecules, got {n}")
    if (prop is None) != (target is None):
        raise MolInputError("--property and --target go together")
    ckpt = Path(checkpoint) if checkpoint else DEFAULT_GRAPH_CHECKPOINT
    model = load_graph_model(ckpt, device)
    if size is not None and not 1 <= size <= model.cfg.max_atoms:
        raise MolInputError(f"--size must be in 1..{model.cfg.max_atoms} for this model, got {size}")
    targets = {prop: float(target)} if prop is not None else None
    if guidance and not model.cfg.properties:
        raise MolInputError(f"{ckpt} is an unconditional model: --guidance needs a model trained with properties")
    model.cond_tensors(targets, 1)  # an unknown property fails here, before sampling
    gen = generate_graphs(model, n, steps, seed, size, targets, guidance, graph_training_smiles(ckpt), progress,
                          final, grid_power)
    if reference != "none":
        from .distribution import reference_scores

        gen.extra["distribution"] = reference_scores([sm for sm in gen.smiles if sm], reference, None, device,
                                                     split_smiles=qm9_graph_split_smiles)
    card = graph_card(ckpt)
    rows = {"sciffusion graph (this run)": gen.metrics, **card.get("reference_rows", {})}
    table = format_graph_table(rows)
    cfg = {**(config or {}), "checkpoint": str(ckpt), "model": model.cfg.to_dict(), "training": card.get("training")}
    write_graph_outputs(gen, out_dir, cfg, table)
    return gen, table


def score_file(path: str | Path, train_smiles: Sequence[str] | None = None) -> dict:
    """Graph metrics (`molecule_metrics`) of a file's molecules with their bonds as written:
    .sdf/.sd/.mol records are sanitised as read (an unreadable record counts as invalid); any
    other file is one SMILES per line (an unparsable SMILES counts as invalid)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    path = check_molecule_file(path)
    if path.suffix.lower() in (".sdf", ".sd", ".mol"):
        mols = [sanitized(Chem.RemoveHs(m, sanitize=False)) if m is not None else None
                for m in Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)]
    else:
        lines = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if lines and lines[0].lower() == "smiles":
            lines = lines[1:]
        mols = [Chem.MolFromSmiles(s) for s in lines]
    if not mols:
        raise MolInputError(f"{path}: empty file, no molecules")
    return molecule_metrics(mols, train_smiles)
