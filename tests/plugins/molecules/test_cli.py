"""The molecule command line's rules of thumb, as plain functions of the plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

from sciffusion.plugins.molecules.cli import DEFAULTS, build_parser, check_counts
from sciffusion.plugins.molecules.data import MolInputError
from sciffusion.plugins.molecules.train import train_config


@pytest.mark.parametrize(
    "steps, warmup, half_life", [(2000, 200, 100.0), (20000, 200, 1000.0), (100, 10, 10.0), (3, 0, 10.0)]
)
def test_train_config_rules_of_thumb(tmp_path, steps, warmup, half_life):
    cfg = train_config(steps, 64, 5e-4, tmp_path / "run", seed=3, device="cpu")
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, cfg.device) == (steps, 64, 5e-4, 3, "cpu")
    assert cfg.warmup_steps == warmup and cfg.ema_half_life == half_life
    assert cfg.min_lr_ratio == 0.1 and cfg.lr_schedule == "cosine" and cfg.checkpoint_every == 250
    assert cfg.out_dir == str(tmp_path / "run")


def test_defaults_per_model_and_count_checks():
    assert DEFAULTS["egnn"]["max_atoms"] == 29
    assert DEFAULTS["graph"]["batch_size"] == 128 and DEFAULTS["egnn"]["batch_size"] == 64
    check_counts(build_parser().parse_args([]))  # the defaults pass
    with pytest.raises(MolInputError, match=r"^--edge-hidden must be a positive count \(at least 1\), got 0$"):
        check_counts(build_parser().parse_args(["--edge-hidden", "0"]))


def test_checkpoint_names_resolve_to_shipped_files_unless_a_file_of_that_name_exists(tmp_path, monkeypatch):
    from sciffusion.plugins.molecules.graph_pipeline import (
        DEFAULT_GRAPH_CHECKPOINT,
        resolve_checkpoint,
    )

    assert resolve_checkpoint("qm9_graph") == DEFAULT_GRAPH_CHECKPOINT
    assert resolve_checkpoint("qm9_graph.pt") == DEFAULT_GRAPH_CHECKPOINT
    assert resolve_checkpoint("no_such_model") == Path("no_such_model")  # loading it names the missing file
    assert resolve_checkpoint(tmp_path / "qm9_graph") == tmp_path / "qm9_graph"  # a folder is never searched
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qm9_graph.pt").write_bytes(b"mine")
    assert resolve_checkpoint("qm9_graph.pt") == Path("qm9_graph.pt")  # the user's own file wins
