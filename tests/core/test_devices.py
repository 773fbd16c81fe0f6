"""The recipes' device rule: auto picks CUDA where a GPU is visible, else the CPU; bad names say so."""

import pytest
import torch

from sciffusion.core.devices import resolve_device


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
