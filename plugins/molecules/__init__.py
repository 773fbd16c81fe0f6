"""Molecules plugin: E(3)-equivariant diffusion of 3-D molecules (RDKit + PyTorch Geometric).

load (data.py) -> model (model.py, diffusion.py) -> train (train.py) -> sample (diffusion.py)
-> build RDKit molecules (build.py) -> evaluate (metrics.py). See docs/molecules.md.
"""

from .build import bond_matrix, mol_to_smiles, to_rdkit, write_grid, write_sdf
from .data import ELEMENTS, MolInputError, load_qm9, read_molecules, split_indices
from .diffusion import MolDiffusion, MolDiffusionConfig
from .metrics import MolMetrics, evaluate, score_sdf
from .model import EGNN, EGNNConfig
from .train import load_model, save_model, train

__all__ = [
    "EGNN", "ELEMENTS", "EGNNConfig", "MolDiffusion", "MolDiffusionConfig", "MolInputError", "MolMetrics",
    "bond_matrix", "evaluate", "load_model", "load_qm9", "mol_to_smiles", "read_molecules", "save_model",
    "score_sdf", "split_indices", "to_rdkit", "train", "write_grid", "write_sdf",
]
