"""Normalisation round trips and the periodic UNet."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from sciffusion.plugins.climate.io import open_fields
from sciffusion.plugins.climate.model import ClimateUNet, UNetConfig, pad_sphere, pad_to_multiple
from sciffusion.plugins.climate.normalise import Normaliser, fit_normaliser, is_precipitation


def test_normaliser_fits_weighted_stats_and_round_trips(fine_ds):
    ds = open_fields(fine_ds, ["t2m", "u10", "tp"])
    norm = fit_normaliser(ds, ["t2m", "u10", "tp"], [0, 1, 2, 3])
    assert [v.transform for v in norm.variables] == ["none", "none", "log1p"]
    again = Normaliser.from_dict(json.loads(norm.to_json()))
    assert again == norm
    x = np.stack([ds[v].values[:4] for v in ("t2m", "u10", "tp")], axis=1).astype(np.float64)
    z = norm.forward(x)
    # weighted mean 0 / std 1 over the training times
    from sciffusion.plugins.climate.grid import lat_weights

    w = lat_weights(ds["latitude"].values)[None, :, None]
    for c in range(3):
        assert np.mean(z[:, c] * w) == pytest.approx(0.0, abs=1e-8)
        assert np.mean(z[:, c] ** 2 * w) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(norm.inverse(z), x, rtol=1e-6, atol=1e-12)
    zt = norm.forward(torch.from_numpy(x))
    np.testing.assert_allclose(zt.numpy(), z, rtol=1e-10)
    assert norm.inverse(torch.full_like(zt, -50.0))[:, 2].min() >= 0  # precipitation stays >= 0


def test_precipitation_detection():
    assert is_precipitation("tp") and is_precipitation("x", {"standard_name": "precipitation_flux"})
    assert not is_precipitation("t2m", {"units": "K"})


def test_pad_sphere_wraps_longitude_and_repeats_latitude_edges():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    p = pad_sphere(x, 1)
    assert p.shape == (1, 1, 5, 6)
    assert torch.equal(p[0, 0, 1, 0], x[0, 0, 0, -1]) and torch.equal(p[0, 0, 1, -1], x[0, 0, 0, 0])
    assert torch.equal(p[0, 0, 0, 1:-1], x[0, 0, 0]) and torch.equal(p[0, 0, -1, 1:-1], x[0, 0, -1])


def test_unet_is_equivariant_to_longitude_rolls(device):
    """Also: the same numbers with NHWC (channels_last) weights and inputs. On CUDA, convolutions may
    use TF32 (PyTorch's default for cuDNN), hence the looser tolerance there."""
    torch.manual_seed(0)
    net = ClimateUNet(UNetConfig(2, 3, (8, 8, 16), groups=4))
    for p in net.parameters():  # the zero-initialised output layers would hide the check
        torch.nn.init.normal_(p, std=0.2)
    x, c, t = torch.randn(2, 2, 8, 32), torch.randn(2, 3, 8, 32), torch.rand(2)
    net, x, c, t = net.to(device), x.to(device), c.to(device), t.to(device)
    tol = dict(rtol=1e-4, atol=1e-4) if device.type == "cpu" else dict(rtol=1e-2, atol=1e-2)
    out = net(x, t, c)
    assert out.shape == x.shape
    shifted = net(torch.roll(x, 4, -1), t, torch.roll(c, 4, -1))
    torch.testing.assert_close(shifted, torch.roll(out, 4, -1), **tol)
    nhwc = copy.deepcopy(net).to(memory_format=torch.channels_last)
    cl = torch.channels_last
    torch.testing.assert_close(nhwc(x.contiguous(memory_format=cl), t, c.contiguous(memory_format=cl)), out, **tol)
    with pytest.raises(ValueError, match="expects 3 conditioning channels, got 2"):
        net(x, t, c[:, :2])


def _random_net(periodic: bool) -> ClimateUNet:
    torch.manual_seed(0)
    net = ClimateUNet(UNetConfig(1, 1, (4, 4, 4), groups=2, periodic=periodic))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return net


def test_unet_takes_any_grid_size_and_a_regional_domain_never_wraps():
    x = torch.randn(1, 1, 7, 97)
    p = pad_sphere(x, 1, periodic=False)
    assert torch.equal(p[..., 1:-1, 0], x[..., :, 0]) and torch.equal(p[..., 1:-1, -1], x[..., :, -1])
    padded = pad_to_multiple(x, 4, periodic=False)
    assert padded.shape[-2:] == (8, 100) and torch.equal(padded[..., 7, :97], x[..., 6, :])
    assert torch.equal(padded[..., 0, 97:], x[..., 0, -1:].expand(1, 1, 3))
    assert torch.equal(pad_to_multiple(x, 4, periodic=True)[..., 0, 97:], x[..., 0, :3])
    t = torch.rand(1)
    for periodic in (True, False):
        net = _random_net(periodic)
        out = net(x, t, x)
        assert out.shape == x.shape and torch.isfinite(out).all()
        # change the east edge: a convolution's west edge feels it only through the periodic wrap
        # (the whole network mixes everything through GroupNorm's statistics, so test a layer)
        xx = torch.cat([x, x], dim=1)
        bumped = xx.clone()
        bumped[..., -1] += 5.0
        west_change = (net.inp(bumped) - net.inp(xx))[..., 0].abs().max()
        assert (west_change > 1e-3) if periodic else (west_change == 0)
