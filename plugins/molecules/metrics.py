"""Quality metrics of generated molecules, defined as in EDM (Hoogeboom et al. 2022).

For a set of N generated molecules (element symbols and 3-D positions):

- atom stability: fraction of all atoms whose sum of EDM bond orders (build.py) equals an allowed
  valence of the element (H 1, C 4, N 3, O 2, F 1);
- molecule stability: fraction of molecules all of whose atoms are stable;
- validity: fraction of molecules that RDKit sanitises, built with EDM bond orders;
- connectivity: fraction of molecules that are valid and form one fragment;
- uniqueness: distinct canonical SMILES (largest fragment, no H, no stereo) among the valid ones,
  divided by the number of valid ones; "valid and unique" = validity * uniqueness;
- novelty: fraction of the distinct valid SMILES that are not in the training set's SMILES.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sciffusion.core.config import JsonConfig

from .build import VALENCE, bond_matrix, canonical_smiles, mol_to_smiles, to_rdkit


@dataclass
class MolMetrics(JsonConfig):
    """Metric values in [0, 1] (n_* are counts)."""

    n_molecules: int
    n_atoms: int
    atom_stability: float
    molecule_stability: float
    validity: float
    connectivity: float
    uniqueness: float
    valid_and_unique: float
    novelty: float | None


def atom_stable(symbols: Sequence[str], pos) -> np.ndarray:
    """Per-atom stability flags: sum_j order_ij in VALENCE[element_i]."""
    valence = bond_matrix(symbols, pos).sum(1)
    return np.array([int(v) in VALENCE.get(s, ()) for s, v in zip(symbols, valence)], dtype=bool)


def evaluate(molecules: Iterable[tuple[Sequence[str], np.ndarray]],
             train_smiles: Iterable[str] | None = None, return_mols: bool = False):
    """Score molecules given as (symbols, positions) pairs; see the module docstring.

    train_smiles: SMILES of the training set (any RDKit-readable form; canonicalised here) for
    novelty, or None. With return_mols, also returns the RDKit Mols (None where invalid) and the
    per-molecule records (stable, valid, connected, smiles).
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    n_mol = n_atoms = n_stable_atoms = n_stable_mol = n_valid = n_connected = 0
    valid_smiles, mols, records = [], [], []
    for symbols, pos in molecules:
        stable = atom_stable(symbols, pos)
        n_mol += 1
        n_atoms += len(symbols)
        n_stable_atoms += int(stable.sum())
        n_stable_mol += bool(stable.all())
        mol = to_rdkit(symbols, pos, orders="edm")
        smi = mol_to_smiles(mol, largest_fragment=True)
        connected = False
        if mol is not None and smi is not None:
            n_valid += 1
            valid_smiles.append(smi)
            connected = len(Chem.GetMolFrags(mol)) == 1
            n_connected += connected
        mols.append(mol)
        records.append({"stable": bool(stable.all()), "valid": smi is not None and mol is not None,
                        "connected": connected, "smiles": smi or ""})
    unique = set(valid_smiles)
    uniq = len(unique) / n_valid if n_valid else 0.0
    novelty = None
    if train_smiles is not None:
        known = {c for c in (canonical_smiles(s) for s in train_smiles) if c}
        novelty = len(unique - known) / len(unique) if unique else 0.0
    res = MolMetrics(n_mol, n_atoms, n_stable_atoms / max(n_atoms, 1), n_stable_mol / max(n_mol, 1),
                     n_valid / max(n_mol, 1), n_connected / max(n_mol, 1), uniq,
                     n_valid / max(n_mol, 1) * uniq, novelty)
    return (res, mols, records) if return_mols else res


def score_sdf(path, train_smiles: Iterable[str] | None = None) -> MolMetrics:
    """Score every record of an SDF file by its elements and 3-D coordinates (its bonds are ignored:
    they are re-inferred from distances, so scores compare with generated molecules)."""
    from rdkit import Chem, RDLogger

    from .data import MolInputError, check_molecule_file

    RDLogger.DisableLog("rdApp.*")
    path = check_molecule_file(path)
    supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
    mols = []
    for i, mol in enumerate(supplier, 1):
        if mol is None or mol.GetNumConformers() == 0:
            raise MolInputError(f"{path}: record {i} has no readable atoms or coordinates")
        mols.append(([a.GetSymbol() for a in mol.GetAtoms()], mol.GetConformer().GetPositions()))
    if not mols:
        raise MolInputError(f"{path}: empty file, no molecules")
    return evaluate(mols, train_smiles)
