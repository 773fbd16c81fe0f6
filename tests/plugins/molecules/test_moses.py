"""MOSES data as graphs and the MOSES metrics, against hand-computed values and MOSES' own data rules."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter

import pytest

from sciffusion.plugins.molecules.data import MolInputError
from sciffusion.plugins.molecules.moses_metrics import (
    cosine_similarity,
    fingerprint,
    fragments,
    internal_diversity,
    nearest_similarity,
    scaffold,
)

rdkit = pytest.importorskip("rdkit")
from rdkit import Chem, DataStructs  # noqa: E402

needs_molsets = pytest.mark.skipif(importlib.util.find_spec("moses") is None,
                                   reason="the MOSES data needs the molsets package (pip install --no-deps molsets)")


def _mol(smiles: str):
    return Chem.MolFromSmiles(smiles)


def test_cosine_similarity_of_count_vectors():
    a, b = Counter({"x": 3, "y": 4}), Counter({"x": 4, "z": 3})
    assert cosine_similarity(a, b) == pytest.approx(12 / 25)
    assert cosine_similarity(a, a) == pytest.approx(1.0)
    assert cosine_similarity(a, Counter({"z": 1})) == 0.0
    assert cosine_similarity(a, Counter()) == 0.0


def test_nearest_similarity_and_internal_diversity_by_hand():
    smiles = ["c1ccccc1O", "c1ccccc1N", "CCCCCCO"]
    fps = [fingerprint(_mol(s)) for s in smiles]
    t = [[DataStructs.TanimotoSimilarity(p, q) for q in fps] for p in fps]
    assert 0 < t[0][1] < 1 and t[0][2] < t[0][1]
    assert internal_diversity(fps) == pytest.approx(1 - (t[0][1] + t[0][2] + t[1][2]) / 3)
    assert internal_diversity(fps[:1] * 4) == pytest.approx(0.0)
    # SNN: each generated molecule's best match in the reference; itself gives 1
    assert nearest_similarity(fps[:2], fps[1:]) == pytest.approx((max(t[0][1], t[0][2]) + 1.0) / 2)
    with pytest.raises(ValueError):
        internal_diversity(fps[:1])


def test_scaffolds_need_two_rings_and_fragments_cut_brics_bonds():
    assert scaffold(_mol("c1ccccc1CCO")) is None  # one ring: not counted
    two_rings = scaffold(_mol("OCc1ccc(cc1)C1CCNCC1"))
    assert two_rings == Chem.MolToSmiles(_mol("c1ccc(cc1)C1CCNCC1"))
    assert fragments(_mol("CCCC")) == ["CCCC"]  # no BRICS bond
    pieces = fragments(_mol("CCOC(=O)c1ccccc1"))  # an ester: cut into more than one piece with dummy atoms
    assert len(pieces) >= 2 and all("*" in p for p in pieces)


@needs_molsets
def test_filters_follow_the_moses_data_rules():
    from sciffusion.plugins.molecules.moses_metrics import filter_patterns, passes_filters

    assert len(filter_patterns()) > 400 and all(p is not None for p in filter_patterns())
    assert passes_filters(_mol("CC(=O)Nc1ccc(O)cc1"))  # paracetamol
    assert not passes_filters(_mol("C[N+](C)(C)CCO"))  # a formal charge
    assert not passes_filters(_mol("C1CCCCCCC1c1ccccc1"))  # an 8-membered ring
    assert not passes_filters(_mol("CCP(CC)CC"))  # phosphorus
    assert not passes_filters(_mol("O=C1NC(=S)SC1=Cc1ccccc1"))  # an arylidene rhodanine, a PAINS motif


@needs_molsets
def test_moses_training_molecules_pass_the_filters_and_fit_the_vocabulary():
    from sciffusion.plugins.molecules.moses_data import (
        MOSES_ATOM_TYPES,
        MOSES_MAX_ATOMS,
        load_moses_graphs,
    )
    from sciffusion.plugins.molecules.moses_metrics import passes_filters

    splits, skipped = load_moses_graphs(train_limit=300, test_limit=50, seed=1, properties=())
    assert skipped.total == 0
    assert (len(splits["train"]), len(splits["test"]), len(splits["val"])) == (300, 50, 5)
    assert not {d.smiles for d in splits["train"]} & {d.smiles for d in splits["val"]}
    sizes = [d.num_nodes for d in splits["train"]]
    assert max(sizes) <= MOSES_MAX_ATOMS and min(sizes) >= 8
    used = {MOSES_ATOM_TYPES[k] for d in splits["train"] for k in d.x.tolist()}
    assert {"C", "N", "O"} <= used <= set(MOSES_ATOM_TYPES)
    assert all(passes_filters(_mol(d.smiles)) for d in splits["train"][:100])
    again, _ = load_moses_graphs(train_limit=300, test_limit=50, seed=1, properties=())
    assert [d.smiles for d in again["train"]] == [d.smiles for d in splits["train"]]  # seeded


def test_missing_molsets_is_one_clear_error(monkeypatch):
    from sciffusion.plugins.molecules import moses_data

    monkeypatch.setattr(moses_data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MolInputError, match=r"^MOSES data needs the 'molsets' package: pip install --no-deps molsets$"):
        moses_data.moses_csv("train")
    with pytest.raises(ValueError, match="MOSES split must be one of"):
        moses_data.moses_csv("valid")


def test_cosine_of_disjoint_supports_is_zero_and_scale_free():
    a = Counter({"p": 1, "q": 2})
    assert cosine_similarity(a, Counter({k: 10 * v for k, v in a.items()})) == pytest.approx(1.0)
    assert math.isclose(cosine_similarity(Counter({"p": 1}), Counter({"q": 1})), 0.0)


@needs_molsets
def test_training_on_moses_takes_its_vocabulary_and_size(tmp_path):
    from sciffusion.plugins.molecules.graph_diffusion import load_graph_model
    from sciffusion.plugins.molecules.graph_model import TransformerConfig
    from sciffusion.plugins.molecules.graph_pipeline import generate_graphs, train_graph_model
    from sciffusion.plugins.molecules.moses_data import MOSES_ATOM_TYPES, MOSES_MAX_ATOMS

    train_graph_model("moses", tmp_path / "run", steps=2, batch_size=8, properties=(), train_limit=40,
                      net=TransformerConfig.scaled(16, 8, 1), progress=False, log=lambda m: None)
    model = load_graph_model(tmp_path / "run" / "model.pt")
    assert model.cfg.atom_types == MOSES_ATOM_TYPES and model.cfg.max_atoms == MOSES_MAX_ATOMS
    assert len((tmp_path / "run" / "train_smiles.txt").read_text().split()) == 40
    gen = generate_graphs(model, n=3, steps=2, seed=0)
    assert all(len(types) <= MOSES_MAX_ATOMS for types, _ in gen.graphs)
