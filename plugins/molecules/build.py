"""From point cloud to molecule: bond inference, RDKit sanitisation, SDF/SMILES/picture output.

Bond orders follow EDM (Hoogeboom et al. 2022, following its `bond_analyze`): a pair of atoms at
distance d (pm) is bonded with order

    3 if d < r3(a, b) + 3,   else 2 if d < r2(a, b) + 5,   else 1 if d < r1(a, b) + 10,   else 0

with r1, r2, r3 the reference single, double and triple bond lengths of the element pair (the
tables below, standard average bond lengths in pm). Pairs outside the tables are single-bonded when
d < (R_cov(a) + R_cov(b)) * 100 + 10 (RDKit covalent radii). Atom stability (metrics.py) counts
these orders; the RDKit molecule uses them too (orders="edm"), or keeps only the connectivity and
lets RDKit's xyz2mol assign orders and charges (orders="rdkit", `rdDetermineBonds`), which also
perceives aromatic rings that a distance table cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sciffusion.core.atomic import atomic_write

# Reference bond lengths in pm (symmetric; only one triangle listed).
_SINGLE = {
    ("H", "H"): 74, ("H", "C"): 109, ("H", "N"): 101, ("H", "O"): 96, ("H", "F"): 92,
    ("C", "C"): 154, ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135,
    ("N", "N"): 145, ("N", "O"): 140, ("N", "F"): 136,
    ("O", "O"): 148, ("O", "F"): 142, ("F", "F"): 142,
}
_DOUBLE = {("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120, ("N", "N"): 125, ("N", "O"): 121,
           ("O", "O"): 121}
_TRIPLE = {("C", "C"): 120, ("C", "N"): 116, ("C", "O"): 113, ("N", "N"): 110}
MARGINS_PM = (10, 5, 3)

# Valences counted as stable (EDM's convention for QM9: neutral atoms only).
VALENCE = {"H": (1,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "Cl": (1,), "Br": (1,),
           "I": (1,), "S": (2, 4, 6), "P": (3, 5), "B": (3,), "Si": (4,)}


def _ref(table: dict, a: str, b: str) -> float | None:
    return table.get((a, b), table.get((b, a)))


def _single_ref(a: str, b: str) -> float:
    r = _ref(_SINGLE, a, b)
    if r is not None:
        return r
    from rdkit import Chem

    pt = Chem.GetPeriodicTable()
    return 100.0 * (pt.GetRcovalent(a) + pt.GetRcovalent(b))


def bond_order(a: str, b: str, distance_angstrom: float) -> int:
    """EDM bond order (0-3) of elements a, b at the given distance (Angstrom)."""
    d = 100.0 * distance_angstrom
    m1, m2, m3 = MARGINS_PM
    if d >= _single_ref(a, b) + m1:
        return 0
    r2 = _ref(_DOUBLE, a, b)
    if r2 is None or d >= r2 + m2:
        return 1
    r3 = _ref(_TRIPLE, a, b)
    if r3 is None or d >= r3 + m3:
        return 2
    return 3


def bond_matrix(symbols: Sequence[str], pos) -> np.ndarray:
    """Symmetric (n, n) int matrix of EDM bond orders for one molecule (positions in Angstrom)."""
    pos = np.asarray(pos, dtype=np.float64)
    n = len(symbols)
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    orders = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            orders[i, j] = orders[j, i] = bond_order(symbols[i], symbols[j], dist[i, j])
    return orders


def to_rdkit(symbols: Sequence[str], pos, charges: Sequence[int] | None = None, orders: str = "edm",
             sanitize: bool = True):
    """Build an RDKit Mol (explicit H, one 3-D conformer) from elements and positions.

    orders="edm": EDM bond orders from distances; orders="rdkit": the same connectivity, bond orders
    and formal charges assigned by RDKit's `DetermineBondOrders` (xyz2mol). Returns the Mol, or
    None when sanitisation fails (sanitize=True).
    """
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    pos = np.asarray(pos, dtype=np.float64)
    mat = bond_matrix(symbols, pos)
    rw = Chem.RWMol()
    for k, s in enumerate(symbols):
        atom = Chem.Atom(s)
        if charges is not None and orders == "edm":
            atom.SetFormalCharge(int(charges[k]))
        atom.SetNoImplicit(True)
        rw.AddAtom(atom)
    kinds = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    for i, j in zip(*np.nonzero(np.triu(mat))):
        rw.AddBond(int(i), int(j), kinds[int(mat[i, j])] if orders == "edm" else Chem.BondType.SINGLE)
    conf = Chem.Conformer(len(symbols))
    for k in range(len(symbols)):
        conf.SetAtomPosition(k, Point3D(*pos[k]))
    conf.Set3D(True)
    mol = rw.GetMol()
    mol.AddConformer(conf, assignId=True)
    if orders == "rdkit":
        total = 0 if charges is None else int(np.sum(charges))
        for atom in mol.GetAtoms():
            atom.SetNoImplicit(False)
        try:
            rdDetermineBonds.DetermineBondOrders(mol, charge=total, embedChiral=False, maxIterations=10000)
        except Exception:
            return None
    elif orders != "edm":
        raise ValueError(f"orders must be 'edm' or 'rdkit', got {orders!r}")
    if sanitize:
        try:
            Chem.SanitizeMol(mol)
        except Exception:
            return None
    return mol


def mol_to_smiles(mol, largest_fragment: bool = False) -> str | None:
    """Canonical SMILES without hydrogens or stereo (as in EDM's uniqueness/novelty), or None."""
    from rdkit import Chem

    if mol is None:
        return None
    try:
        m = Chem.RemoveHs(mol)
        if largest_fragment:
            frags = Chem.GetMolFrags(m, asMols=True, sanitizeFrags=False)
            m = max(frags, key=lambda f: f.GetNumAtoms())
        return Chem.MolToSmiles(m, isomericSmiles=False)
    except Exception:
        return None


def canonical_smiles(smiles: str) -> str | None:
    """RDKit canonical SMILES without stereo of a SMILES string, or None if RDKit rejects it."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol, isomericSmiles=False)


def split_batch(samples: dict, elements: Sequence[str]) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
    """Split sampler output (pos, z, charges, batch) into per-molecule (symbols, pos, charges)."""
    out = []
    sizes = torch.bincount(samples["batch"]).tolist()
    start = 0
    for n in sizes:
        sl = slice(start, start + n)
        out.append(([elements[int(k)] for k in samples["z"][sl]], samples["pos"][sl].numpy(),
                    samples["charges"][sl].numpy()))
        start += n
    return out


def write_sdf(mols: Sequence, path: str | Path, props: Sequence[dict] | None = None) -> Path:
    """Write molecules (RDKit Mols; None entries are skipped) to an SDF file atomically."""
    from rdkit import Chem

    path = Path(path)
    def write(tmp: Path) -> None:
        writer = Chem.SDWriter(str(tmp))
        for k, mol in enumerate(mols):
            if mol is None:
                continue
            for key, value in (props[k] if props else {}).items():
                mol.SetProp(key, str(value))
            writer.write(mol)
        writer.close()

    return atomic_write(path, write)


def write_grid(mols: Sequence, path: str | Path, per_row: int = 6, max_mols: int = 36,
               legends: Sequence[str] | None = None) -> Path:
    """A PNG grid of 2-D depictions (hydrogens removed) of up to `max_mols` molecules."""
    from rdkit import Chem
    from rdkit.Chem import AllChem, Draw

    path = Path(path)
    picks, labels = [], []
    for k, mol in enumerate(mols):
        if mol is None:
            continue
        m = Chem.RemoveHs(mol)
        AllChem.Compute2DCoords(m)
        picks.append(m)
        labels.append(legends[k] if legends else Chem.MolToSmiles(m))
        if len(picks) >= max_mols:
            break
    if not picks:
        picks, labels = [Chem.MolFromSmiles("")], ["no valid molecule"]
    img = Draw.MolsToGridImage(picks, molsPerRow=per_row, subImgSize=(220, 220), legends=labels)
    return atomic_write(path, lambda tmp: img.save(str(tmp)))
