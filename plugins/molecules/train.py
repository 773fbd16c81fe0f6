"""Training of a MolDiffusion model (through core's Trainer), and its model files.

A shipped model is one `.pt` file holding {"config": MolDiffusionConfig as a dict, "state": EMA
weights (tensors only)}, loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch_geometric.data import Batch

from sciffusion.core.atomic import atomic_write_text
from sciffusion.core.train.checkpoint import CheckpointError, atomic_torch_save, read_torch_file
from sciffusion.core.train.trainer import TrainConfig, Trainer

from .data import PackedMolecules
from .diffusion import MolDiffusion, MolDiffusionConfig


def save_model(model: MolDiffusion, path: str | Path, state: dict | None = None) -> Path:
    """Write {"config", "state"} atomically (state defaults to the model's own weights)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"config": model.cfg.to_dict(), "state": state or model.state_dict()}, path)
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> MolDiffusion:
    """Rebuild a MolDiffusion from a file written by `save_model` (weights_only load)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    blob = read_torch_file(path, "molecules checkpoint", map_location=device)
    if isinstance(blob, dict) and blob.get("kind") == "graph":
        raise CheckpointError(f"{path} is a graph-diffusion checkpoint, not an EGNN model: use --model graph")
    if not isinstance(blob, dict) or "config" not in blob or "state" not in blob:
        raise CheckpointError(f"{path} is not a molecules checkpoint (expected keys 'config' and 'state')")
    model = MolDiffusion(MolDiffusionConfig.from_dict(blob["config"], source=f"{path} config"))
    model.load_state_dict(blob["state"])
    return model.to(device).eval()


def train_config(steps: int, batch_size: int, lr: float, out_dir: str | Path, seed: int = 0,
                 device: str | None = None) -> TrainConfig:
    """The EGNN's training rules of thumb as a `TrainConfig` for `steps` optimiser steps.

    Warm-up min(200, steps / 10) steps, cosine decay to lr / 10, EMA half-life max(10, steps / 20)
    steps (the averaging window grows with the run), a checkpoint every 250 steps.
    """
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(200, steps // 10),
                       min_lr_ratio=0.1, ema_half_life=max(10.0, steps / 20), checkpoint_every=250,
                       seed=seed, out_dir=str(out_dir), device=device)


def fit_statistics(model: MolDiffusion, data: PackedMolecules) -> None:
    """Set the model's size histogram and element marginal from the training data."""
    hist = torch.bincount(data.n_atoms, minlength=model.cfg.max_atoms + 1).float()
    if len(hist) > model.cfg.max_atoms + 1:
        raise ValueError(f"training data has molecules of {len(hist) - 1} atoms, above max_atoms={model.cfg.max_atoms}")
    model.size_hist.copy_(hist)
    counts = torch.bincount(data.z, minlength=model.cfg.n_types).double()
    model.type_marginal.copy_((counts / counts.sum()).float())


def molecule_loss(model: MolDiffusion, process, batch) -> torch.Tensor:
    """Trainer hook: the model's own joint position/type loss (`MolDiffusion.loss`)."""
    net = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return net.loss(batch)


def collate(items: Sequence) -> Batch:
    """Trainer hook: a list of `Data` to one PyG `Batch`."""
    return Batch.from_data_list(list(items))


def train(model: MolDiffusion, data: PackedMolecules, cfg: TrainConfig, resume: bool = True,
          train_smiles: Sequence[str] | None = None, progress: bool = True) -> MolDiffusion:
    """Train `model` on `data` with core's Trainer; returns the EMA model.

    Writes to cfg.out_dir: the Trainer's checkpoints, model.pt (EMA weights + MolDiffusionConfig,
    what sampling loads), mol_config.json and train_smiles.txt (for novelty).
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fit_statistics(model, data)
    atomic_write_text(out / "mol_config.json", json.dumps(model.cfg.to_dict(), indent=2))
    if train_smiles is not None:
        atomic_write_text(out / "train_smiles.txt", "\n".join(train_smiles) + "\n")
    trainer = Trainer(model, model.process, data, cfg, loss_fn=molecule_loss, collate_fn=collate,
                      progress=progress)
    trainer.fit(resume=resume)
    ema = trainer.ema_model
    save_model(ema, out / "model.pt")
    return ema


def export_model(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write model.pt (EMA weights + config) from the newest Trainer checkpoint of a run folder,
    e.g. to sample from a run that is still training or was interrupted."""
    from sciffusion.core.train.trainer import latest_checkpoint, load_weights

    run = Path(run_dir)
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise FileNotFoundError(f"no Trainer checkpoint (ckpt_*.pt) in {run}")
    cfg = MolDiffusionConfig.from_dict(json.loads((run / "mol_config.json").read_text()))
    model = load_weights(MolDiffusion(cfg), ckpt, ema=True)
    return save_model(model, path or run / "model.pt")
