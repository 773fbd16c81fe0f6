"""The shipped MRI checkpoints still load through the config base; damaged or foreign files are
one line naming the file, in the library and on the command line."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from sciffusion.core.train.checkpoint import CheckpointError
from sciffusion.plugins.mri.cli import main
from sciffusion.plugins.mri.model import SRConfig, default_checkpoint, load_checkpoint


@pytest.mark.parametrize("scale", [(2, 2, 2), (1, 1, 4)])
def test_shipped_checkpoints_load_and_their_configs_round_trip(scale):
    path = default_checkpoint(scale)
    raw = json.loads(torch.load(path, map_location="cpu", weights_only=True)["config"])
    model = load_checkpoint(path, scale=scale)
    assert model.config.scale == scale and isinstance(model.config.channels, tuple)
    # every saved field is read back, none lost; a field added later (conditioned) takes its default
    assert model.config.to_dict() == {"conditioned": False, **raw}
    assert SRConfig.from_dict(raw) == model.config


def _bad_file(tmp_path, kind: str):
    bad = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        bad.write_bytes(default_checkpoint((2, 2, 2)).read_bytes()[:4096])
    elif kind == "pickle":
        bad.write_bytes(pickle.dumps({"weights": [1.0, 2.0], "tags": {"a"}}))
    else:  # a checkpoint of another kind (the core Trainer's)
        torch.save({"format": "sciffusion.trainer", "step": 1}, bad)
    return bad


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("truncated", "is truncated or corrupt (an incomplete zip archive)"),
        ("pickle", "is not a torch file of tensors"),
        ("trainer", "is not an MRI super-resolution checkpoint"),
    ],
)
def test_damaged_or_foreign_checkpoint_is_named(tmp_path, capsys, kind, problem):
    bad = _bad_file(tmp_path, kind)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and problem in str(err.value)
    assert main(["--checkpoint", str(bad), "--quiet", "--out", str(tmp_path / "o")]) == 2
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and problem in printed and "weights_only" not in printed
    assert not (tmp_path / "o").exists()
