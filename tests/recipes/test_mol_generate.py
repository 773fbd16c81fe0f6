"""End to end: `python -m recipes.mol_generate` trains, samples, writes files, scores, and fails clearly."""

import contextlib
import io
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


@pytest.mark.slow
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
    assert "skipped" in metrics["distribution"]   # 5 molecules: too few for the k-NN scores
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["steps"] == 4 and config["model"]["max_atoms"] == 12
    assert config["args"]["method"] == "ddpm"
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


def test_shipped_checkpoint_is_small_and_samples(device):
    assert DEFAULT_CHECKPOINT.exists() and DEFAULT_CHECKPOINT.stat().st_size < 20 * 2**20
    model = load_model(DEFAULT_CHECKPOINT, str(device))
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


# ----------------------------------------------------------------------------- the graph model (default)
GRAPH_TINY = ["--hidden", "16", "--edge-hidden", "8", "--layers", "1", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def graph_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph")
    smi = root / "train.smi"
    smi.write_text(SMILES + "C[Si](C)C\nCCCCCCCCCC\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        cond = main(["--train", "--data", str(smi), "--train-steps", "3", "--out", str(root / "cond"), *GRAPH_TINY])
    (root / "train_stderr.txt").write_text(err.getvalue())
    uncond = main(["--train", "--data", str(smi), "--train-steps", "2", "--property", "none",
                   "--out", str(root / "uncond"), *GRAPH_TINY])
    return root, cond, uncond


@pytest.mark.slow
def test_graph_train_generate_and_score(graph_runs, capsys):
    root, rc, _ = graph_runs
    assert rc == 0 and (root / "cond" / "model.pt").exists()
    err = (root / "train_stderr.txt").read_text()
    assert "skipped 1: RDKit cannot parse the SMILES" in err and "not_a_smiles" in err
    assert "skipped 1: atom type outside the vocabulary" in err and "more heavy atoms" in err
    out = root / "gen"
    rc = main(["--n", "6", "--steps", "3", "--checkpoint", str(root / "cond" / "model.pt"), "--out", str(out),
               "--property", "logp", "--target", "0.5", "--guidance", "1.0", "--quiet"])
    assert rc == 0
    for name in ("molecules.sdf", "smiles.txt", "grid.png", "metrics.json", "config.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sciffusion"]["n_molecules"] == 6 and "logp_mae" in metrics["sciffusion"]
    from rdkit import Chem

    records = list(Chem.SDMolSupplier(str(out / "molecules.sdf"), sanitize=False))
    assert len(records) == 6  # every graph is written, invalid ones flagged
    valid = [r for r in records if r.GetProp("valid") == "1"]
    assert sum(r.GetProp("valid") == "1" for r in records) == round(6 * metrics["sciffusion"]["validity"])
    assert all(r.GetConformer().Is3D() for r in valid if r.GetProp("conformer_3d") == "1")
    assert main(["--score", str(out / "molecules.sdf"), "--out", str(root / "score"), "--quiet"]) == 0
    scored = json.loads((root / "score" / "metrics.json").read_text())
    assert scored["n_molecules"] == 6 and scored["validity"] == metrics["sciffusion"]["validity"]
    (root / "mixed.smi").write_text("CCO\nC1CC\nc1ccccc1\n")
    assert main(["--score", str(root / "mixed.smi"), "--out", str(root / "score2"), "--quiet"]) == 0
    scored = json.loads((root / "score2" / "metrics.json").read_text())
    assert scored["n_molecules"] == 3 and abs(scored["validity"] - 2 / 3) < 1e-9


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n must be a positive count (at least 1), got 0"),
    (["--n", "-3"], "--n must be a positive count (at least 1), got -3"),
    (["--property", "gap", "--target", "1"], "unknown property 'gap'"),
    (["--property", "logp"], "--property and --target go together"),
])
def test_graph_bad_arguments_give_one_line(graph_runs, capsys, argv, message):
    root, _, _ = graph_runs
    rc = main(["--checkpoint", str(root / "cond" / "model.pt"), "--out", str(root / "bad"), "--quiet", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1


def test_guidance_on_unconditional_and_wrong_kind_are_refused(graph_runs, capsys, tmp_path):
    root, _, rc = graph_runs
    assert rc == 0
    rc = main(["--checkpoint", str(root / "uncond" / "model.pt"), "--property", "logp", "--target", "1",
               "--guidance", "2", "--out", str(tmp_path), "--quiet"])
    assert rc == 2 and "unconditional" in capsys.readouterr().err
    rc = main(["--model", "egnn", "--checkpoint", str(root / "cond" / "model.pt"), "--out", str(tmp_path)])
    assert rc == 2 and "graph-diffusion checkpoint" in capsys.readouterr().err
    rc = main(["--checkpoint", str(DEFAULT_CHECKPOINT), "--out", str(tmp_path)])  # the EGNN file
    assert rc == 2 and "not a graph-diffusion checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_graph_route_scores_the_generated_set_against_a_reference_file(tmp_path):
    from pathlib import Path

    nci = Path(__import__("rdkit").__file__).parent / "Data" / "NCI" / "first_5K.smi"
    ref = tmp_path / "ref.smi"
    ref.write_text("\n".join(nci.read_text().splitlines()[:60]) + "\n")
    out = tmp_path / "graph"
    assert main(["--n", "40", "--steps", "40", "--reference", str(ref), "--out", str(out), "--quiet"]) == 0
    dist = json.loads((out / "metrics.json").read_text())["distribution"]
    assert dist["reference"] == str(ref) and dist["n_generated"] >= 6
    assert dist["fcd"] > 0 and 0 <= dist["precision"] <= 1 and 0 <= dist["coverage"] <= 1


@pytest.mark.parametrize("flag", ["--n", "--steps", "--size", "--train-steps", "--batch-size", "--max-atoms",
                                  "--hidden", "--threads"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_zero_and_negative_counts_are_one_clear_line(tmp_path, capsys, flag, value):
    out = tmp_path / "o"
    assert main([flag, value, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {flag} must be a positive count (at least 1), got {value}\n"
    assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--grid-power", "0"], "error: --grid-power must be a positive exponent, got 0.0\n"),
    (["--grid-power", "-1"], "error: --grid-power must be a positive exponent, got -1.0\n"),
    (["--model", "egnn", "--grid-power", "2"],
     "error: --property/--target/--guidance/--grid-power need the graph model (--model graph)\n"),
])
def test_a_bad_sampling_grid_is_one_clear_line(tmp_path, capsys, args, message):
    out = tmp_path / "o"
    assert main([*args, "--n", "2", "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err == message
    assert not out.exists()


@pytest.mark.parametrize("kind", ["truncated", "pickle", "trainer"])
@pytest.mark.parametrize("model", ["graph", "egnn"])
def test_corrupt_or_foreign_checkpoint_is_one_line_naming_the_file(tmp_path, capsys, kind, model):
    import pickle

    import torch

    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        bad.write_bytes(DEFAULT_CHECKPOINT.read_bytes()[:5000])
    elif kind == "pickle":
        bad.write_bytes(pickle.dumps({"weights": [1, 2, 3], "x": {1}}))
    else:  # a checkpoint of another kind: the core Trainer's, without a config beside it
        torch.save({"format": "sciffusion.trainer", "step": 3, "model": {}}, bad)
    rc = main(["--model", model, "--checkpoint", str(bad), "--n", "2", "--steps", "1", "--out", str(tmp_path / "o"),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(bad) in err, err
    assert "weights_only" not in err and "Traceback" not in err
