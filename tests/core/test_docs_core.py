from tests.doc_examples import run_markdown_examples


def test_core_page_runs(tmp_path):
    ns = run_markdown_examples("docs/core.md", tmp_path)
    assert ns["particles"].shape == (2, 256, 2)
    assert (ns["x"].mean(0) - ns["data"].means[0].float()).abs().max() < 0.1
