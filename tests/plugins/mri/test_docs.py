"""docs/mri.md: its python examples run as written."""

from __future__ import annotations

from tests.doc_examples import run_markdown_examples


def test_mri_page_examples_run(tmp_path):
    ns = run_markdown_examples("docs/mri.md", tmp_path)
    assert ns["out"].mean.shape == (48, 48, 48)
    assert (tmp_path / "sr_block.nii.gz").is_file()
