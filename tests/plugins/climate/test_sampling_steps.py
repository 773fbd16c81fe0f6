"""The named steps behind `Downscaler.sample` (`downscale.sampling`), each against its formula,
and the checkpoint read onto any device."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sciffusion.plugins.climate.downscale import CLAMP, Downscaler, SamplingOptions
from sciffusion.plugins.climate.downscale.sampling import (
    draw,
    finish,
    noise_groups,
    prepare,
    to_physical,
)
from sciffusion.plugins.climate.grid import block_upper_bound
from tests.plugins.climate.helpers import untrained_bundle

VARS = ("t2m", "u10", "tp")


@pytest.fixture(scope="module")
def setup():
    bundle, ds = untrained_bundle(VARS)
    truth = np.stack([ds[v].values[3] for v in VARS])[None].astype(np.float64)   # (1, C, H, W)
    return bundle, truth, bundle.grids.coarsen(truth)


def test_prepare_builds_b_m_and_the_conditioning_channels(setup):
    bundle, truth, coarse = setup
    prep = prepare(bundle, coarse, None, "infill", known=truth)
    b = bundle.grids.up(bundle.norm.forward(coarse))
    np.testing.assert_allclose(prep.b, b)
    np.testing.assert_allclose(prep.m[0], bundle.coef[:, 0], rtol=1e-6)   # no clock times: the intercept alone
    c = len(VARS)
    assert prep.cond.shape == (1, 3 * c + 1, *truth.shape[-2:])
    np.testing.assert_allclose(prep.cond[0, :c], b[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prep.cond[0, c : 2 * c], prep.m[0], rtol=1e-6)
    rel = bundle.std / bundle.std.mean(axis=(-2, -1), keepdims=True)
    np.testing.assert_allclose(prep.cond[0, 2 * c : 3 * c], rel, rtol=1e-5)
    np.testing.assert_allclose(prep.cond[0, -1, :, 0], np.sin(np.deg2rad(bundle.grids.lat)), rtol=1e-6, atol=1e-7)
    z = bundle.norm.forward(truth)
    np.testing.assert_allclose(prep.known_x, (z - b - prep.m) / bundle.std, rtol=1e-4, atol=1e-4)


def test_noise_groups_cover_every_member_and_time_once_in_batches():
    dev = torch.device("cpu")
    shared = noise_groups(3, 4, 5, seed=0, time_seeds=None, dev=dev)
    assert len({id(g) for g, _ in shared}) == 1 and [len(c) for _, c in shared] == [5, 5, 2]
    per_time = noise_groups(3, 4, 2, seed=0, time_seeds=[10, 11, 12, 13], dev=dev)
    jobs = [job for _, chunk in per_time for job in chunk]
    assert sorted(jobs) == sorted((k, t) for k in range(3) for t in range(4))
    for _, chunk in per_time:   # one time per batch, its generator seeded by that time's seed
        assert len({t for _, t in chunk}) == 1 and len(chunk) <= 2
    first = per_time[0][0].initial_seed(), per_time[-1][0].initial_seed()
    assert first == (10, 13)


def test_to_physical_is_the_statistical_mean_at_x0_zero_and_conserves_block_means(setup):
    bundle, _, coarse = setup
    prep = prepare(bundle, coarse, None, "infill")
    zero = np.zeros(prep.b.shape)
    raw = to_physical(bundle, zero, prep, [0], conserve=False, inpainting=True)
    np.testing.assert_allclose(raw, bundle.norm.inverse(prep.b + prep.m), rtol=1e-6)
    kept = to_physical(bundle, zero + 0.5, prep, [0], conserve=True, inpainting=False)
    for c in range(len(VARS)):
        np.testing.assert_allclose(bundle.grids.coarsen(kept[:, c]), coarse[:, c], rtol=1e-6, atol=1e-9)
    high = zero + CLAMP   # without conservation only precipitation (log1p) is capped, by its block's total
    capped = to_physical(bundle, high, prep, [0], conserve=False, inpainting=False)
    free = to_physical(bundle, high, prep, [0], conserve=False, inpainting=True)
    bound = block_upper_bound(np.maximum(coarse[:, 2], 0), 4, bundle.grids.lat)
    np.testing.assert_array_equal(capped[:, :2], free[:, :2])
    np.testing.assert_array_equal(capped[:, 2], np.minimum(free[:, 2], bound))
    assert (free[:, 2] > bound).any()


def test_draw_clamps_sampler_excursions():
    bundle, _ = untrained_bundle(("t2m",), prediction="x0")
    bundle.model = lambda x, t, cond=None: torch.full_like(x, 100.0)   # predicts x0 = 100 everywhere
    prep = prepare(bundle, np.full((1, 1, 4, 8), 280.0), None, "infill")
    x = draw(bundle.model, bundle.process(), prep, [0], torch.Generator().manual_seed(0),
             SamplingOptions(steps=2), torch.device("cpu"))
    assert x.dtype == np.float64 and x.shape == (1, 1, 16, 32) and np.all(x == CLAMP)


def test_finish_puts_known_cells_back_and_blanks_cells_never_observed(setup):
    bundle, truth, _ = setup
    out = np.zeros((2, *truth.shape), np.float32)
    mask = np.zeros(truth.shape, bool)
    mask[..., :3, :5] = True
    missing = np.zeros(truth.shape[1:], bool)
    missing[:, -2:, -4:] = True
    holed = Downscaler(bundle.cfg, bundle.norm, bundle.grids, bundle.coef, bundle.std, bundle.diurnal, bundle.model, missing)
    got = finish(holed, out, truth, mask)
    np.testing.assert_array_equal(got[:, mask], np.broadcast_to(truth[mask], (2, mask.sum())))
    assert np.isnan(got[:, :, missing]).all() and (got[:, ~mask & ~missing[None]] == 0).all()


def test_a_checkpoint_loads_onto_any_device_and_samples_there(setup, device, tmp_path):
    bundle, _, coarse = setup
    path = bundle.save(tmp_path / "b.pt")
    again = Downscaler.load(path, map_location=str(device))
    for name in ("coef", "std", "diurnal"):
        assert isinstance(getattr(again, name), np.ndarray)
    np.testing.assert_allclose(again.coef, bundle.coef, atol=1e-3)   # stored as float16
    ens = again.sample(coarse, members=2, steps=2, seed=0, device=str(device))
    assert ens.shape == (2, *coarse.shape[:2], 16, 32) and np.isfinite(ens).all()


def test_bf16_autocast_rounds_the_members_slightly_and_fp32_is_the_cpu_default(setup):
    bundle, truth, coarse = setup
    bundle = copy.deepcopy(bundle)  # the module's fixture stays untouched
    torch.manual_seed(0)
    for p in bundle.model.parameters():  # an untrained UNet can predict exactly zero; make it say something
        p.data.normal_(0, 0.2)
    kw = {"members": 2, "steps": 2, "seed": 3}
    fp32 = bundle.sample(coarse, precision="fp32", **kw)
    assert np.array_equal(bundle.sample(coarse, **kw), fp32)  # auto is fp32 on the CPU
    bf16 = bundle.sample(coarse, precision="bf16", **kw)
    diff = np.abs(bf16 - fp32)
    scale = truth.std(axis=(0, 2, 3))[None, None, :, None, None]
    assert 0 < float((diff / scale).max()) < 0.05
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        bundle.sample(coarse, precision="fp8", **kw)
