"""core.memory: freed sampling buffers stay in the heap instead of faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_CHURN = """
import resource, sys, torch
sys.path.insert(0, {root!r})
if {retain}:
    from sciffusion.core.memory import retain_freed_memory
    assert retain_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(64 << 18).fill_(1.0)  # 64 MB, freed at once: one denoising step's activations
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
def test_retained_heap_stops_page_fault_churn():
    root = str(Path(__file__).resolve().parents[2])
    faults = {}
    for retain in (False, True):
        code = _CHURN.format(root=root, retain=retain)
        faults[retain] = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                            check=True).stdout.split()[-1])
    # 20 x 64 MB of fresh pages is ~330k faults; reusing the heap faults once (~16k)
    assert faults[False] > 200_000, faults
    assert faults[True] < faults[False] / 5, faults
