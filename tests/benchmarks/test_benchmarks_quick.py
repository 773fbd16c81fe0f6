"""The benchmarks keep working: each `--quick` mode runs and writes its page; the harness is exact where it
must be (one shared process for every library, metrics that vanish on identical samples, the dense DKS peer
agreeing with the core)."""

from __future__ import annotations

import importlib
import math
import re

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("monai")
# diffusers 0.42 calls np.array(tensor, copy=False) in set_timesteps: noise from the peer, not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BENCHMARKS = ["sampler_accuracy", "sampler_overhead", "train_throughput", "kernel_scaling", "mri_superres"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", BENCHMARKS)
@pytest.mark.slow
def test_quick_mode_writes_its_page(name, tmp_path):
    if name == "mri_superres":
        pytest.importorskip("einops")
    mod = importlib.import_module(f"benchmarks.{name}")
    page = mod.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / f"{name}.md").read_text() == page       # it writes what it returns
    table = [ln for ln in page.splitlines() if ln.startswith("| ") and not set(ln) <= set("|-: ")]
    assert len(table) >= 3, "the page must hold a ratio table"
    cells = [c.strip().strip("*") for row in table[1:] for c in row.strip("|").split("|")]
    numbers = [float(c) for c in cells if re.fullmatch(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", c)]
    assert numbers and all(math.isfinite(v) for v in numbers), table
    assert "nan" not in cells and "inf" not in cells


def test_quick_mode_leaves_the_measured_tables_alone(tmp_path, monkeypatch):
    from benchmarks import _common as C

    monkeypatch.setattr(C, "DOCS", tmp_path)
    mod = importlib.import_module("benchmarks.kernel_scaling")
    p = C.parser("x")
    args = C.parse(p, ["--quick", "--out", str(tmp_path)])
    C.report("probe", "probe", "| a |\n|---|\n| 1 |", [], args, 0.0)
    assert not (tmp_path / "probe.md").exists()
    assert mod.slope([10, 100, 1000], [1.0, 10.0, 100.0]) == pytest.approx(1.0)


def test_peers_share_the_core_process():
    """Discrete timestep k of diffusers/MONAI (trained_betas = betas(1000)) is the core's t = (k + 1) / 1000."""
    from benchmarks.sampler_accuracy import DiscreteTable, peer_scheduler
    from sciffusion.core import get_schedule

    for name in ("cosine", "linear"):
        table, sch = DiscreteTable(name), get_schedule(name)
        k = torch.tensor([0, 10, 500, 998], dtype=torch.float64)
        t = (k + 1) / 1000
        for ki, a_core, s_core in zip(k.tolist(), sch.alpha(t).tolist(), sch.sigma(t).tolist()):
            a, s = table.vp(ki)
            assert a == pytest.approx(a_core, rel=1e-9)
            assert s == pytest.approx(s_core, rel=1e-9)
        ddim = peer_scheduler("diffusers_ddim", name, 10)
        monai = peer_scheduler("monai_ddim", name, 10)
        want = torch.from_numpy(table.abar)
        assert torch.allclose(ddim.alphas_cumprod.double(), want, rtol=1e-4, atol=1e-7)
        assert torch.allclose(monai.alphas_cumprod.double(), want, rtol=1e-4, atol=1e-7)


def test_distances_vanish_on_identical_samples_and_see_a_shift():
    from benchmarks.sampler_accuracy import mmd, sliced_w2

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 4, generator=g, dtype=torch.float64)
    dirs = torch.randn(256, 4, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    assert sliced_w2(x, x, dirs) == 0.0
    assert mmd(x, x, 1.0) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    # a shift by v moves every projection by <u, v>: SW2 = |v| sqrt(E[u_1^2]) = |v| / sqrt(d)
    assert sliced_w2(x + shift, x, dirs) == pytest.approx(2.0 / math.sqrt(4), rel=0.1)
    assert mmd(x + shift, x, 1.0) > 5 * mmd(torch.randn(600, 4, generator=g, dtype=torch.float64), x, 1.0)


def test_dense_peer_agrees_with_kernel_smoothing_score():
    from benchmarks.kernel_scaling import dense_dks_score
    from sciffusion.core.kernels import KernelSmoothingScore

    g = torch.Generator().manual_seed(1)
    data = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    y = torch.randn(32, 2, generator=g, dtype=torch.float64)
    est = KernelSmoothingScore(data, bandwidth=0.05, chunk_size=700)
    assert torch.allclose(est.score(y, 0.1), dense_dks_score(data, y, 0.1), atol=1e-8)
