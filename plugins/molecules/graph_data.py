"""Molecular graphs with implicit hydrogens: SMILES <-> PyG `Data` <-> dense blocks <-> RDKit `Mol`.

A molecule of n heavy atoms is a `torch_geometric.data.Data` with
    x          (n,)    long, index into ATOM_TYPES (element with formal charge)
    edge_index (2, 2m) long, both directions of each of the m bonds
    edge_attr  (2m,)   long, index into BOND_TYPES (1 single, 2 double, 3 triple; 0 is "no bond")
    y          (1, P)  float, graph properties computed with RDKit (PROPERTIES)
    smiles     str     canonical SMILES

Bonds are kekulised (no aromatic class): the valence of an atom is then the plain sum of the
orders of its bonds, a local quantity the denoiser can see, whereas an aromatic bond is only
valid if the whole ring has a Kekule structure, a global constraint a local model often breaks.
A batch becomes dense blocks through `to_dense_batch` / `to_dense_adj`: node types (B, N),
edge types (B, N, N), node mask (B, N), with N = max_atoms (9 for QM9).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_dense_adj, to_dense_batch

from sciffusion.core.train.checkpoint import CheckpointError, atomic_torch_save, read_torch_file

from .data import MolInputError, load_qm9_arrays, split_indices

ATOM_TYPES: tuple[str, ...] = ("C", "N", "O", "F", "N+", "O-")
BOND_TYPES: tuple[str, ...] = ("none", "single", "double", "triple")
BOND_ORDER: tuple[int, ...] = (0, 1, 2, 3)
GRAPH_CACHE_VERSION = 1


def _logp(mol) -> float:
    from rdkit.Chem import Crippen

    return float(Crippen.MolLogP(mol))


def _qed(mol) -> float:
    from rdkit.Chem import QED

    return float(QED.qed(mol))


# RDKit-computed graph properties a model can be conditioned on (computable for any generated graph).
PROPERTIES: dict[str, Callable] = {"logp": _logp, "qed": _qed}


def atom_label(symbol: str, charge: int) -> str:
    """'N' for a neutral nitrogen, 'N+' / 'O-' for charged atoms (the vocabulary's spelling)."""
    return symbol + ("" if charge == 0 else ("+" if charge > 0 else "-") * abs(charge))


def mol_to_graph(mol, atom_types: Sequence[str] = ATOM_TYPES, max_atoms: int = 9,
                 where: str = "molecule") -> tuple[list[int], list[tuple[int, int, int]]]:
    """An RDKit Mol (hydrogens implicit) as (atom type indices, [(i, j, bond type)]) with kekulised bonds.

    Raises MolInputError naming the atom type, bond type or size outside the model's vocabulary.
    """
    from rdkit import Chem

    mol = Chem.RemoveHs(mol)
    Chem.Kekulize(mol, clearAromaticFlags=True)
    n = mol.GetNumAtoms()
    if n == 0:
        raise MolInputError(f"{where}: no heavy atoms")
    if n > max_atoms:
        raise MolInputError(f"{where}: {n} heavy atoms, more than the model allows ({max_atoms})")
    index = {a: i for i, a in enumerate(atom_types)}
    types = []
    for atom in mol.GetAtoms():
        label = atom_label(atom.GetSymbol(), atom.GetFormalCharge())
        if label not in index:
            raise MolInputError(f"{where}: atom type {label} outside the model's set {list(atom_types)}")
        types.append(index[label])
    kinds = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}
    bonds = []
    for b in mol.GetBonds():
        if b.GetBondType() not in kinds:
            raise MolInputError(f"{where}: bond type {b.GetBondType()} outside the model's set {list(BOND_TYPES[1:])}")
        bonds.append((b.GetBeginAtomIdx(), b.GetEndAtomIdx(), kinds[b.GetBondType()]))
    return types, bonds


def graph_to_data(types: Sequence[int], bonds: Sequence[tuple[int, int, int]], props: Sequence[float] = (),
                  smiles: str = "") -> Data:
    """PyG `Data` of one graph (see module docstring); each bond is stored in both directions."""
    if bonds:
        ij = torch.tensor([(i, j) for i, j, _ in bonds], dtype=torch.long).t()
        edge_index = torch.cat([ij, ij.flip(0)], 1)
        kind = torch.tensor([k for _, _, k in bonds], dtype=torch.long)
        edge_attr = torch.cat([kind, kind])
    else:
        edge_index, edge_attr = torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return Data(x=torch.tensor(list(types), dtype=torch.long), edge_index=edge_index, edge_attr=edge_attr,
                y=torch.tensor([list(props)], dtype=torch.float32).reshape(1, -1), smiles=smiles,
                num_nodes=len(types))


@dataclass
class SkipReport:
    """Records that were skipped, by reason: a count and the first example of each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.examples.setdefault(reason, example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        """One line per reason: 'skipped N: reason (e.g. ...)'."""
        return [f"skipped {c}: {r} (e.g. {self.examples[r]})" for r, c in sorted(self.counts.items())]


def _reason(err: MolInputError) -> str:
    text = str(err).split(": ", 1)[-1]
    for key in ("atom type", "bond type", "heavy atoms", "no heavy atoms", "cannot parse"):
        if key in text:
            return {"atom type": "atom type outside the vocabulary", "bond type": "bond type outside the vocabulary",
                    "heavy atoms": "more heavy atoms than the model allows", "no heavy atoms": "no heavy atoms",
                    "cannot parse": "RDKit cannot parse the SMILES"}[key]
    return text


def smiles_to_data(smiles: Sequence[str], atom_types: Sequence[str] = ATOM_TYPES, max_atoms: int = 9,
                   properties: Sequence[str] = ("logp",), source: str = "smiles") -> tuple[list[Data], SkipReport]:
    """Parse SMILES into graphs; unusable ones are skipped and counted by reason (never raised)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    out, report = [], SkipReport()
    for k, smi in enumerate(smiles):
        where = f"{source}:{k + 1} ({smi!r})"
        try:
            mol = Chem.MolFromSmiles(smi)
            if mol is None:
                raise MolInputError(f"{where}: RDKit cannot parse this SMILES")
            types, bonds = mol_to_graph(mol, atom_types, max_atoms, where)
            props = [PROPERTIES[p](mol) for p in properties]
            out.append(graph_to_data(types, bonds, props, Chem.MolToSmiles(mol)))
        except MolInputError as err:
            report.add(_reason(err), where)
    return out, report


def read_smiles_file(path: str | Path, **kw) -> tuple[list[Data], SkipReport]:
    """One SMILES per line (first token; '#' lines and a 'smiles' header skipped) as graphs."""
    path = Path(path)
    if not path.exists():
        raise MolInputError(f"{path}: no such file")
    smiles = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#") or (lineno == 1 and text.lower().startswith("smiles")):
            continue
        smiles.append(text.split()[0].split(",")[0])
    if not smiles:
        raise MolInputError(f"{path}: empty file, no molecules")
    return smiles_to_data(smiles, source=str(path), **kw)


def _graph_cache() -> Path:
    root = Path(os.environ.get("SCIFFUSION_CACHE", Path.home() / ".cache" / "sciffusion"))
    return root / f"qm9_graphs_v{GRAPH_CACHE_VERSION}.pt"


QM9_PROPERTIES: tuple[str, ...] = ("logp",)


def load_qm9_graphs(cache: bool = True, limit: int | None = None) -> tuple[list[Data], SkipReport]:
    """QM9 (130,831 molecules) as implicit-hydrogen graphs with RDKit logP (QM9_PROPERTIES), in QM9 index order.

    Parsed from the SMILES of the `qm9pack` CSV files (about a minute) and cached under
    $SCIFFUSION_CACHE; molecules outside ATOM_TYPES (C-, N- atoms) are skipped and counted.
    """
    path = _graph_cache()
    if cache and limit is None and path.exists():
        try:
            blob = read_torch_file(path, "QM9 graph cache")
            return unpack_graphs(blob), SkipReport(blob["skip_counts"], blob["skip_examples"])
        except (CheckpointError, KeyError) as err:
            warnings.warn(f"{path}: unusable cache ({err}); parsing QM9 again", stacklevel=2)
    smiles = load_qm9_arrays()["smiles"] if limit is None else _first_qm9_smiles(limit)
    data, report = smiles_to_data(smiles, properties=QM9_PROPERTIES, source="qm9")
    if cache and limit is None:
        atomic_torch_save({**pack_graphs(data), "skip_counts": report.counts, "skip_examples": report.examples}, path)
    return data, report


def _first_qm9_smiles(limit: int) -> list[str]:
    import pandas as pd

    from .data import qm9_dir

    return pd.read_csv(qm9_dir() / "qm9_part1.csv", nrows=limit, usecols=["SMILES"])["SMILES"].tolist()


def pack_graphs(data: Sequence[Data]) -> dict:
    """Graphs as flat tensors (node types, bonds, sizes, properties) plus their SMILES."""
    return {"x": torch.cat([d.x for d in data]), "n": torch.tensor([d.num_nodes for d in data]),
            "edge_index": torch.cat([d.edge_index for d in data], 1),
            "edge_attr": torch.cat([d.edge_attr for d in data]),
            "m": torch.tensor([d.edge_attr.numel() for d in data]),
            "y": torch.cat([d.y for d in data]), "smiles": [d.smiles for d in data]}


def unpack_graphs(blob: dict) -> list[Data]:
    """Inverse of `pack_graphs`."""
    xs, eis, eas = blob["x"].split(blob["n"].tolist()), blob["edge_index"].split(blob["m"].tolist(), 1), \
        blob["edge_attr"].split(blob["m"].tolist())
    return [Data(x=x, edge_index=ei, edge_attr=ea, y=blob["y"][k: k + 1], smiles=blob["smiles"][k], num_nodes=len(x))
            for k, (x, ei, ea) in enumerate(zip(xs, eis, eas))]


def qm9_graph_split(seed: int = 0) -> dict[str, list[Data]]:
    """The standard random split of the QM9 graphs: 80 / 10 / 10 % train / val / test (seeded)."""
    data, _ = load_qm9_graphs()
    idx = split_indices(len(data), seed=seed)
    return {k: [data[i] for i in v.tolist()] for k, v in idx.items()}


def qm9_graph_split_smiles(name: str, seed: int = 0) -> list[str]:
    """SMILES of one part ("train", "val", "test") of `qm9_graph_split(seed)`: the molecules a graph
    model trained on QM9 did or did not see."""
    parts = _qm9_graph_split_smiles(seed)
    if name not in parts:
        raise ValueError(f"split must be one of {sorted(parts)}, got {name!r}")
    return list(parts[name])


@functools.cache
def _qm9_graph_split_smiles(seed: int) -> dict[str, tuple[str, ...]]:
    """All parts' SMILES, read once per seed (the graph split loads every QM9 graph)."""
    return {k: tuple(d.smiles for d in v) for k, v in qm9_graph_split(seed).items()}


# ----------------------------------------------------------------------------- dense batches
@dataclass
class DenseGraphs:
    """A batch as dense blocks: X (B, N) long, E (B, N, N) long (symmetric, 0 on the diagonal),
    mask (B, N) bool (real nodes), y (B, P) float properties."""

    X: torch.Tensor
    E: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor

    def to(self, device) -> DenseGraphs:
        return DenseGraphs(self.X.to(device), self.E.to(device), self.mask.to(device), self.y.to(device))


def collate_graphs(items: Sequence[Data]) -> Batch:
    """Trainer hook: a list of `Data` to one PyG `Batch`."""
    return Batch.from_data_list(list(items))


def to_dense(batch: Batch, max_atoms: int = 9) -> DenseGraphs:
    """PyG `Batch` -> `DenseGraphs` through `to_dense_batch` and `to_dense_adj`."""
    X, mask = to_dense_batch(batch.x, batch.batch, fill_value=0, max_num_nodes=max_atoms)
    E = to_dense_adj(batch.edge_index, batch.batch, batch.edge_attr, max_num_nodes=max_atoms).long()
    y = batch.y if getattr(batch, "y", None) is not None else torch.zeros(X.shape[0], 0)
    return DenseGraphs(X, E, mask, y.float())


def dense_to_graphs(X: torch.Tensor, E: torch.Tensor, mask: torch.Tensor) -> list[tuple[list[int], list[tuple[int, int, int]]]]:
    """Dense blocks back to (atom types, [(i, j, bond type)]) per graph (upper triangle only)."""
    out = []
    for b in range(X.shape[0]):
        n = int(mask[b].sum())
        e = E[b, :n, :n].triu(1)
        ij = e.nonzero().tolist()
        out.append((X[b, :n].tolist(), [(i, j, int(e[i, j])) for i, j in ij]))
    return out


def graph_to_mol(types: Sequence[int], bonds: Sequence[tuple[int, int, int]], atom_types: Sequence[str] = ATOM_TYPES):
    """An unsanitised RDKit Mol (implicit hydrogens, formal charges from the type) of one graph."""
    from rdkit import Chem

    mol = Chem.RWMol()
    for k in types:
        label = atom_types[k]
        atom = Chem.Atom(label.rstrip("+-"))
        atom.SetFormalCharge(label.count("+") - label.count("-"))
        mol.AddAtom(atom)
    kinds = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    for i, j, k in bonds:
        mol.AddBond(int(i), int(j), kinds[int(k)])
    return mol.GetMol()


def sanitized(mol):
    """The sanitised copy of `mol`, or None if RDKit rejects it (no valence correction is tried)."""
    from rdkit import Chem

    m = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(m)
    except Exception:
        return None
    return m


def size_histogram(data: Sequence[Data], max_atoms: int) -> torch.Tensor:
    """Counts of graphs by number of nodes, index = n (length max_atoms + 1)."""
    return torch.bincount(torch.tensor([d.num_nodes for d in data]), minlength=max_atoms + 1).float()


def class_marginals(data: Sequence[Data], n_atom: int, n_bond: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Data marginals of node types over real nodes and of edge types over real pairs i != j
    (no-bond included): the stationary distributions of the marginal transitions (DiGress)."""
    node = torch.zeros(n_atom, dtype=torch.float64)
    edge = torch.zeros(n_bond, dtype=torch.float64)
    pairs = 0
    for d in data:
        node += torch.bincount(d.x, minlength=n_atom).double()
        edge += torch.bincount(d.edge_attr, minlength=n_bond).double()
        pairs += d.num_nodes * (d.num_nodes - 1)
    edge[0] = pairs - edge[1:].sum()
    return node / node.sum(), edge / edge.sum()


def property_stats(data: Sequence[Data]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each property over `data` (for normalisation)."""
    y = torch.cat([d.y for d in data]).double()
    return y.mean(0), y.std(0).clamp_min(1e-6)


__all__ = [
    "ATOM_TYPES", "BOND_ORDER", "BOND_TYPES", "PROPERTIES", "DenseGraphs", "SkipReport", "class_marginals",
    "collate_graphs", "dense_to_graphs", "graph_to_data", "graph_to_mol", "load_qm9_graphs", "mol_to_graph",
    "property_stats", "qm9_graph_split", "read_smiles_file", "sanitized", "size_histogram", "smiles_to_data",
    "to_dense", "unpack_graphs",
]
