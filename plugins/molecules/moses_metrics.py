"""The MOSES metrics (Polykovskiy et al. 2020) that need no network: filters, SNN, Frag, Scaf, IntDiv.

For a set G of valid generated molecules and a reference set R (MOSES' test or scaffold-test split):

- **Filters**: the fraction of G that passes the rules MOSES built its data with: only C, N, O,
  F, S, Cl, Br (and H), no formal charges, no ring of 8 or more atoms, and no match of the
  medicinal-chemistry (MCF) or PAINS SMARTS patterns shipped in the `molsets` package (matched
  on the molecule with explicit hydrogens, as the PAINS patterns name them).
- **SNN**: the mean over m in G of max_{r in R} T(m, r), where T is the Tanimoto similarity of
  Morgan fingerprints (radius 2, 1024 bits).
- **Frag**: the cosine similarity of the count vectors of BRICS fragments of G and R.
- **Scaf**: the cosine similarity of the count vectors of Bemis-Murcko scaffolds with at least two
  rings (molecules with a smaller scaffold do not count), so the scaffold test split, whose
  scaffolds are absent from training, rewards new scaffolds.
- **IntDiv**: 1 - mean_{m != m'} T(m, m') over pairs of G.

The reference side (fingerprints and counts of 176,000 molecules) takes minutes and is cached
under $SCIFFUSION_CACHE.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from sciffusion.core.train.checkpoint import CheckpointError, atomic_torch_save, read_torch_file

from .moses_data import moses_package_dir, moses_smiles

FINGERPRINT_RADIUS, FINGERPRINT_BITS = 2, 1024
MIN_SCAFFOLD_RINGS = 2
ALLOWED_ELEMENTS = frozenset({"C", "N", "O", "F", "S", "Cl", "Br", "H"})
MAX_RING_SIZE = 7
REFERENCE_CACHE_VERSION = 1


@functools.cache
def filter_patterns() -> tuple:
    """The MCF and PAINS SMARTS patterns of the `molsets` package, compiled."""
    from rdkit import Chem

    folder = moses_package_dir() / "metrics"
    with open(folder / "mcf.csv", newline="") as f:
        smarts = [row["smarts"] for row in csv.DictReader(f)]
    with open(folder / "wehi_pains.csv", newline="") as f:
        smarts += [row[0] for row in csv.reader(f) if row]
    return tuple(Chem.MolFromSmarts(s.strip()) for s in smarts)


def passes_filters(mol) -> bool:
    """MOSES' data rules for one sanitised molecule (see the module docstring)."""
    from rdkit import Chem

    if any(len(ring) > MAX_RING_SIZE for ring in mol.GetRingInfo().AtomRings()):
        return False
    if any(a.GetFormalCharge() != 0 or a.GetSymbol() not in ALLOWED_ELEMENTS for a in mol.GetAtoms()):
        return False
    with_h = Chem.AddHs(mol)
    return not any(with_h.HasSubstructMatch(p) for p in filter_patterns())


def fingerprint(mol):
    """Morgan fingerprint, radius 2, 1024 bits (an RDKit ExplicitBitVect)."""
    return _morgan().GetFingerprint(mol)


@functools.cache
def _morgan():
    from rdkit.Chem import rdFingerprintGenerator

    return rdFingerprintGenerator.GetMorganGenerator(radius=FINGERPRINT_RADIUS, fpSize=FINGERPRINT_BITS)


def fragments(mol) -> list[str]:
    """SMILES of the pieces of `mol` cut at its BRICS bonds (cut points marked by dummy atoms)."""
    from rdkit import Chem

    return Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split(".")


def scaffold(mol) -> str | None:
    """The Bemis-Murcko scaffold's SMILES, or None when it has fewer than MIN_SCAFFOLD_RINGS rings."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    core = MurckoScaffold.GetScaffoldForMol(mol)
    if core.GetRingInfo().NumRings() < MIN_SCAFFOLD_RINGS:
        return None
    return Chem.MolToSmiles(core) or None


def cosine_similarity(a: Counter, b: Counter) -> float:
    """sum_k a_k b_k / (norm(a) norm(b)) of two count vectors over the union of their keys (0 if either is empty)."""
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    if norm == 0:
        return 0.0
    return sum(v * b[k] for k, v in a.items() if k in b) / norm


def nearest_similarity(fps: Sequence, reference_fps: Sequence) -> float:
    """SNN: the mean over `fps` of the largest Tanimoto similarity to any of `reference_fps`."""
    from rdkit import DataStructs

    if not fps or not reference_fps:
        raise ValueError("SNN needs at least one generated and one reference fingerprint")
    return sum(max(DataStructs.BulkTanimotoSimilarity(fp, reference_fps)) for fp in fps) / len(fps)


def internal_diversity(fps: Sequence) -> float:
    """IntDiv: 1 - the mean Tanimoto similarity over the pairs of distinct molecules of a set."""
    from rdkit import DataStructs

    n = len(fps)
    if n < 2:
        raise ValueError("internal diversity needs at least two molecules")
    total = sum(sum(DataStructs.BulkTanimotoSimilarity(fps[i], fps[i + 1:])) for i in range(n - 1))
    return 1.0 - total / (n * (n - 1) / 2)


def _mols(smiles: Iterable[str]) -> Iterator:
    """RDKit molecules of the readable SMILES, one at a time (a whole split does not fit in memory as Mols)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return (m for m in map(Chem.MolFromSmiles, smiles) if m is not None)


def set_statistics(mols: Iterable) -> dict:
    """Fingerprints (base64 text), fragment counts and scaffold counts of a set of molecules,
    read in one pass."""
    fingerprints, fragment_counts, scaffold_counts = [], Counter(), Counter()
    for m in mols:
        fingerprints.append(fingerprint(m).ToBase64())
        fragment_counts.update(fragments(m))
        core = scaffold(m)
        if core:
            scaffold_counts[core] += 1
    return {"fingerprints": fingerprints, "fragments": dict(fragment_counts), "scaffolds": dict(scaffold_counts)}


def _reference_cache(split: str) -> Path:
    root = Path(os.environ.get("SCIFFUSION_CACHE", Path.home() / ".cache" / "sciffusion"))
    return root / f"moses_{split}_statistics_v{REFERENCE_CACHE_VERSION}.pt"


def reference_statistics(split: str) -> dict:
    """`set_statistics` of a whole MOSES split ('test' or 'test_scaffolds'), cached after the first call."""
    path = _reference_cache(split)
    if path.exists():
        try:
            return read_torch_file(path, f"MOSES {split} statistics")
        except CheckpointError:
            pass
    stats = set_statistics(_mols(moses_smiles(split)))
    atomic_torch_save(stats, path)
    return stats


def _bitvects(texts: Sequence[str]) -> list:
    """ExplicitBitVects back from the base64 text of `set_statistics`."""
    from rdkit import DataStructs

    out = []
    for text in texts:
        fp = DataStructs.ExplicitBitVect(FINGERPRINT_BITS)
        fp.FromBase64(text)
        out.append(fp)
    return out


def moses_scores(mols: Sequence, reference: dict) -> dict:
    """Filters, IntDiv, and SNN / Frag / Scaf against `reference` (`set_statistics` of a split) of
    sanitised molecules."""
    if not mols:
        raise ValueError("the MOSES metrics need at least one valid molecule")
    own = set_statistics(mols)
    fps = _bitvects(own["fingerprints"])
    return {"filters": sum(map(passes_filters, mols)) / len(mols),
            "intdiv": internal_diversity(fps) if len(fps) > 1 else None,
            "snn": nearest_similarity(fps, _bitvects(reference["fingerprints"])),
            "frag": cosine_similarity(Counter(own["fragments"]), Counter(reference["fragments"])),
            "scaf": cosine_similarity(Counter(own["scaffolds"]), Counter(reference["scaffolds"]))}


__all__ = ["cosine_similarity", "filter_patterns", "fingerprint", "fragments", "internal_diversity",
           "moses_scores", "nearest_similarity", "passes_filters", "reference_statistics", "scaffold",
           "set_statistics"]
