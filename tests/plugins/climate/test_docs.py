"""The python examples of docs/climate.md run as written."""

from __future__ import annotations

import numpy as np
import pytest

from plugins.climate.experiment import SHIPPED
from tests.doc_examples import run_markdown_examples


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped checkpoint is not in this checkout")
def test_climate_page_examples_run(tmp_path):
    ns = run_markdown_examples("docs/climate.md", tmp_path)
    assert (tmp_path / "downscaled_example.nc").exists()
    assert ns["members"].shape == (2, 1, 5, 180, 360) and np.isfinite(ns["members"]).all()
