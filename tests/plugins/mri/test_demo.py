"""The demonstration scores the held-out slab only, and says which slab it is."""

from __future__ import annotations

import numpy as np

from sciffusion.plugins.mri import data
from sciffusion.plugins.mri.io import Volume
from sciffusion.plugins.mri.model import load_checkpoint
from sciffusion.plugins.mri.pipeline import evaluate_demo
from tests.plugins.mri.helpers import phantom


def test_demo_scores_the_heldout_slab_only(tiny_checkpoint, monkeypatch):
    head = phantom((16, 180, 16))  # as long as the template along the held-out axis, thin across it
    monkeypatch.setattr(data, "mni_volume", lambda resolution=1: Volume(head, np.eye(4), None, "phantom"))
    run = evaluate_demo(load_checkpoint(tiny_checkpoint), samples=1, steps=1, seed=0)
    lo, hi = data.HOLDOUT
    assert run.settings["demo"] == f"MNI152 held-out slab (axis 1, [{lo}, {hi})); metrics inside it"
    assert run.reference.shape == (16, hi - lo + 2 * data.GUARD, 16)  # the slab and its guard band
    np.testing.assert_array_equal(run.reference, head[:, lo - data.GUARD : hi + data.GUARD])
    inside = run.mask.any(axis=(0, 2))
    assert inside[data.GUARD : data.GUARD + hi - lo].any()
    assert not inside[: data.GUARD].any() and not inside[data.GUARD + hi - lo :].any()
    assert run.metrics["mask_voxels"] == int(run.mask.sum()) > 0


def test_demo_tells_the_profile_it_degraded_with_unless_hidden(tiny_checkpoint, monkeypatch, tmp_path):
    """The demo made its own low-res input, so by default the data-consistency step knows its profile."""
    import json

    from sciffusion.plugins.mri import cli

    head = phantom((16, 180, 16))
    monkeypatch.setattr(data, "mni_volume", lambda resolution=1: Volume(head, np.eye(4), None, "phantom"))
    common = ["--checkpoint", str(tiny_checkpoint), "--samples", "1", "--steps", "1", "--quiet"]
    assert cli.main([*common, "--out", str(tmp_path / "told")]) == 0
    told = json.loads((tmp_path / "told" / "config.json").read_text())
    assert told["data_consistency"]["gains"] and told["data_consistency"]["noise_sigma"] >= 0
    assert cli.main([*common, "--slice-profile", "unknown", "--out", str(tmp_path / "hidden")]) == 0
    assert json.loads((tmp_path / "hidden" / "config.json").read_text())["data_consistency"] == "off"
