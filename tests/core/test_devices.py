"""The recipes' device rule: auto picks CUDA where a GPU is visible, else the CPU; bad names say so."""

import pytest
import torch

from sciffusion.core.devices import autocast_dtype, resolve_device


def test_auto_is_cuda_exactly_when_a_gpu_is_visible():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device(None).type == want
    assert resolve_device("cpu") == torch.device("cpu")


def test_bad_device_names_are_one_clear_error():
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is visible"):
            resolve_device("cuda")


def test_autocast_dtype_follows_the_hardware(monkeypatch):
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("fp32", "cuda") is None
    assert autocast_dtype("bf16", "cpu") == torch.bfloat16 and autocast_dtype("fp16", "cuda") == torch.float16
    asked = []
    for native, expected in ((True, torch.bfloat16), (False, torch.float16)):  # V100, T4: fp16, not emulated bf16
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True, n=native: asked.append(including_emulation) or n)
        assert autocast_dtype("auto", "cuda:0") == expected
    assert asked == [False, False]
    with pytest.raises(ValueError, match="--precision: unknown precision 'fp8'"):
        autocast_dtype("fp8", "cpu")
