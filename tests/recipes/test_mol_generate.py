"""End to end: `python -m recipes.mol_generate` trains, samples, writes files, scores, and fails clearly."""

import json

import pytest

from recipes.mol_generate import main
from sciffusion.plugins.molecules.generate import DEFAULT_CHECKPOINT
from sciffusion.plugins.molecules.train import load_model

SMILES = "CCO\nCC(=O)O\nc1ccoc1\nCN\nOCCO\nC#N\nCOC\nCC=O\nC1CC1\nCNC=O\nnot_a_smiles\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mol")
    smi = root / "train.smi"
    smi.write_text(SMILES)
    rc = main(["--model", "egnn", "--train", "--data", str(smi), "--train-steps", "3", "--hidden", "16", "--layers", "2",
               "--max-atoms", "12", "--batch-size", "4", "--out", str(root / "run"), "--quiet"])
    return root, rc


def test_train_then_generate_writes_every_file(tiny_run, capsys):
    root, rc = tiny_run
    assert rc == 0 and (root / "run" / "model.pt").exists()
    out = root / "gen"
    rc = main(["--model", "egnn", "--n", "5", "--steps", "4", "--checkpoint", str(root / "run" / "model.pt"),
               "--out", str(out), "--seed", "1"])
    assert rc == 0
    for name in ("molecules.sdf", "smiles.txt", "grid.png", "metrics.json", "config.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sciffusion"]["n_molecules"] == 5 and metrics["molecules_per_second"] > 0
    assert metrics["edm_published"]["molecule_stability"] == 0.82
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["steps"] == 4 and config["model"]["max_atoms"] == 12
    printed = capsys.readouterr().out
    assert "sciffusion (this run)" in printed and "EDM, QM9 (published)" in printed
    assert main(["--score", str(out / "molecules.sdf"), "--out", str(root / "score"), "--quiet"]) == 0
    assert json.loads((root / "score" / "metrics.json").read_text())["n_molecules"] == 5


def test_bad_smiles_is_reported_and_strict_mode_stops(tiny_run, capsys):
    root, _ = tiny_run
    rc = main(["--model", "egnn", "--train", "--data", str(root / "train.smi"), "--strict", "--train-steps", "1",
               "--out", str(root / "strict"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.smi:11" in err and "cannot parse" in err


def test_bad_inputs_give_one_clear_line(tmp_path, capsys):
    empty = tmp_path / "empty.sdf"
    empty.write_text("")
    assert main(["--score", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "empty file" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shipped_checkpoint_is_small_and_samples():
    assert DEFAULT_CHECKPOINT.exists() and DEFAULT_CHECKPOINT.stat().st_size < 20 * 2**20
    model = load_model(DEFAULT_CHECKPOINT)
    out = model.sample(model.sample_sizes(3), steps=3)
    assert out["pos"].shape[1] == 3 and out["batch"].max() == 2


def test_warm_start_continues_from_the_given_weights(tiny_run, capsys):
    root, _ = tiny_run
    first = load_model(root / "run" / "model.pt")
    rc = main(["--model", "egnn", "--train", "--data", str(root / "train.smi"), "--init", str(root / "run" / "model.pt"),
               "--train-steps", "2", "--lr", "1e-9", "--batch-size", "4", "--max-atoms", "12",
               "--out", str(root / "warm"), "--quiet"])
    assert rc == 0
    warm = load_model(root / "warm" / "model.pt")
    assert warm.cfg == first.cfg  # the --init model's architecture, not the defaults (96 x 5)
    for (name, a), b in zip(first.state_dict().items(), warm.state_dict().values()):
        assert (a - b).abs().max() < 1e-4, name  # a negligible lr: still the first model's weights
    rc = main(["--model", "egnn", "--train", "--data", str(root / "train.smi"), "--init", str(root / "run" / "model.pt"),
               "--train-steps", "1", "--max-atoms", "29", "--batch-size", "4", "--out", str(root / "warm2"), "--quiet"])
    assert rc == 0  # the data (<= 12 atoms) fits the model's 12
