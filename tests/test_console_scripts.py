"""The console scripts of `[project.scripts]` are installed beside the interpreter and run from
any folder: `--help` works and bad input is one line with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SCRIPTS = {  # script: (bad arguments, the start of the one-line error)
    "sciffusion-kernel-smoothing": (["--n-train", "0"], "error: --n-train must be a positive count"),
    "sciffusion-mol-generate": (["--n", "0"], "error: --n must be a positive count (at least 1), got 0"),
    "sciffusion-mri-superres": (["--adapt", "-1"], "error: --adapt: the number of steps must be >= 0, got -1"),
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the checkout
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_help_and_bad_input_from_any_folder(name, tmp_path):
    script = BIN / name
    assert script.is_file(), f"{script} is missing: reinstall the package (pip install -e .)"
    r = _run([str(script), "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {name} ")
    bad, message = SCRIPTS[name]
    r = _run([str(script), *bad, "--out", str(tmp_path / "out")], tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1].startswith(message) and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
