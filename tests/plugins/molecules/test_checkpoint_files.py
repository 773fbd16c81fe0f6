"""The shipped molecule checkpoints still load through the config base, and importing the
plugin leaves core's schedule registry alone."""

from __future__ import annotations

import subprocess
import sys

import torch

from sciffusion.plugins.molecules.diffusion import MolDiffusionConfig, molecule_schedule
from sciffusion.plugins.molecules.generate import DEFAULT_CHECKPOINT
from sciffusion.plugins.molecules.graph_diffusion import GraphDiffusionConfig, load_graph_model
from sciffusion.plugins.molecules.graph_model import TransformerConfig
from sciffusion.plugins.molecules.graph_pipeline import DEFAULT_GRAPH_CHECKPOINT
from sciffusion.plugins.molecules.model import EGNNConfig
from sciffusion.plugins.molecules.train import load_model


def test_shipped_egnn_checkpoint_loads_with_its_config():
    raw = torch.load(DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)["config"]
    model = load_model(DEFAULT_CHECKPOINT)
    cfg = model.cfg
    assert cfg.to_dict() == raw and MolDiffusionConfig.from_dict(raw) == cfg
    assert cfg.elements == ("H", "C", "N", "O", "F") and type(cfg.egnn) is EGNNConfig
    assert cfg.schedule == "edm_polynomial" and model.process.schedule.name == "edm_polynomial"


def test_shipped_graph_checkpoint_loads_with_its_config():
    raw = torch.load(DEFAULT_GRAPH_CHECKPOINT, map_location="cpu", weights_only=True)["config"]
    cfg = load_graph_model(DEFAULT_GRAPH_CHECKPOINT).cfg
    # the file predates the attention and spectral options: their defaults rebuild its network
    assert cfg.to_dict() == {**raw, "spectral": False, "net": {**raw["net"], "attention": "head"}}
    assert GraphDiffusionConfig.from_dict(raw) == cfg and GraphDiffusionConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.atom_types == ("C", "N", "O", "F", "N+", "O-") and type(cfg.net) is TransformerConfig


def test_shipped_graph_checkpoint_samples_valid_molecules():
    # RDKit validity (no valence correction) of 100 molecules at 50 steps: 0.98 with the reverse step
    # sum_k q(x_s | x_t, x_0 = k) p_hat(k | x_t); 0.61 when the per-x_0 normalisation is left out.
    from sciffusion.plugins.molecules.graph_pipeline import generate_graphs

    gen = generate_graphs(load_graph_model(DEFAULT_GRAPH_CHECKPOINT), n=100, steps=50, seed=0)
    assert gen.metrics["validity"] >= 0.9 and gen.metrics["connectivity"] >= 0.85


def test_a_grid_dense_near_zero_gives_more_valid_molecules_at_few_steps():
    # 200 molecules at 10 steps: 86-88 % valid on the equal-step grid (power 1), 97 % at power 3
    from sciffusion.plugins.molecules.graph_data import dense_to_graphs, graph_to_mol, sanitized

    model = load_graph_model(DEFAULT_GRAPH_CHECKPOINT)

    def validity(power: float) -> float:
        g = torch.Generator().manual_seed(0)
        out = model.sample(model.sample_sizes(200, g), 10, g, grid_power=power)
        graphs = dense_to_graphs(out.X, out.E, out.mask)
        return sum(sanitized(graph_to_mol(a, b, model.cfg.atom_types)) is not None for a, b in graphs) / 200

    equal, dense = validity(1.0), validity(3.0)
    assert dense >= 0.94 and dense - equal >= 0.04


def test_transformer_widths_rule_of_thumb():
    assert TransformerConfig.scaled(96, 24, 5) == TransformerConfig(
        layers=5, dx=96, de=24, dy=64, heads=6, ff_x=192, ff_e=48, ff_y=128
    )
    assert TransformerConfig.scaled(8, 4, 1).heads == 1


def test_importing_the_plugin_leaves_the_core_registry_alone():
    code = (
        "from sciffusion.core import available_schedules as a\n"
        "before = a()\n"
        "import sciffusion.plugins.molecules, sciffusion.plugins.molecules.diffusion, "
        "sciffusion.plugins.molecules.cli\n"
        "print(before == a(), 'edm_polynomial' in a())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
    s = molecule_schedule("edm_polynomial")
    assert s.name == "edm_polynomial" and molecule_schedule("cosine").name == "cosine"


def test_shipped_moses_checkpoint_has_moses_vocabulary_and_samples_molecules():
    # 1,000 samples at 40 steps: 91 % valid (model card); 40 at 20 steps are checked here
    import hashlib
    import json

    from sciffusion.plugins.molecules.graph_pipeline import generate_graphs, resolve_checkpoint
    from sciffusion.plugins.molecules.moses_data import MOSES_ATOM_TYPES, MOSES_MAX_ATOMS

    path = resolve_checkpoint("moses_graph")
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    model = load_graph_model(path)
    assert model.cfg.atom_types == MOSES_ATOM_TYPES and model.cfg.max_atoms == MOSES_MAX_ATOMS
    assert model.cfg.properties == ()
    gen = generate_graphs(model, n=40, steps=20, seed=0)
    assert gen.metrics["validity"] >= 0.6 and gen.metrics["uniqueness"] == 1.0
