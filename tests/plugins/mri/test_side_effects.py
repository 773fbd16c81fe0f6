"""The MRI library leaves the process alone; the command line opts in to the allocator setting."""

from __future__ import annotations

import ctypes

import pytest

from sciffusion.core import memory
from sciffusion.plugins.mri import cli
from sciffusion.plugins.mri.infer import super_resolve
from sciffusion.plugins.mri.model import load_checkpoint
from tests.plugins.mri.helpers import phantom


@pytest.fixture
def libc_calls(monkeypatch):
    """Every `ctypes.CDLL` opened by `retain_freed_memory` (its cache cleared before and after)."""
    calls = []

    def fake_cdll(name, *a, **kw):
        calls.append(name)
        raise OSError("no C library in this test")

    memory.retain_freed_memory.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", fake_cdll)
    yield calls
    memory.retain_freed_memory.cache_clear()


def test_super_resolve_does_not_tune_the_allocator(tiny_checkpoint, libc_calls):
    model = load_checkpoint(tiny_checkpoint)
    out = super_resolve(model, phantom((8, 8, 8)), samples=1, steps=1, seed=0)
    assert out.mean.shape == (16, 16, 16)
    assert libc_calls == []


def test_the_command_line_opts_in(libc_calls, tmp_path, capsys):
    assert cli.main(["--adapt", "-1", "--quiet", "--out", str(tmp_path / "o")]) == 2
    assert "--adapt" in capsys.readouterr().err
    assert len(libc_calls) == 1
