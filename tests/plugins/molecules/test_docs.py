"""docs/molecules.md: its python examples run as written."""

import pytest

from tests.doc_examples import run_markdown_examples


@pytest.mark.slow
def test_molecules_page_examples_run(tmp_path):
    ns = run_markdown_examples("docs/molecules.md", tmp_path)
    assert ns["ceiling"].n_molecules == 200 and ns["gen"].metrics.n_molecules == 4
    assert len(ns["steered"].graphs) == 8 and ns["steered"].metrics["logp_target"] == 1.5
