"""Molecules plugin (RDKit + PyTorch Geometric): discrete diffusion of molecular graphs (default)
and E(3)-equivariant diffusion of 3-D molecules.

Graphs: graph_data.py (SMILES <-> graphs) -> graph_model.py (transformer) -> graph_diffusion.py
(process, loss, sampling, NLL) -> graph_pipeline.py (train, generate, score, files).
3-D: data.py -> model.py, diffusion.py -> train.py -> build.py -> metrics.py. See docs/molecules.md.
"""

from .build import bond_matrix, mol_to_smiles, to_rdkit, write_grid, write_sdf
from .data import ELEMENTS, MolInputError, load_qm9, read_molecules, split_indices
from .diffusion import MolDiffusion, MolDiffusionConfig
from .graph_diffusion import (
    GraphDiffusion,
    GraphDiffusionConfig,
    load_graph_model,
    save_graph_model,
)
from .graph_pipeline import generate_graphs, train_graph_model
from .metrics import MolMetrics, evaluate, score_sdf
from .model import EGNN, EGNNConfig
from .train import load_model, save_model, train

__all__ = [
    "EGNN",
    "ELEMENTS",
    "EGNNConfig",
    "GraphDiffusion",
    "GraphDiffusionConfig",
    "MolDiffusion",
    "MolDiffusionConfig",
    "MolInputError",
    "MolMetrics",
    "bond_matrix",
    "evaluate",
    "generate_graphs",
    "load_graph_model",
    "load_model",
    "load_qm9",
    "mol_to_smiles",
    "read_molecules",
    "save_graph_model",
    "save_model",
    "score_sdf",
    "split_indices",
    "to_rdkit",
    "train",
    "train_graph_model",
    "write_grid",
    "write_sdf",
]
