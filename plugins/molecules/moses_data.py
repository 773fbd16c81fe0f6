"""The MOSES benchmark data (Polykovskiy et al. 2020) as implicit-hydrogen graphs.

The `molsets` package ships the data set: 1,584,663 training molecules, a test split of 176,074
and a scaffold test split of 176,225 (molecules whose Bemis-Murcko scaffolds are absent from
train), as gzipped CSV files of SMILES. Its metrics module pulls in a library that no longer
builds, so install it without dependencies (`pip install --no-deps molsets`); only its data files
are read here and the package itself is never imported.

MOSES molecules are neutral, made of C, N, O, F, S, Cl and Br, with 8 to 27 heavy atoms.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch_geometric.data import Data

from .data import MolInputError, split_indices
from .graph_data import SkipReport, smiles_to_data

MOSES_ATOM_TYPES: tuple[str, ...] = ("C", "N", "O", "F", "S", "Cl", "Br")
MOSES_MAX_ATOMS = 27
MOSES_SPLITS: tuple[str, ...] = ("train", "test", "test_scaffolds")
INSTALL_HINT = "pip install --no-deps molsets"


def moses_package_dir() -> Path:
    """Folder of the installed `molsets` package (`moses`), found without importing it."""
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise MolInputError(f"MOSES data needs the 'molsets' package: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def moses_csv(split: str) -> Path:
    """The gzipped CSV of one MOSES split ('train', 'test' or 'test_scaffolds')."""
    if split not in MOSES_SPLITS:
        raise ValueError(f"MOSES split must be one of {list(MOSES_SPLITS)}, got {split!r}")
    path = moses_package_dir() / "dataset" / "data" / f"{split}.csv.gz"
    if not path.exists():
        raise MolInputError(f"{path}: MOSES {split} split missing from the molsets package")
    return path


def moses_smiles(split: str) -> list[str]:
    """SMILES of one MOSES split, in the file's order."""
    import pandas as pd

    return pd.read_csv(moses_csv(split), usecols=["SMILES"])["SMILES"].tolist()


def moses_subset(smiles: list[str], limit: int | None, seed: int) -> list[str]:
    """A seeded random subset of `limit` SMILES (all of them, in order, when `limit` is None or larger)."""
    if limit is None or limit >= len(smiles):
        return list(smiles)
    if limit < 1:
        raise MolInputError(f"MOSES subset size must be positive, got {limit}")
    perm = torch.randperm(len(smiles), generator=torch.Generator().manual_seed(seed))[:limit]
    return [smiles[i] for i in sorted(perm.tolist())]


def load_moses_graphs(train_limit: int | None = 200_000, test_limit: int | None = 2_000, seed: int = 0,
                      properties: tuple[str, ...] = ("logp",)) -> tuple[dict[str, list[Data]], SkipReport]:
    """MOSES as graphs over MOSES_ATOM_TYPES: a seeded subset of `train_limit` training molecules
    (the whole 1.58 M when None) and of `test_limit` test molecules (for likelihoods; the metrics
    read the test SMILES directly). 'val' holds a further 10 % of the test subset's size, drawn
    from the rest of the training split, so it is disjoint from 'train'."""
    train_all = moses_smiles("train")
    order = split_indices(len(train_all), (1.0, 0.0, 0.0), seed=seed)["train"].tolist()
    n_train = len(train_all) if train_limit is None else min(train_limit, len(train_all))
    n_val = max(1, (test_limit or 2_000) // 10)
    chosen = {"train": [train_all[i] for i in sorted(order[:n_train])],
              "val": [train_all[i] for i in sorted(order[n_train: n_train + n_val])],
              "test": moses_subset(moses_smiles("test"), test_limit, seed)}
    report = SkipReport()
    out = {}
    for name, smiles in chosen.items():
        out[name], skipped = smiles_to_data(smiles, MOSES_ATOM_TYPES, MOSES_MAX_ATOMS, properties, f"moses-{name}")
        for reason, count in skipped.counts.items():
            report.counts[reason] = report.counts.get(reason, 0) + count
            report.examples.setdefault(reason, skipped.examples[reason])
    return out, report


__all__ = ["INSTALL_HINT", "MOSES_ATOM_TYPES", "MOSES_MAX_ATOMS", "MOSES_SPLITS", "load_moses_graphs",
           "moses_csv", "moses_package_dir", "moses_smiles", "moses_subset"]
