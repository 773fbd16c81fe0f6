"""The device rule of the recipes: `--device auto` is CUDA when a GPU is visible, else the CPU.

Library functions run on the device of their inputs or of the model; only programs choose a device,
and they choose it with `resolve_device`, so every recipe reads `--device` the same way.

    resolve_device("auto")     # device(type='cuda') on a GPU machine, device(type='cpu') elsewhere
    resolve_device("cuda:1")   # as given
"""

from __future__ import annotations

import torch

__all__ = ["DEVICE_HELP", "resolve_device"]

DEVICE_HELP = "torch device: auto (CUDA when a GPU is visible, else the CPU; the default), cpu, cuda, cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None) is `cuda` when `torch.cuda.is_available()`, else `cpu`; anything else is `torch.device(spec)`.

    A CUDA device asked for on a machine without one is a `ValueError` that says so, before any work starts.
    """
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"--device {spec!r} is not a torch device ({DEVICE_HELP})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: no CUDA device is visible on this machine (use --device cpu or auto)")
    return device
