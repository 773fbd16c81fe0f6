"""The device rule of the recipes: `--device auto` is CUDA when a GPU is visible, else the CPU.

Library functions run on the device of their inputs or of the model; only programs choose a device,
and they choose it with `resolve_device`, so every recipe reads `--device` the same way.

    resolve_device("auto")     # device(type='cuda') on a GPU machine, device(type='cpu') elsewhere
    resolve_device("cuda:1")   # as given
"""

from __future__ import annotations

import torch

__all__ = ["DEVICE_HELP", "PRECISIONS", "AutocastModel", "autocast_dtype", "resolve_device"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

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


def autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The inference autocast dtype for `precision` on `device`; None means plain fp32.

    `auto` is bf16 on CUDA devices with native bf16 (`is_bf16_supported(including_emulation=False)`:
    Ampere and newer), fp16 on older CUDA devices (emulated bf16 is slower than fp16 there), and fp32
    on the CPU, where bf16 is emulated on most processors. Only a network's forward is autocast; a
    sampler's arithmetic stays fp32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if precision == "auto":
        if dev.type != "cuda":
            return None
        precision = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class AutocastModel(torch.nn.Module):
    """`model(x_t, t, cond)` run under `torch.autocast(dtype)` on its input's device, output cast to fp32.

    With `dtype=None` it is the model itself. The sampler sees fp32 tensors either way.
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The wrapped model's prediction, computed in `dtype`, returned in float32."""
        if self.dtype is None:
            return self.model(x_t, t, cond)
        with torch.autocast(x_t.device.type, dtype=self.dtype):
            return self.model(x_t, t, cond).float()
