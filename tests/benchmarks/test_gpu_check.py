"""The GPU check script runs end to end (here on the CPU, in quick mode) and refuses a missing GPU in one line."""

import math

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.slow
def test_quick_run_on_the_cpu_gives_a_finite_ratio_per_workload(tmp_path):
    threads = torch.get_num_threads()
    try:
        page = gpu_check.main(["--device", "cpu", "--quick", "--cpu-threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    rows = [ln.split("|")[1:-1] for ln in page.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [r[0].strip().split(",")[0] for r in rows] == ["MRI 2x", "molecules", "climate ERA5 sample x4"]
    for r in rows:
        assert math.isfinite(float(r[3])) and float(r[3]) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_without_a_gpu_it_says_so_in_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--no-write"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]
