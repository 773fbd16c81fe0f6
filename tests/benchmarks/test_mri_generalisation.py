"""The Colin27 generalisation benchmark's harness runs (quick mode: MNI crops, a random tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("monai")


@pytest.mark.slow
def test_quick_mode_writes_the_cell_table(tmp_path):
    from benchmarks import mri_generalisation as B

    threads = torch.get_num_threads()
    try:
        page = B.main(["--quick", "--only", "2x2x2", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "mri_generalisation.md").read_text() == page
    rows = [ln for ln in page.splitlines() if ln.startswith("| Gaussian") or ln.startswith("| box")]
    # an unconditioned model with data consistency on: one table per setting (known, auto, unknown)
    assert len(rows) == 18 and "nan" not in "\n".join(rows)


def test_settings_follow_conditioning_and_consistency():
    from types import SimpleNamespace

    from benchmarks.mri_generalisation import _settings_for

    def model(conditioned):
        return SimpleNamespace(config=SimpleNamespace(conditioned=conditioned))

    told = ["known", "unknown"]
    assert _settings_for(model(False), told, consistency=False) == [None]
    assert _settings_for(model(False), told, consistency=True) == told
    assert _settings_for(model(True), told, consistency=False) == told


def test_cells_differ_in_profile_and_noise():
    from benchmarks.mri_generalisation import cell_lowres

    hr = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32) + 1
    box, none = cell_lowres(hr, (2, 2, 2), "box (block mean)", None, 0)
    np.testing.assert_allclose(box, hr.reshape(8, 2, 8, 2, 8, 2).mean((1, 3, 5)), atol=1e-6)
    noisy, sigma = cell_lowres(hr, (2, 2, 2), "box (block mean)", 20.0, 0)
    assert none == 0.0 and 0.5 * box.mean() / 20 < sigma < 2 * box.mean() / 20
    assert 0.8 * sigma < (noisy - box).std() < 1.2 * sigma  # high SNR: Rician is nearly Gaussian of std sigma


def test_a_conditioned_model_is_told_each_cell():
    from benchmarks.mri_generalisation import cell_conditioning, parse_settings
    from sciffusion.plugins.mri.conditioning import BLIND, Conditioning
    from sciffusion.plugins.mri.degrade import SliceProfile

    prof = SliceProfile("gaussian", fwhm=0.6)
    lr = np.ones((8, 8, 8), np.float32)
    assert cell_conditioning("known", "Gaussian FWHM 0.6 f", 3.0, lr, (2, 2, 2)) == Conditioning(3.0, prof)
    assert cell_conditioning("auto", "Gaussian FWHM 0.6 f", 3.0, lr, (2, 2, 2)) == Conditioning("auto", prof)
    assert cell_conditioning("unknown", "box (block mean)", 3.0, lr, (2, 2, 2)) == BLIND
    assert cell_conditioning("estimated", "box (block mean)", 3.0, lr, (2, 2, 2)) == Conditioning("auto", None)
    assert parse_settings("known, unknown") == ["known", "unknown"]
    with pytest.raises(SystemExit, match="--conditioning"):
        parse_settings("known,guess")


@pytest.mark.slow
def test_quick_mode_tables_each_setting_of_a_conditioned_model(tmp_path):
    from benchmarks import mri_generalisation as B

    threads = torch.get_num_threads()
    try:
        page = B.main(["--quick", "--quick-conditioned", "--only", "2x2x2", "--conditioning", "known,unknown",
                       "--no-write"])
    finally:
        torch.set_num_threads(threads)
    assert "## 2x2x2, told known" in page and "## 2x2x2, told unknown" in page
    rows = [ln for ln in page.splitlines() if ln.startswith("| Gaussian") or ln.startswith("| box")]
    assert len(rows) == 12 and "nan" not in "\n".join(rows)


def test_profile_estimate_benchmark_scores_against_the_truth(tmp_path):
    """Quick mode (MNI152 at 2 mm, two profiles): the guess costs exactly 0 dB where it is the truth and
    more than 0.1 dB where it is not, and there the estimate costs less than the guess."""
    from benchmarks import mri_profile_estimate as B

    page = B.main(["--quick", "--scales", "1,1,4", "--out", str(tmp_path)])
    rows = [r for r in page.splitlines() if r.startswith("| gaussian:")]
    assert len(rows) == 2
    cells = {r.split(" | ")[0].strip("| "): r.strip("|").split(" | ") for r in rows}
    assert cells["gaussian:1"][4].strip() == "+0.00"  # the guess is the truth here
    assert float(cells["gaussian:0.6"][4]) < -0.1  # a wrong guess costs
    assert float(cells["gaussian:0.6"][3]) > float(cells["gaussian:0.6"][4])  # the estimate costs less
