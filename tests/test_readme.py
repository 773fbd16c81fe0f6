import re
from pathlib import Path

from tests.doc_examples import ROOT, run_markdown_examples


def test_readme_tour_runs(tmp_path):
    ns = run_markdown_examples("README.md", tmp_path)
    assert ns["samples"].shape == (100, 2)
    assert (tmp_path / "runs" / "readme").is_dir()


def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, re.DOTALL)
    assert len(commands) == 2
    flagship, tests = commands
    assert flagship.endswith("python -m recipes.mri_superres")
    assert tests.endswith("python -m pytest")
    ci = Path(ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[all]"' in ci and "python -m pytest" in ci
