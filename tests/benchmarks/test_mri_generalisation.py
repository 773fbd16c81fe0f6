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
    assert len(rows) == 6 and "nan" not in "\n".join(rows)


def test_cells_differ_in_profile_and_noise():
    from benchmarks.mri_generalisation import cell_lowres

    hr = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32) + 1
    box = cell_lowres(hr, (2, 2, 2), "box (block mean)", None, 0)
    np.testing.assert_allclose(box, hr.reshape(8, 2, 8, 2, 8, 2).mean((1, 3, 5)), atol=1e-6)
    noisy = cell_lowres(hr, (2, 2, 2), "box (block mean)", 20.0, 0)
    assert 0.5 * box.mean() / 20 < (noisy - box).std() < 2 * box.mean() / 20
