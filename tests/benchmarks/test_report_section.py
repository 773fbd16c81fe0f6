"""`benchmarks._common.report_section` puts a measured section into a page another command made: it
replaces the section of the same heading (and nothing else) or appends it; quick runs into docs/ write nothing."""

from __future__ import annotations

import importlib

import pytest

from benchmarks import _common as C


def _args(tmp_path, *extra):
    return C.parse(C.parser("x"), ["--out", str(tmp_path), *extra])


def test_a_section_is_appended_then_replaced_in_place(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# P\n\nintro\n\n## A\n\na text\n\n## B\n\nb text\n")
    C.report_section("p", page, "A", "first", _args(tmp_path), 0.0)
    text = page.read_text()
    assert text.startswith("# P\n\nintro\n\n## A\n\nMeasured ") and "first\n\n## B\n\nb text\n" in text
    assert "a text" not in text
    C.report_section("p", page, "C", "third", _args(tmp_path), 0.0)
    C.report_section("p", page, "C", "again", _args(tmp_path), 0.0)
    text = page.read_text()
    assert text.count("## C") == 1 and text.rstrip().endswith("again") and "third" not in text
    assert text.index("## A") < text.index("## B") < text.index("## C") and "b text" in text


def test_a_quick_section_never_lands_in_docs(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "DOCS", tmp_path)
    page = tmp_path / "p.md"
    page.write_text("# P\n")
    C.report_section("p", page, "A", "x", _args(tmp_path, "--quick"), 0.0)
    assert page.read_text() == "# P\n"


@pytest.mark.slow
@pytest.mark.parametrize("name, argv", [
    ("mri_superres", ["--steps-sweep", "1,2", "--compare", "dpmpp_2m:1"]),
    ("climate_steps", ["--steps", "1", "--compare", "dpmpp_2m:1"]),
    ("mol_egnn_steps", ["--steps", "2", "--compare", "ddpm:2"]),
])
def test_the_step_sweeps_write_their_section(name, argv, tmp_path):
    pytest.importorskip("monai")
    mod = importlib.import_module(f"benchmarks.{name}")
    section = mod.main(["--quick", "--out", str(tmp_path), *argv])
    page = next(tmp_path.glob("*.md")).read_text()
    assert section.rstrip() in page and "(default)" in section
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert len(rows) >= 3   # a header and a row per run
