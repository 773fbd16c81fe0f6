"""Installing sciffusion adds one import name, `sciffusion`, beside packages called `core` and `benchmarks`.

A fresh virtual environment gets a `core` and a `benchmarks` of its own first, then a regular (non-editable)
install of this repository. The environment borrows torch and the other dependencies from the running one
through a `.pth` line, so nothing is downloaded; the running environment's own sciffusion install is not
visible there (its import hooks live in `.pth` files that a borrowed path does not run).
"""

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _source_copy(where: Path) -> Path:
    """The repository's sources in `where`, so the build leaves nothing in the working tree."""
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "_build", "*_out")
    return Path(shutil.copytree(ROOT, where / "src", ignore=skip))


def _run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _other_package(where: Path, name: str) -> Path:
    """A tiny distribution that installs a top-level package `name` with `WHO = "other"`."""
    src = where / f"other-{name}"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text('WHO = "other"\n')
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "other-{name}"
        version = "1.0"
        [tool.setuptools]
        packages = ["{name}"]
    """))
    return src


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory) -> Path:
    """A new venv holding another `core` and `benchmarks`, then sciffusion; returns its python."""
    where = tmp_path_factory.mktemp("env")
    venv = where / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], where)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], where).strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    _run([*pip, str(_other_package(where, "core")), str(_other_package(where, "benchmarks"))], where)
    _run([*pip, str(_source_copy(where))], where)
    return python


def test_the_wheel_has_one_top_level_name(tmp_path):
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(tmp_path), str(_source_copy(tmp_path))], tmp_path)
    (wheel,) = tmp_path.glob("sciffusion-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"sciffusion"}
    assert "sciffusion/plugins/mri/checkpoints/mri_sr_2x2x2.pt" in names     # package data travels too


def test_other_core_and_benchmarks_still_import_beside_sciffusion(fresh_env, tmp_path):
    probe = textwrap.dedent("""
        import json, core, benchmarks, sciffusion.core, sciffusion.plugins.mri.io
        print(json.dumps({"core": core.WHO, "benchmarks": benchmarks.WHO,
                          "engine": sciffusion.core.__file__, "plugin": sciffusion.plugins.mri.io.__file__}))
    """)
    seen = json.loads(_run([str(fresh_env), "-c", probe], tmp_path))
    assert seen["core"] == "other" and seen["benchmarks"] == "other"
    venv = fresh_env.parents[1]
    for key in ("engine", "plugin"):            # the installed copy, not the repository's folders
        assert Path(seen[key]).is_relative_to(venv), seen[key]


def test_readme_recipe_runs_from_the_repository_root_with_the_installed_package(fresh_env, tmp_path):
    out = tmp_path / "kernel"
    _run([str(fresh_env), "-m", "recipes.kernel_smoothing", "--dataset", "pinwheel", "--method", "rdks",
          "--n-train", "200", "--n-test", "100", "--n-samples", "64", "--quiet", "--out", str(out)], ROOT)
    assert (out / "metrics.json").exists()


def test_console_script_of_a_regular_install_runs_from_any_folder(fresh_env, tmp_path):
    out = tmp_path / "kernel"
    _run([str(fresh_env.parent / "sciffusion-kernel-smoothing"), "--dataset", "8gaussians", "--n-train", "200",
          "--n-test", "100", "--n-samples", "64", "--steps", "10", "--quiet", "--out", str(out)], tmp_path)
    assert json.loads((out / "metrics.json").read_text())["dataset"] == "8gaussians"
