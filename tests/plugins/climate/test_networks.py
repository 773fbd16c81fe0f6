"""Several independently trained networks in one model (`NetworkEnsemble`): members drawn in turn
from each, saved and loaded together, each trained as a one-network run of its seed would be, and
the rule that trains four on small training sets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sciffusion.plugins.climate import experiment as ex
from sciffusion.plugins.climate.downscale import DownscaleConfig, Downscaler, sampling, train
from sciffusion.plugins.climate.downscale.sampling import by_network, prepare
from sciffusion.plugins.climate.io import open_fields
from sciffusion.plugins.climate.model import ClimateUNet, NetworkEnsemble, UNetConfig, networks
from tests.plugins.climate.helpers import make_regional, untrained_bundle


def _two_network_bundle() -> tuple[Downscaler, object]:
    bundle, ds = untrained_bundle(variables=("t2m", "u10"))
    cfg = replace(bundle.cfg, networks=2)
    two = Downscaler(cfg, bundle.norm, bundle.grids, bundle.coef, bundle.std, bundle.diurnal)
    return two, ds


def test_members_alternate_between_the_networks(monkeypatch):
    bundle, ds = _two_network_bundle()
    nets = networks(bundle.model)
    assert isinstance(bundle.model, NetworkEnsemble) and len(nets) == 2 and nets[0] is not nets[1]

    def fake_draw(model, process, prep, ts, gen, opts, dev, mask=None):   # x0 = the network's index
        return np.full((len(ts), *prep.b.shape[1:]), float(nets.index(model)))

    monkeypatch.setattr(sampling, "draw", fake_draw)
    truth = np.stack([ds[v].values[:3] for v in ("t2m", "u10")], axis=1).astype(np.float64)
    coarse = bundle.grids.coarsen(truth)
    out = bundle.sample(coarse, members=5, steps=1, batch_size=4, conserve=False)
    prep = prepare(bundle, coarse, None, "infill")
    for k in range(5):   # z - B - m = s x0, x0 = k mod 2
        x0 = (bundle.norm.forward(out[k].astype(np.float64)) - prep.b - prep.m) / bundle.std
        np.testing.assert_allclose(x0, k % 2, atol=1e-3)


def test_by_network_keeps_the_batch_order_and_drops_empty_parts():
    chunk = [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1)]
    assert by_network(chunk, 2) == [(0, [(0, 0), (2, 0), (4, 1)]), (1, [(1, 0), (3, 1)])]
    assert by_network(chunk, 1) == [(0, chunk)]
    assert by_network([(1, 0), (3, 0)], 2) == [(1, [(1, 0), (3, 0)])]


def test_an_ensemble_samples_and_round_trips_through_its_checkpoint(tmp_path):
    bundle, ds = _two_network_bundle()
    with torch.no_grad():
        networks(bundle.model)[1].out.bias.fill_(0.5)       # the two networks now differ
    again = Downscaler.load(bundle.save(tmp_path / "two.pt"))
    assert again.cfg.networks == 2 and len(networks(again.model)) == 2
    for a, b in zip(networks(bundle.model), networks(again.model)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    truth = np.stack([ds[v].values[:2] for v in ("t2m", "u10")], axis=1).astype(np.float64)
    out = again.sample(again.grids.coarsen(truth), members=2, steps=2)
    assert out.shape == (2, 2, 2, 16, 32) and np.isfinite(out).all()


def test_a_network_ensemble_needs_one_architecture():
    a, b = ClimateUNet(UNetConfig(2, 7, (8, 8, 8))), ClimateUNet(UNetConfig(2, 7, (8, 16, 16)))
    with pytest.raises(ValueError, match="same UNetConfig"):
        NetworkEnsemble([a, b])
    with pytest.raises(ValueError, match="networks=0"):
        DownscaleConfig(variables=("t2m",), networks=0).check()


def test_each_network_is_trained_as_a_one_network_run_of_its_seed(tmp_path):
    ds = open_fields(make_regional(n_time=6), ["t2m", "u10"])
    cfg = DownscaleConfig(variables=("t2m", "u10"), factor=3, widths=(8, 8, 8), strip_height=8, alignments=1,
                          lat_alignments=1)
    kw = {"steps": 3, "batch_size": 2, "checkpoint_every": 3}
    two = train(ds, replace(cfg, networks=2), [0, 1, 2, 3], tmp_path / "two", seed=4, **kw)
    one = train(ds, cfg, [0, 1, 2, 3], tmp_path / "one", seed=5, **kw)
    assert (tmp_path / "two" / "net0").is_dir() and (tmp_path / "two" / "net1").is_dir()
    first, second = networks(two.model)
    for k, v in one.model.state_dict().items():
        assert torch.equal(second.state_dict()[k], v), k
    assert not all(torch.equal(first.state_dict()[k], v) for k, v in one.model.state_dict().items())


def test_small_training_sets_train_four_networks_by_default(capsys):
    cfg = ex.ExperimentConfig()
    ds = open_fields(make_regional(n_time=8), ["t2m", "u10"])
    assert ex.model_config(cfg, ds, ("t2m", "u10"), list(range(6)), "synthetic").networks == ex.SMALL_NETWORKS == 4
    assert "4 networks" in capsys.readouterr().out
    assert ex.model_config(replace(cfg, networks=1), ds, ("t2m", "u10"), list(range(6)), "synthetic").networks == 1
    ex.small_training_set(cfg, 18 * 181 * 360)
    assert "1 network\n" in capsys.readouterr().out
    from sciffusion.plugins.climate.cli import parse_args

    assert parse_args(["--networks", "3"]).networks == 3 and parse_args([]).networks is None
