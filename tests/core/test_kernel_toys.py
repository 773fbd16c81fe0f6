"""sciffusion.core.kernel_toys: a run writes samples, a PNG and metrics.json; datasets, metrics and errors."""

import json
import math

import numpy as np
import pytest
import torch

from sciffusion.core.kernel_toys import (
    DATASETS,
    KernelSmoothingConfig,
    coverage_scores,
    from_box,
    main,
    mmd2,
    run,
    to_box,
    toy_data,
)


@pytest.mark.parametrize("method", ["rdks", "oism", "dks", "rdks-spectral"])
def test_recipe_writes_outputs(tmp_path, method, device):
    small = ["--n-train", "300", "--n-test", "200", "--n-samples", "200", "--steps", "30", "--degree", "4"]
    argv = ["--dataset", "pinwheel", "--method", method, "--out", str(tmp_path), "--quiet", "--device", str(device)]
    assert main([*argv, *small]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    files = {p.name for p in tmp_path.iterdir()}
    assert {"samples.npy", "figure.png", "metrics.json", "config.json"} <= files
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    assert np.load(tmp_path / "samples.npy").shape == (200, 2)
    assert math.isfinite(saved["heldout_ll_data"]) and -6 < saved["heldout_ll_data"] < 0
    assert saved["mmd2_heldout"] < 0.1  # samples resemble held-out data
    for name in ("precision", "recall", "density", "coverage"):
        assert 0.3 < saved[f"{name}_heldout"] < 1.5 and 0.8 < saved[f"{name}_train_vs_heldout"] < 1.2, name
    assert json.loads((tmp_path / "config.json").read_text())["method"] == method
    assert json.loads((tmp_path / "config.json").read_text())["device"] == str(device)


def test_rdks_spectral_and_kernel_forms_give_the_same_numbers(tmp_path):
    cfg = {"dataset": "8gaussians", "n_train": 300, "n_test": 200, "n_samples": 50, "steps": 20}
    a = run(KernelSmoothingConfig(**cfg, method="rdks"), tmp_path / "a", quiet=True)
    b = run(KernelSmoothingConfig(**cfg, method="rdks-spectral"), tmp_path / "b", quiet=True)
    assert abs(a["heldout_ll_box"] - b["heldout_ll_box"]) < 1e-8


def test_toy_data_box_maps_and_mmd():
    g = torch.Generator().manual_seed(0)
    for name in DATASETS:
        x = toy_data(name, 500, g)
        assert x.shape == (500, 2) and float(x.abs().max()) < 4.5
        assert torch.allclose(from_box(to_box(x)), x, atol=1e-12)
    x, y = toy_data("pinwheel", 400, g), toy_data("pinwheel", 400, g)
    assert abs(mmd2(x, y)) < 0.01 < mmd2(x, toy_data("8gaussians", 400, g))
    with pytest.raises(ValueError, match="dataset must be one of"):
        toy_data("moons", 5)


def test_coverage_scores_see_a_missing_arm():
    g = torch.Generator().manual_seed(1)
    ref, same = toy_data("8gaussians", 800, g), toy_data("8gaussians", 800, g)
    angle = torch.atan2(same[:, 1], same[:, 0])
    half = same[angle > 0]          # samples from the upper four of the eight modes only
    a, b = coverage_scores(same, ref, "_x"), coverage_scores(half, ref)
    assert set(a) == {"precision_x", "recall_x", "density_x", "coverage_x"}
    assert b["recall"] < 0.55 and b["coverage"] < 0.55 and b["precision"] > a["precision_x"] - 0.05


def test_config_is_saved_and_reloads(tmp_path):
    cfg = KernelSmoothingConfig(dataset="8gaussians", n_train=50, n_test=20, n_samples=20, steps=5)
    run(cfg, tmp_path, quiet=True)
    assert KernelSmoothingConfig.from_json(tmp_path / "config.json") == cfg


@pytest.mark.parametrize("flag", ["--n-train", "--n-test", "--n-samples", "--steps"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_bad_counts_are_one_line_and_exit_2(tmp_path, capsys, flag, value):
    assert main([flag, value, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} must be a positive count") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unknown_dataset_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--dataset", "moons", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "invalid choice: 'moons'" in capsys.readouterr().err


def test_device_is_printed_to_stderr_and_stdout_stays_json(tmp_path, capsys):
    small = ["--n-train", "50", "--n-test", "20", "--n-samples", "20", "--steps", "5", "--method", "dks"]
    assert main(["--device", "cpu", "--out", str(tmp_path), *small]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == "device: cpu"
    assert json.loads(out)["method"] == "dks"
