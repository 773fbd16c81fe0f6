"""The MOSES benchmark's per-set scores on MOSES' own molecules, where the answers are known."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("rdkit")
pytest.importorskip("fcd")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("moses") is None,
                                reason="the MOSES data needs the molsets package (pip install --no-deps molsets)")


def test_training_molecules_score_as_the_ceiling_and_invalid_ones_count_against_validity():
    from rdkit import Chem

    from benchmarks.mol_moses_eval import COLUMNS, set_scores
    from sciffusion.plugins.molecules.moses_data import moses_smiles, moses_subset
    from sciffusion.plugins.molecules.moses_metrics import set_statistics

    train = moses_subset(moses_smiles("train"), 40, seed=3)
    test = moses_subset(moses_smiles("test"), 60, seed=3)
    mols = [Chem.MolFromSmiles(s) for s in train[:30]] + [None] * 10  # 10 graphs RDKit rejected
    smiles = [Chem.MolToSmiles(m) if m is not None else None for m in mols]
    stats = {split: set_statistics([Chem.MolFromSmiles(s) for s in test]) for split in ("test", "test_scaffolds")}
    stats["test_scaffolds"] = set_statistics([Chem.MolFromSmiles(s) for s in train[:30]])
    row = set_scores(smiles, mols, {Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in train[:15]},
                     {"test": test, "test_scaffolds": test}, stats)
    assert set(COLUMNS) <= set(row) and row["n"] == 40
    assert row["validity"] == pytest.approx(0.75) and row["unique@1k"] == 1.0
    assert row["connected"] == pytest.approx(sum("." not in s for s in smiles[:30]) / 40)
    assert row["novelty"] == pytest.approx(0.5)  # 15 of the 30 distinct molecules are in the given training set
    assert row["filters"] == 1.0  # MOSES molecules pass MOSES' filters
    # against a reference that holds the same molecules: every nearest neighbour is itself
    assert row["snn/TestSF"] == pytest.approx(1.0) and row["frag/TestSF"] == pytest.approx(1.0)
    assert row["snn/Test"] < 0.9 and 0 < row["fcd/Test"]
