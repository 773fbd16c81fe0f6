"""Archive runs into zarr: chunked region writes, resume after a kill, refusal of a foreign store,
and the same output on a LocalCluster of two workers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from recipes.climate_downscale import main
from sciffusion.plugins import core_sampler
from sciffusion.plugins.climate.api import downscale
from sciffusion.plugins.climate.archive import (
    ArchiveConfig,
    create_store,
    pending_chunks,
    run_archive,
    write_chunk,
)
from sciffusion.plugins.climate.downscale import DownscaleConfig, train
from sciffusion.plugins.climate.grid import coarsen_dataset
from sciffusion.plugins.climate.io import open_fields
from tests.plugins.climate.helpers import make_fine

VARS = ("t2m", "u10", "tp")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("archive")
    ds = open_fields(make_fine(n_time=7, n_lat=16, n_lon=32), list(VARS))
    cfg = DownscaleConfig(variables=VARS, widths=(8, 8, 8), strip_height=8, source="synthetic")
    path = train(ds, cfg, list(range(6)), tmp / "run", steps=2, batch_size=4, checkpoint_every=2).save(tmp / "m.pt")
    store = tmp / "coarse.zarr"
    coarsen_dataset(ds, 4).astype(np.float32).to_zarr(store, mode="w")
    cfg = ArchiveConfig(str(store), str(tmp / "whole.zarr"), str(path), members=2, steps=2, seed=3, time_chunk=3,
                        progress=False)
    run_archive(cfg, log=lambda _: None)
    return cfg, tmp


def _values(path):
    with xr.open_zarr(path) as ds:
        return {v: ds[v].values for v in VARS}, ds.attrs, ds["chunk_done"].values


def test_archive_writes_every_chunk_and_matches_the_lazy_api(setup):
    cfg, _ = setup
    got, attrs, done = _values(cfg.out)
    assert done.tolist() == [1, 1, 1] and json.loads(attrs["sciffusion_run"])["time_chunk"] == 3
    want = downscale(xr.open_zarr(cfg.input), cfg.checkpoint, members=2, steps=2, seed=3).compute()
    for v in VARS:
        np.testing.assert_array_equal(got[v], want[v].values)
    with xr.open_zarr(cfg.out) as ds:
        assert ds["t2m"].encoding["chunks"] == (2, 3, 16, 32) and ds["t2m"].attrs["units"] == "K"


def test_a_killed_run_resumes_to_the_same_store(setup, tmp_path):
    cfg, _ = setup
    part = ArchiveConfig(**{**cfg.__dict__, "out": str(tmp_path / "part.zarr")})
    create_store(part, open_fields(cfg.input))
    write_chunk(part, 0)
    # killed while writing chunk 1: its region holds something, its flag is not set
    junk = xr.Dataset({v: (("realization", "time", "latitude", "longitude"), np.full((2, 3, 16, 32), 7.0, np.float32))
                       for v in VARS})
    junk.to_zarr(part.out, region={"time": slice(3, 6)}, mode="r+")
    assert pending_chunks(part) == [1, 2]
    logs = []
    run_archive(part, log=logs.append)
    assert logs == [f"{part.out}: resuming, 2 of 3 time chunks of 3 to write"]
    got, whole = _values(part.out)[0], _values(cfg.out)[0]
    for v in VARS:
        np.testing.assert_array_equal(got[v], whole[v])


def test_a_store_made_by_another_run_is_refused_before_sampling(setup, capsys):
    cfg, tmp = setup
    assert main(["--input", cfg.input, "--checkpoint", cfg.checkpoint, "--out", cfg.out, "--members", "3",
                 "--steps", "2", "--seed", "3", "--time-chunk", "3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {cfg.out}: exists and was made by another run (members is 2, this run has 3); choose another --out or delete it"
    assert cfg.fingerprint(8)["sampler"] == core_sampler()   # a store sampled by another default is refused too
    (tmp / "notzarr.zarr").mkdir()
    assert main(["--input", cfg.input, "--checkpoint", cfg.checkpoint, "--out", str(tmp / "notzarr.zarr"), "--quiet"]) == 2
    assert "notzarr.zarr: exists and is not a zarr store made by this recipe" in capsys.readouterr().err


@pytest.mark.slow
def test_two_workers_on_a_local_cluster_write_the_same_store(setup, tmp_path):
    cfg, _ = setup
    assert main(["--input", cfg.input, "--checkpoint", cfg.checkpoint, "--out", str(tmp_path / "w2.zarr"), "--members", "2",
                 "--steps", "2", "--seed", "3", "--time-chunk", "3", "--workers", "2", "--quiet"]) == 0
    got, whole = _values(tmp_path / "w2.zarr")[0], _values(cfg.out)[0]
    for v in VARS:
        np.testing.assert_array_equal(got[v], whole[v])


def _tuned() -> int:
    from sciffusion.core.memory import retain_freed_memory

    return retain_freed_memory.cache_info().currsize


@pytest.mark.slow
def test_local_cluster_workers_tune_their_allocator_only_when_the_program_opts_in():
    from dataclasses import replace

    from sciffusion.plugins.climate.archive import _client, _tune_workers

    cfg = ArchiveConfig("in.zarr", "out.zarr", "m.pt", workers=1)
    client, cluster = _client(cfg)     # the library's default: workers left alone
    try:
        assert list(client.run(_tuned).values()) == [0]
        _tune_workers(client, replace(cfg, retain_freed_memory=True))   # what _client does for the command
        assert list(client.run(_tuned).values()) == [1]
    finally:
        client.close()
        cluster.close()
