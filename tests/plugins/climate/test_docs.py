"""The python examples of docs/climate.md run as written."""

from __future__ import annotations

import numpy as np
import pytest

from sciffusion.plugins.climate.experiment import SHIPPED
from tests.doc_examples import run_markdown_examples


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped checkpoint is not in this checkout")
@pytest.mark.slow
def test_climate_page_examples_run(tmp_path):
    ns = run_markdown_examples("docs/climate.md", tmp_path)
    assert (tmp_path / "downscaled_example.nc").exists()
    assert ns["members"].shape == (2, 1, 5, 180, 360) and np.isfinite(ns["members"]).all()


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped checkpoint is not in this checkout")
def test_shipped_checkpoint_is_small_and_fits_the_era5_sample():
    from sciffusion.plugins.climate import Downscaler, open_fields
    from sciffusion.plugins.climate.grid import trim_to_factor

    assert SHIPPED.stat().st_size < 20e6
    bundle = Downscaler.load(SHIPPED)
    ds, _ = trim_to_factor(open_fields(None, list(bundle.cfg.variables)), bundle.cfg.factor)
    bundle.check_input(ds)
    held_out = {str(t) for t in ds["time"].values[-6:]}
    assert len(bundle.cfg.train_times) == 18 and not held_out & set(bundle.cfg.train_times)
