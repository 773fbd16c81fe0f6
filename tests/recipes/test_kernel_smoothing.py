"""recipes.kernel_smoothing: the module entry runs as the README writes it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_readme_command_runs_as_written(tmp_path):
    """`python -m recipes.kernel_smoothing --dataset pinwheel --method rdks` (the README's command,
    no --out): run from a scratch folder with the repository on the path, outputs land in
    ./kernel_smoothing_out."""
    r = subprocess.run(
        [sys.executable, "-m", "recipes.kernel_smoothing", "--dataset", "pinwheel", "--method", "rdks"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "kernel_smoothing_out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(r.stdout) == metrics  # printed without --quiet
    assert metrics["dataset"] == "pinwheel" and metrics["method"] == "rdks"
    assert {p.name for p in out.iterdir()} == {"samples.npy", "figure.png", "metrics.json", "config.json"}
