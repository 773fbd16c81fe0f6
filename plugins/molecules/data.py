"""Molecules in, PyG `Data` out: QM9 (from the `qm9pack` CSV files), SMILES, SDF and XYZ.

Every molecule becomes a `torch_geometric.data.Data` with
    pos     (n, 3) float32, Angstrom
    z       (n,)   long, index into the element set (H, C, N, O, F by default)
    x       (n, K) float32, one-hot of `z`
    charges (n,)   float32, formal charges
    smiles  str    (canonical SMILES where known)

Reading user files never loses a whole batch to one bad record: each bad record is reported
(file, line or record number, reason) and skipped and counted, or raised at once in strict mode.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from sciffusion.core.train.checkpoint import CheckpointError, atomic_torch_save, read_torch_file

ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")
CACHE_VERSION = 1


class MolInputError(ValueError):
    """A molecule or file that cannot be used; the message names the file and record."""


def check_molecule_file(path: str | os.PathLike) -> Path:
    """`path` as a `Path` when it names a non-empty file; otherwise a `MolInputError` naming it."""
    path = Path(path)
    if not path.exists():
        raise MolInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MolInputError(f"{path}: empty file, no molecules")
    return path


@dataclass
class LoadReport:
    """Molecules read from a source, plus what was skipped and why (one line per record)."""

    data: list[Data] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.errors)


def make_data(symbols: Sequence[str], pos, charges=None, elements: Sequence[str] = ELEMENTS,
              max_atoms: int | None = None, smiles: str = "", where: str = "molecule") -> Data:
    """Build a `Data` from element symbols and positions (n, 3); raise MolInputError on bad input."""
    index = {e: i for i, e in enumerate(elements)}
    unknown = sorted({s for s in symbols if s not in index})
    if unknown:
        raise MolInputError(f"{where}: element(s) {unknown} outside the model's set {list(elements)}")
    n = len(symbols)
    if n == 0:
        raise MolInputError(f"{where}: no atoms")
    if max_atoms is not None and n > max_atoms:
        raise MolInputError(f"{where}: {n} atoms, more than the model allows ({max_atoms})")
    pos = torch.as_tensor(np.asarray(pos, dtype=np.float32)).reshape(n, 3)
    if not torch.isfinite(pos).all():
        raise MolInputError(f"{where}: non-finite coordinates")
    z = torch.tensor([index[s] for s in symbols], dtype=torch.long)
    q = torch.zeros(n) if charges is None else torch.as_tensor(charges, dtype=torch.float32)
    x = torch.nn.functional.one_hot(z, len(elements)).float()
    return Data(pos=pos, z=z, x=x, charges=q, smiles=smiles, num_nodes=n)


# ----------------------------------------------------------------------------- QM9

def qm9_dir() -> Path:
    """Folder of the QM9 CSV files shipped by the `qm9pack` wheel (the package itself does not import)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise MolInputError("package 'qm9pack' is not installed: pip install 'sciffusion[molecules]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (folder / "qm9_part1.csv").exists():
        raise MolInputError(f"QM9 CSV files not found in {folder}")
    return folder


def _cache_path() -> Path:
    root = Path(os.environ.get("SCIFFUSION_CACHE", Path.home() / ".cache" / "sciffusion"))
    return root / f"qm9_v{CACHE_VERSION}.pt"


_BARE_DOT = re.compile(r"\.(?=[,\]])")


def _coords(text: str) -> list:
    """Parse the CSV's coordinate list; it writes floats such as `0.` that JSON rejects."""
    return json.loads(_BARE_DOT.sub(".0", text))


def _parse_qm9() -> dict:
    import pandas as pd

    cols = ["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang"]
    frames = [pd.read_csv(qm9_dir() / f"qm9_part{i}.csv", usecols=cols) for i in (1, 2, 3)]
    df = pd.concat(frames, ignore_index=True).sort_values("Index")
    sym_all, pos_all = [], []
    for el, xyz in zip(df["Elements"].tolist(), df["XYZ_Ang"].tolist()):
        sym_all.extend(json.loads(el.replace("'", '"')))
        pos_all.extend(_coords(xyz))
    return {
        "index": torch.tensor(df["Index"].to_numpy(), dtype=torch.long),
        "n_atoms": torch.tensor(df["N_atoms"].to_numpy(), dtype=torch.long),
        "symbols": sym_all,
        "pos": torch.tensor(pos_all, dtype=torch.float32),
        "smiles": df["SMILES"].tolist(),
    }


def load_qm9_arrays(cache: bool = True) -> dict:
    """All of QM9 as packed arrays: index, n_atoms, symbols, pos (sum n, 3), smiles (GDB, as shipped).

    Parsed once from the CSV files (about 20 s) and cached under $SCIFFUSION_CACHE (default
    ~/.cache/sciffusion); the cache is written atomically.
    """
    path = _cache_path()
    if cache and path.exists():
        try:
            return read_torch_file(path, "QM9 cache")
        except CheckpointError as err:
            warnings.warn(f"{err}; parsing the CSV files again", stacklevel=2)
    arrays = _parse_qm9()
    if cache:
        atomic_torch_save(arrays, path)
    return arrays


class PackedMolecules(torch.utils.data.Dataset):
    """Molecules stored as packed tensors; item i is a `Data` (see module docstring)."""

    def __init__(self, z: torch.Tensor, pos: torch.Tensor, n_atoms: torch.Tensor,
                 smiles: Sequence[str], elements: Sequence[str] = ELEMENTS,
                 charges: torch.Tensor | None = None):
        self.z, self.pos, self.n_atoms = z, pos, n_atoms
        self.charges = torch.zeros(len(z)) if charges is None else charges
        self.smiles = list(smiles)
        self.elements = tuple(elements)
        self.ptr = torch.cat([torch.zeros(1, dtype=torch.long), n_atoms.cumsum(0)])

    def __len__(self) -> int:
        return len(self.n_atoms)

    def __getitem__(self, i: int) -> Data:
        a, b = int(self.ptr[i]), int(self.ptr[i + 1])
        z = self.z[a:b]
        return Data(pos=self.pos[a:b], z=z, x=torch.nn.functional.one_hot(z, len(self.elements)).float(),
                    charges=self.charges[a:b], smiles=self.smiles[i], num_nodes=b - a)

    def subset(self, idx: Iterable[int]) -> PackedMolecules:
        """A new PackedMolecules holding molecules `idx` (in that order)."""
        idx = torch.as_tensor(list(idx), dtype=torch.long)
        parts = [torch.arange(int(self.ptr[i]), int(self.ptr[i + 1])) for i in idx.tolist()]
        atoms = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        return PackedMolecules(self.z[atoms], self.pos[atoms], self.n_atoms[idx],
                               [self.smiles[i] for i in idx.tolist()], self.elements, self.charges[atoms])

    def size_histogram(self, max_atoms: int | None = None) -> torch.Tensor:
        """Counts of molecules by number of atoms, index = n atoms."""
        m = int(self.n_atoms.max()) if max_atoms is None else max_atoms
        return torch.bincount(self.n_atoms, minlength=m + 1).float()


def load_qm9(elements: Sequence[str] = ELEMENTS, max_atoms: int | None = None,
             limit: int | None = None, cache: bool = True) -> PackedMolecules:
    """QM9 (130,831 molecules, DFT geometries) as a PackedMolecules.

    Molecules with an element outside `elements`, or more than `max_atoms` atoms, are dropped.
    `limit` keeps the first `limit` molecules by QM9 index (for quick tests).
    """
    arr = load_qm9_arrays(cache=cache) if limit is None or _cache_path().exists() else None
    if arr is None:  # a quick test read: parse only the first CSV part
        import pandas as pd

        df = pd.read_csv(qm9_dir() / "qm9_part1.csv", nrows=limit,
                         usecols=["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang"])
        syms, pos = [], []
        for el, xyz in zip(df["Elements"], df["XYZ_Ang"]):
            syms.extend(json.loads(el.replace("'", '"')))
            pos.extend(_coords(xyz))
        arr = {"n_atoms": torch.tensor(df["N_atoms"].to_numpy()), "symbols": syms,
               "pos": torch.tensor(pos, dtype=torch.float32), "smiles": df["SMILES"].tolist()}
    n_atoms = arr["n_atoms"]
    if limit is not None:
        n_atoms = n_atoms[:limit]
    index = {e: i for i, e in enumerate(elements)}
    n_total = int(n_atoms.sum())
    z = torch.tensor([index.get(s, -1) for s in arr["symbols"][:n_total]], dtype=torch.long)
    ds = PackedMolecules(z.clamp(min=0), arr["pos"][:n_total], n_atoms, arr["smiles"][: len(n_atoms)], elements)
    bad = torch.zeros(len(n_atoms), dtype=torch.bool)
    mol_of_atom = torch.repeat_interleave(torch.arange(len(n_atoms)), n_atoms)
    bad[mol_of_atom[z < 0]] = True
    if max_atoms is not None:
        bad |= n_atoms > max_atoms
    keep = torch.nonzero(~bad).flatten()
    return ds if len(keep) == len(n_atoms) else ds.subset(keep)


def split_indices(n: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Reproducible train/val/test split of range(n) by a seeded permutation."""
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a = round(fractions[0] * n)
    b = a + round(fractions[1] * n)
    return {"train": perm[:a], "val": perm[a:b], "test": perm[b:]}


# ----------------------------------------------------------------------------- user files

def from_rdkit(mol, elements: Sequence[str] = ELEMENTS, max_atoms: int | None = None,
               where: str = "molecule", conf_id: int = -1) -> Data:
    """An RDKit Mol with a 3-D conformer (hydrogens explicit) to `Data`."""
    from rdkit import Chem

    if mol.GetNumConformers() == 0 or not mol.GetConformer(conf_id).Is3D():
        raise MolInputError(f"{where}: no 3-D coordinates")
    pos = mol.GetConformer(conf_id).GetPositions()
    if np.allclose(pos[:, 2], 0.0) and mol.GetNumAtoms() > 3:
        raise MolInputError(f"{where}: no 3-D coordinates (all z = 0)")
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    try:
        smi = Chem.MolToSmiles(Chem.RemoveHs(mol))
    except Exception:
        smi = ""
    return make_data(symbols, pos, charges, elements, max_atoms, smi, where)


def _finish(report: LoadReport, path: Path, strict: bool, n_records: int) -> LoadReport:
    if n_records == 0:
        raise MolInputError(f"{path}: empty file, no molecules")
    if strict and report.errors:
        raise MolInputError(report.errors[0])
    return report


def read_smiles(path: str | Path, elements: Sequence[str] = ELEMENTS, max_atoms: int | None = None,
                strict: bool = False, seed: int = 0) -> LoadReport:
    """One SMILES per line (optionally followed by a name; '#' lines and a 'smiles' header skipped).

    Hydrogens are added and one 3-D conformer embedded with RDKit's ETKDG (v3, seeded), then
    relaxed with MMFF where parameters exist.
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")
    path = Path(path)
    report, n = LoadReport(), 0
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#") or (lineno == 1 and text.lower().startswith("smiles")):
            continue
        n += 1
        smi = text.split()[0].split(",")[0]
        where = f"{path}:{lineno} ({smi!r})"

        def embed(smi: str = smi, where: str = where) -> Data:
            mol = Chem.MolFromSmiles(smi)
            if mol is None:
                raise MolInputError(f"{where}: RDKit cannot parse this SMILES")
            mol = Chem.AddHs(mol)
            params = AllChem.ETKDGv3()
            params.randomSeed = seed
            if AllChem.EmbedMolecule(mol, params) != 0:
                raise MolInputError(f"{where}: ETKDG could not embed a 3-D conformer")
            if AllChem.MMFFHasAllMoleculeParams(mol):
                AllChem.MMFFOptimizeMolecule(mol)
            return from_rdkit(mol, elements, max_atoms, where)

        _add_record(report, strict, embed)
    return _finish(report, path, strict, n)


def _add_record(report: LoadReport, strict: bool, read: Callable[[], Data]) -> None:
    """Append `read()` to `report`; a `MolInputError` is recorded instead (raised when `strict`)."""
    try:
        report.data.append(read())
    except MolInputError as err:
        if strict:
            raise
        report.errors.append(str(err))


def read_sdf(path: str | Path, elements: Sequence[str] = ELEMENTS, max_atoms: int | None = None,
             strict: bool = False) -> LoadReport:
    """Every record of an SDF file with its 3-D coordinates (hydrogens kept as written)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    path = Path(path)
    if path.stat().st_size == 0:
        raise MolInputError(f"{path}: empty file, no molecules")
    report, n = LoadReport(), 0
    for i, mol in enumerate(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=True), 1):
        n += 1
        where = f"{path}: record {i}"

        def convert(mol=mol, where: str = where) -> Data:
            if mol is None:
                raise MolInputError(f"{where}: RDKit cannot read this record")
            if mol.HasProp("_Name") and mol.GetProp("_Name").strip():
                where += f" ({mol.GetProp('_Name').strip()})"
            return from_rdkit(mol, elements, max_atoms, where)

        _add_record(report, strict, convert)
    return _finish(report, path, strict, n)


def read_xyz(path: str | Path, elements: Sequence[str] = ELEMENTS, max_atoms: int | None = None,
             strict: bool = False) -> LoadReport:
    """A (multi-frame) XYZ file: atom count, comment line, then `symbol x y z` lines per frame."""
    path = Path(path)
    lines = path.read_text().splitlines()
    report, n, i = LoadReport(), 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        n += 1
        where = f"{path}:{i + 1} (frame {n})"
        try:
            try:
                count = int(lines[i].split()[0])
            except ValueError:
                raise MolInputError(f"{where}: expected an atom count, found {lines[i]!r}") from None
            body = lines[i + 2: i + 2 + count]
            i += 2 + count
            if len(body) < count:
                raise MolInputError(f"{where}: {count} atoms announced, {len(body)} found")
            rows = [b.split() for b in body]
            if any(len(r) < 4 for r in rows):
                raise MolInputError(f"{where}: an atom line lacks x y z")
            symbols = [r[0].capitalize() for r in rows]
            pos = [[float(v) for v in r[1:4]] for r in rows]
            report.data.append(make_data(symbols, pos, None, elements, max_atoms, "", where))
        except MolInputError as err:
            if strict:
                raise
            report.errors.append(str(err))
    return _finish(report, path, strict, n)


def read_molecules(path: str | Path, elements: Sequence[str] = ELEMENTS, max_atoms: int | None = None,
                   strict: bool = False, seed: int = 0) -> LoadReport:
    """Dispatch on the suffix: .sdf/.mol -> SDF, .xyz -> XYZ, anything else -> one SMILES a line."""
    path = Path(path)
    if not path.exists():
        raise MolInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MolInputError(f"{path}: empty file, no molecules")
    suffix = path.suffix.lower()
    if suffix in (".sdf", ".mol", ".sd"):
        return read_sdf(path, elements, max_atoms, strict)
    if suffix == ".xyz":
        return read_xyz(path, elements, max_atoms, strict)
    return read_smiles(path, elements, max_atoms, strict, seed)


def pack(data: Sequence[Data], elements: Sequence[str] = ELEMENTS) -> PackedMolecules:
    """A list of `Data` (from the readers) as a PackedMolecules for training."""
    if not data:
        raise MolInputError("no molecules to pack")
    return PackedMolecules(torch.cat([d.z for d in data]), torch.cat([d.pos for d in data]),
                           torch.tensor([d.num_nodes for d in data]), [d.smiles for d in data],
                           elements, torch.cat([d.charges for d in data]))
