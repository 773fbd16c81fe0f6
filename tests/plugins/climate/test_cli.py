"""The climate command line: the installed console script, its error path, and what it turns on
for the process that the library calls do not (allocator tuning, zarr's warnings)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from sciffusion.core.memory import retain_freed_memory
from sciffusion.plugins.climate import cli
from sciffusion.plugins.climate.io import era5_sample_path, open_fields
from tests.plugins.climate.helpers import untrained_bundle

SCRIPT = Path(sys.executable).parent / "sciffusion-climate-downscale"


def _script() -> Path:
    if not SCRIPT.exists():
        pytest.fail(f"console script {SCRIPT} is not installed: pip install -e . (pyproject [project.scripts])")
    return SCRIPT


def test_console_script_runs_from_any_directory_without_zarr_warnings(tmp_path):
    # the recipe's path on the ERA5 sample up to a refusal after the data are opened and checked:
    # exit status 2, the error in one line, no warning (zarr's about sample_info.json), nothing written
    res = subprocess.run([str(_script()), "--holdout", "22", "--quiet"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr == "error: holdout=22 must leave at least 3 of the 24 times for training\n"
    assert list(tmp_path.iterdir()) == []


def _opened_with_warnings(source) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_fields(source, ["t2m"])
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def test_open_fields_drops_only_zarrs_warning_about_foreign_files(tmp_path):
    assert _opened_with_warnings(None) == [] and _opened_with_warnings(era5_sample_path()) == []
    ds = xr.Dataset({"t2m": (("time", "latitude", "longitude"), np.zeros((2, 3, 4), np.float32))},
                    coords={"time": np.arange(2), "latitude": [0.0, 1.0, 2.0], "longitude": [0.0, 1.0, 2.0, 3.0]})
    for consolidated in (True, False):
        path = tmp_path / f"c{consolidated}.zarr"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # zarr's note on consolidated metadata in format 3, when writing
            ds.to_zarr(path, mode="w", consolidated=consolidated)
        (path / "notes.json").write_text("{}")   # a file that is not part of the zarr hierarchy
        assert _opened_with_warnings(path) == []


def test_the_warning_filter_is_narrow(tmp_path, monkeypatch):
    real = xr.open_zarr

    def noisy(*args, **kwargs):
        warnings.warn("Object at extra.txt is not recognized as a component of a Zarr hierarchy.", UserWarning, stacklevel=2)
        warnings.warn("something else about the store", UserWarning, stacklevel=2)
        return real(*args, **kwargs)

    monkeypatch.setattr(xr, "open_zarr", noisy)
    assert _opened_with_warnings(era5_sample_path()) == ["UserWarning: something else about the store"]


def test_the_command_turns_on_allocator_tuning_and_the_library_does_not(tmp_path):
    from sciffusion.plugins.climate.downscale import train

    bundle, ds = untrained_bundle(("t2m",))
    retain_freed_memory.cache_clear()   # a record of calls, not of the allocator's state
    bundle.sample(np.full((1, 1, 4, 8), 280.0), members=1, steps=1)
    train(ds, bundle.cfg, [0, 1, 2], tmp_path / "run", steps=1, batch_size=2, checkpoint_every=1)
    assert retain_freed_memory.cache_info().currsize == 0
    assert cli.main(["--members", "0", "--quiet"]) == 2
    assert retain_freed_memory.cache_info().currsize == 1
