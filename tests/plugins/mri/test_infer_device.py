"""Inference on any device: the precomputed blending map, the kept first prediction, autocast, window batches."""

from __future__ import annotations

import copy

import monai.data.utils
import monai.inferers
import monai.inferers.utils
import numpy as np
import pytest
import torch

from sciffusion.core.diffusion.process import DiffusionProcess
from sciffusion.core.diffusion.schedules import get_schedule
from sciffusion.plugins.mri import cli, infer
from sciffusion.plugins.mri.infer import (
    WindowedDenoiser,
    default_sw_batch_size,
    super_resolve,
)
from sciffusion.plugins.mri.model import SRDenoiser
from tests.plugins.mri.helpers import phantom, tiny_config


@pytest.fixture(scope="module")
def tiny_model() -> SRDenoiser:
    """A tiny UNet whose zero-initialised layers (MONAI starts residual branches and the output at 0) are
    random too, so that its prediction depends on every input and every window."""
    torch.manual_seed(0)
    model = SRDenoiser(tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model


@pytest.fixture
def map_builds(monkeypatch) -> list:
    """Every call of MONAI's `compute_importance_map`, ours and the inferer's, is recorded."""
    calls, original = [], monai.data.utils.compute_importance_map

    def counted(*a, **k):
        calls.append(a[0] if a else k["patch_size"])
        return original(*a, **k)

    monkeypatch.setattr(monai.data.utils, "compute_importance_map", counted)
    monkeypatch.setattr(monai.inferers.utils, "compute_importance_map", counted)
    return calls


def _monai_own_map(monkeypatch) -> None:
    """Make every sliding-window call build its own map (MONAI's default), as if none were passed."""
    original = monai.inferers.sliding_window_inference

    def without_map(*a, roi_weight_map=None, **k):
        return original(*a, **k)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", without_map)


def test_precomputed_map_gives_monai_output_and_is_built_once(tiny_model, map_builds, monkeypatch):
    lr = phantom((14, 12, 10))  # low-res grid 14 x 12 x 10 > roi 8^3: several windows per step
    kw = {"samples": 2, "steps": 3, "seed": 1, "roi": (8, 8, 8), "sw_batch_size": 3}
    ours = super_resolve(tiny_model, lr, **kw)
    assert map_builds == [(8, 8, 8)]  # once for the run, not once per denoiser call (3 steps, 2nd order)
    _monai_own_map(monkeypatch)
    theirs = super_resolve(tiny_model, lr, **kw)
    assert len(map_builds) > 3  # rebuilt at each call when not passed
    for a, b in ((ours.mean, theirs.mean), (ours.sample_mean, theirs.sample_mean), (ours.std, theirs.std)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_first_call_keeps_only_its_x0_prediction(tiny_model):
    process = DiffusionProcess(get_schedule("cosine"), prediction="v")
    net = WindowedDenoiser(tiny_model, (8, 8, 8), sw_batch_size=2, process=process)
    gen = torch.Generator().manual_seed(0)
    x1, x2, cond = (torch.randn(2, 8, 12, 10, 8, generator=gen) for _ in range(3))
    t1, t2 = torch.ones(2), torch.full((2,), 0.5)
    with torch.no_grad():
        out1 = net(x1, t1, cond)
        net(x2, t2, cond)
    torch.testing.assert_close(net.first_x0, process.predict_x0(out1, x1, t1))
    tensors = [k for k, v in vars(net).items() if isinstance(v, torch.Tensor)]
    assert tensors == ["first_x0", "_weights"] and net._weights.shape == (8, 8, 8)


def test_bf16_autocast_runs_the_unet_in_bf16_and_stays_close_to_fp32(tiny_model):
    seen = []
    hook = tiny_model.unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    lr = phantom((12, 12, 10))
    kw = {"samples": 2, "steps": 3, "seed": 2, "roi": (8, 8, 8)}
    try:
        fp32 = super_resolve(tiny_model, lr, precision="fp32", **kw)
        n32 = len(seen)
        bf16 = super_resolve(tiny_model, lr, precision="bf16", **kw)
    finally:
        hook.remove()
    assert set(seen[:n32]) == {torch.float32} and set(seen[n32:]) == {torch.bfloat16}
    assert bf16.mean.dtype == fp32.mean.dtype
    width = float(lr.max() - lr.min())
    for a, b in ((bf16.mean, fp32.mean), (bf16.sample_mean, fp32.sample_mean)):
        diff = np.abs(a - b)
        assert 0 < diff.max() < 0.01 * width, diff.max()  # rounded, but by much less than 1 % of the range


def test_window_batch_scales_with_free_gpu_memory(monkeypatch):
    roi, channels = (48, 48, 48), (32, 48, 64)
    assert default_sw_batch_size("cpu", roi, channels) == infer.CPU_SW_BATCH == 2
    per_window = infer.ACTIVATION_FACTOR * 32 * 48**3 * 4  # about 230 MB
    for free, expected in ((80e9, 16), (4 * 5 * per_window + 1, 5), (1e8, 1)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, f=free: (int(f), int(2 * f)))
        assert default_sw_batch_size("cuda", roi, channels) == expected
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 5 * per_window, 10**11))
    assert default_sw_batch_size("cuda", roi, channels, torch.bfloat16) == 10  # half the bytes per value


def test_command_line_passes_the_gpu_settings(monkeypatch, capsys):
    from sciffusion.plugins.mri.conditioning import Conditioning

    seen = {}
    monkeypatch.setattr(cli, "single", lambda args, say: seen.update(cli.inference_options(args)) or 0)
    assert cli.main(["--device", "cpu", "--quiet"]) == 0
    default_told = Conditioning("auto", "auto")  # the defaults: noise and (thick slices) profile estimated
    assert seen == {"sw_batch_size": None, "precision": "auto", "conditioning": default_told, "consistency": True}
    assert cli.main(["--device", "cpu", "--quiet", "--sw-batch-size", "8", "--precision", "bf16",
                     "--data-consistency", "off"]) == 0
    assert seen == {"sw_batch_size": 8, "precision": "bf16", "conditioning": default_told, "consistency": False}
    assert cli.main(["--device", "cpu", "--quiet", "--sw-batch-size", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --sw-batch-size must be >= 1, got 0"


def test_model_forward_on_device(tiny_model, device):
    model = SRDenoiser(tiny_config()).to(device).eval()
    model.load_state_dict(tiny_model.state_dict())
    gen = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 8, 8, 8, 6, generator=gen), torch.randn(2, 8, 8, 8, 6, generator=gen)
    t = torch.tensor([0.2, 0.8])
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32, as on the CPU
        out = model(x.to(device), t.to(device), c.to(device))
        ref = tiny_model(x, t, c)
    assert out.device.type == device.type and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), ref, atol=1e-3, rtol=1e-3)


def test_super_resolve_on_device(tiny_model, device):
    model = copy.deepcopy(tiny_model)
    lr = phantom((12, 10, 10))
    res = super_resolve(model, lr, samples=2, steps=2, seed=0, roi=(8, 8, 8), device=device)
    assert res.mean.shape == res.std.shape == (24, 20, 20)
    assert np.isfinite(res.mean).all() and np.isfinite(res.std).all() and res.std.max() > 0
    assert np.abs(res.mean - res.cubic).max() < 0.5 * float(lr.max() - lr.min())
    assert next(model.parameters()).device.type == device.type
