"""Sample molecules, turn them into RDKit molecules and files, score them.

The lab-pipeline entry points behind `python -m recipes.mol_generate`:
`generate(model, n)` -> Generation; `write_outputs(gen, out_dir)`; `shipped_checkpoint()`.
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sciffusion.core.atomic import atomic_write_text

from .build import mol_to_smiles, split_batch, to_rdkit, write_grid, write_sdf
from .diffusion import MolDiffusion
from .metrics import MolMetrics, evaluate

CHECKPOINTS = Path(__file__).parent / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINTS / "qm9_small.pt"

# EDM (Hoogeboom et al. 2022), Table 1, QM9 with hydrogens, as published.
EDM_PUBLISHED = {"atom_stability": 0.987, "molecule_stability": 0.820, "validity": 0.919,
                 "valid_and_unique": 0.907}


class SamplingRate:
    """`throughput` of a generated set that has `mols` (one entry per molecule) and `seconds`."""

    mols: list
    seconds: float

    @property
    def throughput(self) -> float:
        """Molecules per second of sampling (network and sampler only)."""
        return len(self.mols) / max(self.seconds, 1e-9)


@dataclass
class Generation(SamplingRate):
    """Generated molecules: per molecule (symbols, positions, charges), RDKit Mols (None if the
    EDM-bond molecule does not sanitise), per-molecule records, metrics and timing."""

    molecules: list
    mols: list
    records: list
    metrics: MolMetrics
    seconds: float
    extra: dict = field(default_factory=dict)


def shipped_checkpoint_info(path: str | Path = DEFAULT_CHECKPOINT) -> dict:
    """The JSON card beside a checkpoint (training details, QM9 ceiling), or {} if none."""
    card = Path(path).with_suffix(".json")
    return json.loads(card.read_text()) if card.exists() else {}


def training_smiles(path: str | Path = DEFAULT_CHECKPOINT) -> list[str] | None:
    """The training set's SMILES shipped beside a checkpoint (<name>_train_smiles.txt.gz), or None."""
    f = Path(path).with_name(Path(path).stem + "_train_smiles.txt.gz")
    if not f.exists():
        return None
    with gzip.open(f, "rt") as fh:
        return [line.strip() for line in fh if line.strip()]


def generate(model: MolDiffusion, n: int = 100, steps: int = 500, method: str | None = "ddpm", seed: int = 0,
             device: str = "cpu", sizes: torch.Tensor | None = None, batch_size: int = 250,
             train_smiles: list[str] | None = None, progress: bool = False) -> Generation:
    """Sample `n` molecules (sizes from the training histogram unless given), in batches of
    `batch_size` molecules of mixed sizes, then build and score them (metrics.py)."""
    gen = torch.Generator(device=device).manual_seed(seed)  # draws where the model runs
    model = model.to(device).eval()
    if sizes is None:
        sizes = model.sample_sizes(n, generator=gen)
    molecules, seconds = [], 0.0
    for start in range(0, len(sizes), batch_size):
        t0 = time.perf_counter()
        out = model.sample(sizes[start: start + batch_size], steps=steps, method=method, generator=gen,
                           device=device, progress=progress)
        seconds += time.perf_counter() - t0
        molecules.extend(split_batch(out, model.cfg.elements))
    metrics, mols, records = evaluate([(s, p) for s, p, _ in molecules], train_smiles, return_mols=True)
    return Generation(molecules, mols, records, metrics, seconds)


def write_outputs(gen: Generation, out_dir: str | Path, config: dict, table: str = "") -> dict[str, Path]:
    """molecules.sdf (every sample, 3-D, with its flags; invalid ones unsanitised), smiles.txt (valid
    ones: SMILES and name), grid.png, metrics.json, config.json (and table.md if given)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mols, props = [], []
    for k, ((sym, pos, _), mol, rec) in enumerate(zip(gen.molecules, gen.mols, gen.records)):
        m = mol if mol is not None else to_rdkit(sym, pos, sanitize=False)
        if m is not None:
            m.SetProp("_Name", f"mol_{k}")
        mols.append(m)
        props.append({"valid": int(rec["valid"]), "stable": int(rec["stable"]),
                      "connected": int(rec["connected"]), "smiles": rec["smiles"]})
    files = {"sdf": write_sdf(mols, out / "molecules.sdf", props)}
    lines = [f"{mol_to_smiles(m)} mol_{k}" for k, m in enumerate(gen.mols) if m is not None]
    metrics = {"sciffusion": gen.metrics.to_dict(), "sampling_seconds": gen.seconds,
               "molecules_per_second": gen.throughput, **gen.extra}
    return write_run_files(out, files, lines, gen.mols, metrics, config, table)


def write_run_files(out: Path, files: dict[str, Path], smiles_lines: list[str], mols: list, metrics: dict,
                    config: dict, table: str | None = None) -> dict[str, Path]:
    """Beside the SDF already in `files`: smiles.txt, grid.png, metrics.json, config.json and
    table.md (when `table`), each written atomically; returns `files` with their paths added."""
    files["smiles"] = atomic_write_text(out / "smiles.txt", "".join(s + "\n" for s in smiles_lines))
    files["grid"] = write_grid(mols, out / "grid.png")
    files["metrics"] = atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    files["config"] = atomic_write_text(out / "config.json", json.dumps(config, indent=2))
    if table:
        files["table"] = atomic_write_text(out / "table.md", table + "\n")
    return files


def format_table(rows: dict[str, dict | None]) -> str:
    """A markdown table of metrics (fractions shown as %); None or missing entries as '-'."""
    cols = [("atom_stability", "atom stable"), ("molecule_stability", "mol stable"),
            ("validity", "valid"), ("valid_and_unique", "valid & unique"),
            ("connectivity", "connected"), ("novelty", "novel")]
    head = "| | " + " | ".join(c[1] for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for name, vals in rows.items():
        cells = []
        for key, _ in cols:
            v = (vals or {}).get(key)
            cells.append("-" if v is None else f"{100 * v:.1f} %")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
