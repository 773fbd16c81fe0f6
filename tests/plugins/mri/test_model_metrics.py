"""Space-to-depth, the denoiser wrapper, checkpoints, and the masked metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sciffusion.plugins.mri.metrics import evaluate, psnr, ssim, uncertainty_correlation
from sciffusion.plugins.mri.model import (
    SRConfig,
    SRDenoiser,
    depth_to_space,
    load_checkpoint,
    save_checkpoint,
    space_to_depth,
)
from tests.plugins.mri.helpers import tiny_config


def test_space_to_depth_is_a_block_permutation():
    x = torch.arange(2 * 4 * 6 * 8, dtype=torch.float32).reshape(1, 2, 4, 6, 8)
    y = space_to_depth(x, (2, 1, 4))
    assert y.shape == (1, 16, 2, 6, 2)
    # channel (c, i, j, k) at (a, b, d) is voxel (f_x a + i, b + j, f_z d + k) of channel c
    assert y[0, 1 * 8 + 1 * 4 + 0 * 4 + 3, 1, 5, 1] == x[0, 1, 2 + 1, 5, 4 + 3]
    torch.testing.assert_close(depth_to_space(y, (2, 1, 4)), x)


def test_config_json_round_trip():
    cfg = SRConfig(scale=(1, 1, 4), patch=(32, 32, 12), notes={"data": "x"})
    assert SRConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"^SRConfig: unknown keys \['colour'\] in dict"):
        SRConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def test_denoiser_shapes_and_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = SRDenoiser(tiny_config((1, 1, 4))).eval()
    x = torch.randn(2, 4, 8, 8, 4)
    t = torch.tensor([0.3, 0.9])
    out = model(x, t, torch.randn_like(x))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="needs cond"):
        model(x, t)
    path = save_checkpoint(model, tmp_path / "m.pt", extra={"steps": 3})
    back = load_checkpoint(path, scale=(1, 1, 4))
    c = torch.randn_like(x)
    torch.testing.assert_close(back(x, t, c), model(x, t, c))
    with pytest.raises(ValueError, match=r"m\.pt: checkpoint was trained for scale 1,1,4, but scale 2,2,2"):
        load_checkpoint(path, scale=(2, 2, 2))
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    with pytest.raises(ValueError, match=r"junk\.pt is not an MRI super-resolution checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt"):
        load_checkpoint(tmp_path / "nothere.pt")


def test_metrics_against_hand_computation():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 200, (16, 16, 16)).astype(np.float32)
    mask = np.zeros(ref.shape, bool)
    mask[4:12, 4:12, 4:12] = True
    p = np.percentile(ref[mask], 99.5)
    x = ref + rng.normal(0, 30, ref.shape).astype(np.float32)
    a, b = np.clip(x[mask] / p, 0, 1), np.clip(ref[mask] / p, 0, 1)
    assert psnr(x, ref, mask) == pytest.approx(10 * np.log10(1 / np.mean((a - b) ** 2)), rel=1e-6)
    assert ssim(ref, ref, mask) == pytest.approx(1.0, abs=1e-6)
    assert ssim(x, ref, mask) < 0.99
    # errors outside the mask do not count
    y = ref.copy()
    y[~mask] = 0
    assert psnr(y, ref, mask) == float("inf") or psnr(y, ref, mask) > 100
    table = evaluate({"noisy": x, "exact": ref}, ref, mask)
    assert table["noisy"]["psnr"] < table["exact"]["psnr"]


def test_uncertainty_correlation_detects_informative_std():
    rng = np.random.default_rng(1)
    ref = np.zeros((10, 10, 10))
    std = rng.uniform(0.1, 2.0, ref.shape)
    x = ref + std * rng.normal(size=ref.shape)
    mask = np.ones(ref.shape, bool)
    assert uncertainty_correlation(std, x, ref, mask) > 0.3
    assert abs(uncertainty_correlation(rng.uniform(size=ref.shape), x, ref, mask)) < 0.15
