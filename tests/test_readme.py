from tests.doc_examples import run_markdown_examples


def test_readme_tour_runs(tmp_path):
    ns = run_markdown_examples("README.md", tmp_path)
    assert ns["samples"].shape == (100, 2)
    assert (tmp_path / "runs" / "readme").is_dir()
