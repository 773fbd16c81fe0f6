"""The console scripts of `[project.scripts]` are installed beside the interpreter and run from
any folder (bad input: one line, exit status 2); their `--help` names the script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SCRIPTS = {  # script: (bad arguments, the start of the one-line error)
    "sciffusion-climate-downscale": (["--members", "0"], "error: members and steps must be >= 1"),
    "sciffusion-kernel-smoothing": (["--n-train", "0"], "error: --n-train must be a positive count"),
    "sciffusion-mol-generate": (["--n", "0"], "error: --n must be a positive count (at least 1), got 0"),
    "sciffusion-mri-superres": (["--adapt", "-1"], "error: --adapt: the number of steps must be >= 0, got -1"),
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the checkout
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**env, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_installed_script_refuses_bad_input_from_any_folder(name, tmp_path):
    script = BIN / name
    assert script.is_file(), f"{script} is missing: reinstall the package (pip install -e .)"
    bad, message = SCRIPTS[name]
    r = _run([str(script), *bad, "--out", str(tmp_path / "out")], tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1].startswith(message) and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_names_the_script(name, capsys):
    """`NAME --help` in-process, through the entry point that `[project.scripts]` names."""
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == name]
    assert entry.value.startswith("sciffusion.")
    with pytest.raises(SystemExit) as exc:
        entry.load()(["--help"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {name} ")
