"""The executable tutorials of docs/tutorials run in fast mode and write their figures and numbers."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "tutorials" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_toy2d_periodic_fast(tmp_path):
    res = load("toy2d_periodic").main(["--out", str(tmp_path), "--fast", "--datasets", "pinwheel"])
    r = res["pinwheel"]
    assert set(r) >= {"OISM(H)", "OISM(L)", "OISM(L)+NN", "NN (pre-trained)", "NN-only", "RDKS"}
    # a rich basis and the kernel smoother beat the 24-function basis; all are finite log-likelihoods
    assert r["OISM(H)"] > r["OISM(L)"] + 0.3 and r["RDKS"] > r["OISM(L)"] + 0.3
    assert all(-6 < r[k] < 0 for k in ("OISM(L)+NN", "NN (pre-trained)", "NN-only"))
    assert (tmp_path / "toy2d_samples.png").read_bytes()[:8] == PNG
    table = (tmp_path / "toy2d_table.md").read_text()
    assert "(-1.576)" in table and "pinwheel" in table and "training data" in table
    q = r["sample_quality"]
    assert set(q) == {*r, "training data"} - {"RDKS bandwidth", "seconds", "sample_quality"}
    # the 24-function basis smears mass between the arms: its samples are the least precise
    assert q["OISM(L)"]["precision"] < min(q["OISM(H)"]["precision"], q["RDKS"]["precision"]) - 0.1
    assert q["training data"]["recall"] > 0.8 and q["RDKS"]["coverage"] > 0.7


@pytest.mark.slow
def test_rdks_manifolds_fast(tmp_path):
    res = load("rdks_manifolds").main(["--out", str(tmp_path), "--fast"])
    for f in ("rdks_circle.png", "rdks_sphere.png", "rdks_bandwidth.png"):
        assert (tmp_path / f).read_bytes()[:8] == PNG
    fisher = res["circle"]["fisher"]
    assert fisher["0.02"] > fisher["0.1"] > fisher["0.5"]
    assert res["sphere"]["angle_deg"] < 5
    assert abs(res["sphere"]["kappa_samples"] - res["sphere"]["kappa_rho_h"]) / res["sphere"]["kappa_rho_h"] < 0.2
    rows = res["bandwidth"]["rows"]
    assert rows[0]["median_nearest_train"] < 0.3 * rows[-1]["median_nearest_train"]  # memorisation at tiny h
    assert rows[0]["heldout_ll"] < rows[-2]["heldout_ll"]


def test_variance_reduction_fast(tmp_path):
    res = load("variance_reduction").main(["--out", str(tmp_path), "--fast"])
    assert (tmp_path / "variance_ratio.png").read_bytes()[:8] == PNG
    for r in res["rows"]:
        assert abs(r["ratio_mc"] / r["ratio"] - 1) < 0.1
        assert abs(r["ratio"] / r["ratio_doc"] - 1) < 0.03
