"""Sliding-window denoising, whole-volume sampling, and training through the core Trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciffusion.plugins import core_sampler
from sciffusion.plugins.mri.data import PatchDataset, heldout_crop, make_pair, training_region
from sciffusion.plugins.mri.infer import WindowedDenoiser, super_resolve
from sciffusion.plugins.mri.model import load_checkpoint
from tests.plugins.mri.helpers import phantom, tiny_config


class _Local(torch.nn.Module):
    """A pointwise 'denoiser' (1x1x1 conv): sliding windows must reproduce it exactly."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(16, 8, 1)

    def forward(self, x, t, cond):
        return self.conv(torch.cat([x, cond], 1)) * t.reshape(-1, 1, 1, 1, 1)


def test_sliding_window_blending_reproduces_a_local_model():
    torch.manual_seed(0)
    model = _Local()
    x, c = torch.randn(2, 8, 20, 12, 16), torch.randn(2, 8, 20, 12, 16)
    t = torch.full((2,), 0.7)
    windowed = WindowedDenoiser(model, (8, 8, 8), overlap=0.25, sw_batch_size=3)
    with torch.no_grad():
        torch.testing.assert_close(windowed(x, t, c), model(x, t, c), atol=1e-5, rtol=1e-5)


def test_super_resolve_shapes_seed_and_spread(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    lr = phantom((10, 12, 9))  # odd sizes: padded to the UNet's multiple, then cropped back
    a = super_resolve(model, lr, samples=2, steps=2, seed=3)
    b = super_resolve(model, lr, samples=2, steps=2, seed=3)
    assert a.mean.shape == a.std.shape == a.cubic.shape == a.trilinear.shape == (20, 24, 18)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert (a.std >= 0).all() and a.std.max() > 0
    c = super_resolve(model, lr, samples=1, steps=2, seed=4)
    assert not np.allclose(c.mean, a.mean) and (c.std == 0).all()
    with pytest.raises(ValueError, match="unknown sampler"):
        super_resolve(model, lr, method="magic")


def test_default_sampler_is_the_cores_and_the_estimate_ignores_it(tiny_checkpoint):
    """No `method`: the core's default sampler. The estimate is the first evaluation, the same for any
    sampler and step count; the samples (and their spread) are not."""
    model = load_checkpoint(tiny_checkpoint)
    lr = phantom((8, 8, 8))
    a = super_resolve(model, lr, samples=2, steps=3, seed=1)
    b = super_resolve(model, lr, samples=2, steps=3, seed=1, method=core_sampler())
    np.testing.assert_array_equal(a.std, b.std)
    c = super_resolve(model, lr, samples=2, steps=2, seed=1, method="dpmpp_2m")
    np.testing.assert_array_equal(a.mean, c.mean)
    assert not np.allclose(a.std, c.std)


def test_patch_dataset_respects_the_held_out_region():
    cfg = tiny_config((2, 2, 2))
    hr = phantom((32, 64, 32))
    pair = make_pair(hr, cfg)
    region = training_region(pair.hr.shape, axis=1, holdout=(24, 40), guard=4)
    ds = PatchDataset([pair], cfg, regions=[region], length=50, seed=1)
    x0, cond = ds[7]
    assert x0.shape == cond.shape == (8, 8, 8, 8)
    x0b, _ = ds[7]
    torch.testing.assert_close(x0, x0b)  # an item is a pure function of its index
    rng = np.random.default_rng(0)
    for _ in range(100):
        c = ds._corner(rng, 0)
        assert c[1] + 16 <= 20 or c[1] >= 44, c  # never touches the held-out slab or its guard band
        assert all(ci % 2 == 0 for ci in c)  # aligned to the scale
    crop, reg = heldout_crop((40, 232, 40))
    assert crop[1] == slice(104, 168) and reg.shape == (40, 64, 40) and reg[:, 8:56].all() and not reg[:, :8].any()


def test_train_resume_and_export(tmp_path):
    from sciffusion.plugins.mri.train import train_sr

    cfg = tiny_config((2, 2, 2))
    vols = [phantom((32, 32, 32), seed=s) for s in (0, 1)]
    ema = train_sr(vols, cfg, tmp_path / "run", steps=2, batch_size=2, checkpoint_every=1, progress=False)
    assert (tmp_path / "run" / "model.pt").is_file()
    first = {k: v.clone() for k, v in ema.state_dict().items()}
    ema2 = train_sr(vols, cfg, tmp_path / "run", steps=3, batch_size=2, checkpoint_every=1, progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 1
    back = load_checkpoint(tmp_path / "run" / "model.pt", scale=(2, 2, 2))
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, ema2.state_dict()[k])
    assert any(not torch.equal(first[k], v) for k, v in ema2.state_dict().items())


def test_blind_training_records_the_family(tmp_path):
    import json

    from sciffusion.plugins.mri.blind import BlindFamily
    from sciffusion.plugins.mri.model import SRDenoiser, save_checkpoint
    from sciffusion.plugins.mri.train import train_sr

    cfg = tiny_config((2, 2, 2))
    vols = [phantom((48, 48, 48), seed=0)]
    torch.manual_seed(1)
    init = save_checkpoint(SRDenoiser(cfg), tmp_path / "init.pt")
    train_sr(vols, cfg, tmp_path / "run", steps=1, batch_size=1, progress=False, family=BlindFamily(), init=init)
    blob = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    extra = json.loads(blob["extra"])
    assert extra["degradations"]["fwhm_range"] == [0.5, 1.5] and extra["init"] == "init.pt"
