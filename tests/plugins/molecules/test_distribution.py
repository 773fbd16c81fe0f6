"""FCD and k-NN scores on ChemNet features: agreement with the fcd package, identities, the recipe entry."""

from pathlib import Path

import pytest

from sciffusion.plugins.molecules.distribution import (
    canonical_set,
    distribution_metrics,
    read_smiles_column,
    reference_scores,
)

NCI = Path(__import__("rdkit").__file__).parent / "Data" / "NCI" / "first_5K.smi"


@pytest.fixture(scope="module")
def nci():
    return canonical_set(read_smiles_column(NCI)[:120])


def test_fcd_agrees_with_the_fcd_package(nci):
    fcd = pytest.importorskip("fcd")
    gen, ref = nci[:40], nci[40:90]
    ours = distribution_metrics(gen, ref)
    theirs = fcd.get_fcd(gen, ref, device="cpu")
    assert ours["fcd"] == pytest.approx(theirs, rel=1e-6)
    assert ours["n_generated"] == 40 and ours["n_reference"] == 50
    assert 0 < ours["precision"] < 1 and 0 < ours["coverage"] < 1


def test_a_set_against_itself_and_against_a_shifted_set(nci):
    same = distribution_metrics(nci[:60], nci[:60])
    assert same["fcd"] < 1e-6
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    # a sampler collapsed onto tiny molecules: inside the drug-like manifold, but covering little of it
    small = ["C", "CC", "CO", "CN", "CCO", "CCN", "COC", "C=O", "CC=O", "OCCO", "NCCO", "CC#N"]
    collapsed, halves = distribution_metrics(small, nci[:60]), distribution_metrics(nci[60:], nci[:60])
    assert collapsed["fcd"] > 1.5 * halves["fcd"]
    assert collapsed["recall"] < 0.1 < 0.5 < halves["recall"]
    assert collapsed["coverage"] < 0.5 < halves["coverage"]


def test_reference_scores_from_a_file_and_the_skip_rule(tmp_path, nci):
    ref = tmp_path / "ref.smi"
    ref.write_text("\n".join(f"{s} name{i}" for i, s in enumerate(nci[60:])) + "\n")
    out = reference_scores([*nci[:30], "not_a_smiles"], str(ref), max_atoms=None)
    assert out["reference"] == str(ref) and out["n_generated"] == 30 and "floor" not in out
    assert reference_scores(["CCO", "CC"], str(ref), max_atoms=None) == {
        "skipped": "2 valid generated molecules; the k-NN scores need 6"
    }
    with pytest.raises(ValueError, match="at least 6 readable reference"):
        distribution_metrics(nci[:10], ["CCO", "xx"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reference_scores(nci[:10], str(tmp_path / "missing.smi"), max_atoms=None)


def test_qm9_reference_and_floor_come_from_the_given_split(nci):
    parts = {"train": nci[:50], "test": nci[50:110]}
    out = reference_scores(nci[:20], "qm9", max_atoms=None, split_smiles=parts.__getitem__)
    assert out["n_reference"] == 60 and out["floor"]["n_reference"] == 60
    assert out["floor"]["n_generated"] == 20  # as many training molecules as valid generated ones


def test_graph_models_are_scored_on_molecules_they_did_not_train_on():
    from sciffusion.plugins.molecules.graph_data import qm9_graph_split_smiles
    from sciffusion.plugins.molecules.graph_pipeline import (
        DEFAULT_GRAPH_CHECKPOINT,
        graph_training_smiles,
    )

    test = qm9_graph_split_smiles("test")
    trained = set(graph_training_smiles(DEFAULT_GRAPH_CHECKPOINT))  # canonical, stereo-free
    assert len(test) > 13000 and len(trained) > 100000
    # 0.1 % share a stereo-free SMILES with a training molecule (QM9 lists stereoisomers apart); the
    # EGNN data's test split, indexed over all of QM9, shares 80 % (31 % as raw strings)
    assert sum(s in trained for s in test) / len(test) < 0.01
    with pytest.raises(ValueError, match="split must be one of"):
        qm9_graph_split_smiles("validation")
