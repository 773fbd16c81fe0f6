"""Training: one `Trainer` for every plugin, with EMA, mixed precision, atomic checkpoints, exact resume
and DDP under `torchrun`.

    from sciffusion.core.train import Trainer, TrainConfig
    trainer = Trainer(model, process, dataset, TrainConfig(steps=2000, batch_size=64, out_dir="runs/x"))
    trainer.fit(resume=True)
    trainer.ema_model                                  # the weights sampling uses
"""

from sciffusion.core.train.checkpoint import CheckpointError, CheckpointMismatchError
from sciffusion.core.train.ema import EMA, decay_from_half_life
from sciffusion.core.train.trainer import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    denoising_loss_fn,
    latest_checkpoint,
    load_weights,
)

__all__ = [
    "EMA",
    "CheckpointError",
    "CheckpointMismatchError",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "decay_from_half_life",
    "denoising_loss_fn",
    "latest_checkpoint",
    "load_weights",
]
