"""One `Trainer` for every plugin: EMA, mixed precision, atomic checkpoints, exact resume, DDP.

    cfg = TrainConfig(steps=2000, batch_size=64, lr=2e-4, out_dir="runs/x")
    trainer = Trainer(model, process, dataset, cfg)   # loss: losses.denoising_loss by default
    trainer.fit(resume=True)                           # continues from the newest good checkpoint
    trainer.ema_model                                  # the weights sampling uses

Each optimiser step minimises the per-process batch loss `L(theta)` with AdamW
(Loshchilov & Hutter 2019) at rate `lr * f(step)` (linear warm-up, then constant, cosine
or linear decay), after clipping `||grad L||_2` to `grad_clip`, and then updates the EMA
`theta_ema <- beta theta_ema + (1 - beta) theta`. Under `torchrun` each of the `W`
processes sees its own shard of the data (`DistributedSampler`) and DDP averages the
gradients, so a step equals a single-process step on a `W * batch_size` batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from sciffusion.core.atomic import atomic_write, atomic_write_text
from sciffusion.core.config import JsonConfig
from sciffusion.core.train.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    capture_rng,
    check_config,
    check_state_dict,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)
from sciffusion.core.train.data import BatchStream, init_distributed, seed_everything, to_device
from sciffusion.core.train.ema import EMA, decay_from_half_life

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "denoising_loss_fn",
    "latest_checkpoint",
    "load_weights",
]

LR_SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Fields that may change between a run and its resumption: they do not alter the trajectory
# (steps only moves the finish line; with a decaying schedule a warning says the curve moved).
RESUMABLE_FIELDS = frozenset(
    {"steps", "checkpoint_every", "keep_last", "log_every", "out_dir", "num_workers", "persistent_workers",
     "device", "tf32", "cudnn_benchmark", "channels_last"}
)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Everything that decides a training run; saved as JSON beside every checkpoint.

    `batch_size` is per process and micro-batch: under `torchrun --nproc_per_node=W` a step sees
    `W * grad_accum * batch_size` examples (gradients of `grad_accum` micro-batches are averaged). `ema_decay` (beta) and `ema_half_life` (h steps, beta = 0.5 ** (1/h)) are
    alternatives; with neither, beta = 0.999. `precision="auto"` is bf16 autocast on CUDA
    where the GPU has native bf16 (fp16 with a gradient scaler elsewhere) and fp32 on the CPU; the master weights
    are always fp32. `lr_schedule` multiplies `lr` by `(s + 1) / warmup_steps` during warm-up,
    then by 1 ("constant"), or decays to `min_lr_ratio` by the last step ("cosine", "linear").
    `device` is where the run trains (default: CUDA when present, one GPU per process under
    torchrun). `num_workers` loader processes prepare the batches (`persistent_workers`: the same
    processes serve every epoch; batches are pinned for the copy to a GPU). On CUDA only, and during
    `fit` only: `tf32` allows TF32 matmuls and convolutions (Ampere and newer), `cudnn_benchmark`
    lets cuDNN time its convolution algorithms once per input shape (a win when the shapes are fixed),
    and `channels_last` stores the weights of 2-D convolutions and 4-D batches as NHWC.
    """

    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    ema_decay: float | None = None
    ema_half_life: float | None = None
    grad_clip: float | None = 1.0
    precision: str = "auto"
    checkpoint_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    seed: int = 0
    out_dir: str = "runs/default"
    num_workers: int = 0
    persistent_workers: bool = True
    device: str | None = None
    tf32: bool = True
    cudnn_benchmark: bool = True
    channels_last: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
        object.__setattr__(self, "out_dir", str(self.out_dir))
        errors = []
        for name in (
            "steps",
            "batch_size",
            "grad_accum",
            "checkpoint_every",
            "keep_last",
            "log_every",
        ):
            if int(getattr(self, name)) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            errors.append(f"lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            errors.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.precision not in PRECISIONS:
            errors.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.warmup_steps < 0 or self.num_workers < 0:
            errors.append("warmup_steps and num_workers must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            errors.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.ema_decay is not None and self.ema_half_life is not None:
            errors.append("give ema_decay or ema_half_life, not both")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            errors.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_half_life is not None and not self.ema_half_life > 0:
            errors.append(f"ema_half_life must be > 0 steps, got {self.ema_half_life}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            errors.append(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if len(self.adam_betas) != 2:
            errors.append(f"adam_betas must have two values, got {self.adam_betas}")
        if errors:
            raise ValueError("invalid TrainConfig: " + "; ".join(errors))

    @property
    def ema_beta(self) -> float:
        """The per-step EMA decay beta, from `ema_decay`, `ema_half_life`, or 0.999."""
        if self.ema_half_life is not None:
            return decay_from_half_life(self.ema_half_life)
        return 0.999 if self.ema_decay is None else float(self.ema_decay)

    def lr_factor(self, step: int) -> float:
        """f(s): the multiplier of `lr` for optimiser step `s` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        if self.lr_schedule == "cosine":
            return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (
                1.0 + math.cos(math.pi * progress)
            )
        return 1.0 - (1.0 - self.min_lr_ratio) * progress

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Read a config written by `to_json` (or the `config` of a checkpoint manifest)."""
        d = json.loads(Path(path).read_text())
        return cls.from_dict(d.get("config", d) if "sha256" in d else d, source=str(path))


def denoising_loss_fn(model: Callable, process: Any, batch: Any) -> torch.Tensor:
    """Default loss: `losses.denoising_loss(model, process, x0, cond=cond)`.

    `batch` is a tensor `x0`, or a sequence `(x0,)` / `(x0, cond)` (what a `TensorDataset` yields).
    """
    from sciffusion.core import losses

    if isinstance(batch, torch.Tensor):
        return losses.denoising_loss(model, process, batch)
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        cond = batch[1] if len(batch) == 2 else None
        return losses.denoising_loss(model, process, batch[0], cond=cond)
    raise TypeError(
        f"the default loss needs a batch that is a Tensor or an (x0, cond) pair, got {type(batch).__name__}; "
        "pass loss_fn=... to the Trainer for other batch layouts"
    )


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest `ckpt_*.pt` in `out_dir` (unverified), or None."""
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def load_weights(model: nn.Module, path: str | Path, ema: bool = True) -> nn.Module:
    """Load a checkpoint's EMA (default) or raw weights into `model`, checking the architecture."""
    ck = load_checkpoint(path)
    state = ck["ema" if ema else "model"]
    check_state_dict(model.state_dict(), state, "ema" if ema else "model", path)
    model.load_state_dict(state)
    return model


# ----------------------------------------------------------------------------- helpers
_NEVER = 2**62  # "no failing step yet"


def _first_failure(first: torch.Tensor, ok: torch.Tensor, step: int) -> torch.Tensor:
    """The first step at which `ok` was false, kept on the device without a host sync."""
    return torch.where(ok | (first < _NEVER), first, torch.full_like(first, step))


class _Window:
    """What the Trainer accumulates between two log lines, as device tensors."""

    def __init__(self, device: torch.device) -> None:
        self.bad_loss = torch.full((), _NEVER, dtype=torch.int64, device=device)
        self.bad_grad = torch.full((), _NEVER, dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.grad_norm: torch.Tensor | None = None
        self.steps = 0
        self.t_start = self.t_window = time.perf_counter()

    def record(self, step: int, epoch: int, lr: float, mean: Callable[[torch.Tensor], float]) -> dict[str, Any]:
        """The log line of the window (mean loss across ranks, throughput), then start a new window."""
        now = time.perf_counter()
        record = {
            "step": step,
            "epoch": epoch,
            "loss": mean(self.loss_sum / self.steps),
            "lr": lr,
            "steps_per_sec": self.steps / max(now - self.t_window, 1e-9),
            "time": now - self.t_start,
        }
        if self.grad_norm is not None:
            record["grad_norm"] = float(self.grad_norm)
        self.loss_sum.zero_()
        self.steps, self.t_window = 0, now
        return record


@contextmanager
def _cuda_backends(device: torch.device, tf32: bool, cudnn_benchmark: bool = False) -> Iterator[None]:
    """For the duration of a CUDA run: TF32 matmuls and convolutions (Ampere and newer) and cuDNN's
    per-shape choice of convolution algorithm; the process-wide settings are restored after."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def _memory_format(device: torch.device, channels_last: bool) -> torch.memory_format | None:
    """`torch.channels_last` for a CUDA run that asks for it, else None (leave tensors as they are)."""
    return torch.channels_last if channels_last and device.type == "cuda" else None


def _run_device(requested: str | None, local_rank: int) -> torch.device:
    """The device of a run: `requested` ("cpu", "cuda", "cuda:1"), else CUDA when present; one GPU per process."""
    kind = torch.device(requested).type if requested is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind != "cuda":
        return torch.device(requested or "cpu")
    if requested is not None and torch.device(requested).index is not None:
        return torch.device(requested)
    return torch.device("cuda", local_rank)


class Trainer:
    """Train `model` on `data` with loss `loss_fn(model, process, batch) -> scalar` (see module doc).

    `model(x_t, t, cond=None)` is any `nn.Module`; `data` a map-style `Dataset` (or a tensor) or
    an iterable of examples, batched by `torch.utils.data.default_collate` or `collate_fn`.
    `loss_fn` gets the model wrapped in `DistributedDataParallel` under torchrun (its attributes
    are then under `.module`). Only rank 0 writes checkpoints, `config.json`, `metrics.jsonl`
    and `loss.png` to `cfg.out_dir`.
    """

    def __init__(
        self,
        model: nn.Module,
        process: Any,
        dataset: Dataset | Iterable | torch.Tensor,
        cfg: TrainConfig,
        loss_fn: Callable[[Any, Any, Any], torch.Tensor] | None = None,
        collate_fn: Callable | None = None,
        *,
        progress: bool = True,
    ) -> None:
        self.cfg, self.process = cfg, process
        self.loss_fn = loss_fn or denoising_loss_fn
        self.progress = progress
        self.device = _run_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.rank, self.world_size, _ = init_distributed(self.device.type)
        self.out_dir = Path(cfg.out_dir)
        self.memory_format = _memory_format(self.device, cfg.channels_last)
        self.model = model.to(self.device)
        if self.memory_format is not None:  # only 4-D weights change layout
            self.model = self.model.to(memory_format=self.memory_format)
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model: nn.Module = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.train_model = self.model
        self.ema = EMA(
            self.model, cfg.ema_beta
        )  # after DDP: every rank starts from rank 0's weights
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cfg.lr_factor)
        self.precision = self._resolve_precision()
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.data = BatchStream(
            dataset, cfg, collate_fn, self.rank, self.world_size, pin=self.device.type == "cuda"
        )
        self.step = 0
        self.last_checkpoint: Path | None = None

    @property
    def ema_model(self) -> nn.Module:
        """The EMA weights (an `nn.Module` in eval mode): what sampling should use."""
        return self.ema.model

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    def _resolve_precision(self) -> str:
        p = self.cfg.precision
        if p == "auto":
            if self.device.type != "cuda":
                return "fp32"
            # emulated bf16 (V100, T4) is slower than fp16 with a gradient scaler
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        return p

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Write `ckpt_{step}.pt` (+ manifest) atomically on rank 0 and keep the last `keep_last`.

        Every rank takes part: each one's RNG state is gathered so a resumed run continues
        every rank's random stream. Returns the path on rank 0, None elsewhere.
        """
        rng = capture_rng()
        if self.world_size > 1:
            rngs: list[Any] = [None] * self.world_size
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        path = None
        if self.is_main:
            state = {
                "step": self.step,
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "rng": rngs,
                "world_size": self.world_size,
                "data": self.data.state(),
                "config": self.cfg.to_dict(),
            }
            path = save_checkpoint(state, checkpoint_path(self.out_dir, self.step))
            prune_checkpoints(self.out_dir, self.cfg.keep_last)
        if self.world_size > 1:
            dist.barrier()
        self.last_checkpoint = checkpoint_path(self.out_dir, self.step)
        return path

    def load(self, path: str | Path, checkpoint: Mapping[str, Any] | None = None) -> None:
        """Restore model, EMA, optimiser, scheduler, scaler, step, data position and RNGs from `path`.

        Raises `CheckpointError` (unreadable file) or `CheckpointMismatchError` naming the
        architecture keys or `TrainConfig` fields that differ.
        """
        ck = checkpoint if checkpoint is not None else load_checkpoint(path)
        # a field added to TrainConfig after the checkpoint was written counts at its default
        saved_cfg = {**TrainConfig().to_dict(), **ck["config"]}
        check_config(saved_cfg, self.cfg.to_dict(), set(RESUMABLE_FIELDS), path)
        if (
            saved_cfg.get("steps") != self.cfg.steps
            and self.cfg.lr_schedule != "constant"
            and self.is_main
        ):
            warnings.warn(
                f"resuming {path} with steps={self.cfg.steps} (was {saved_cfg.get('steps')}): "
                f"the {self.cfg.lr_schedule} learning-rate schedule is stretched from here on",
                stacklevel=2,
            )
        check_state_dict(self.model.state_dict(), ck["model"], "model", path)
        check_state_dict(self.ema.model.state_dict(), ck["ema"], "ema", path)
        self.model.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
        except ValueError as err:
            raise CheckpointMismatchError(
                f"checkpoint {path}: optimiser state does not fit: {err}"
            ) from err
        self.scheduler.load_state_dict(ck["scheduler"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.step = int(ck["step"])
        self.data.load_state(ck["data"])
        rngs = ck["rng"]
        if len(rngs) == self.world_size:
            restore_rng(rngs[self.rank])
        else:
            if self.is_main:
                warnings.warn(
                    f"checkpoint {path} was written by {len(rngs)} process(es), this run has "
                    f"{self.world_size}: random streams are reseeded, the run is not bit-exact",
                    stacklevel=2,
                )
            seed_everything(self.cfg.seed + 7919 * self.step + self.rank)
        self.last_checkpoint = Path(path)

    def _resume_point(self) -> tuple[Path, dict[str, Any]] | None:
        """Newest checkpoint in `out_dir` that reads back intact; damaged ones are skipped with a warning."""
        chosen: list[Any] = [None]
        loaded = None
        if self.is_main:
            for p in reversed(list_checkpoints(self.out_dir)):
                try:
                    loaded = load_checkpoint(p)
                except CheckpointError as err:
                    warnings.warn(f"skipping damaged checkpoint: {err}", stacklevel=3)
                    continue
                chosen[0] = str(p)
                break
        if self.world_size > 1:
            dist.broadcast_object_list(chosen, src=0)
        if chosen[0] is None:
            return None
        if loaded is None:  # other ranks read the file rank 0 verified
            loaded = load_checkpoint(chosen[0], verify=False)
        return Path(chosen[0]), loaded

    # ------------------------------------------------------------------ training
    def fit(self, resume: bool = True) -> None:
        """Train until `cfg.steps` optimiser steps are done.

        With `resume`, continue from the newest good checkpoint in `out_dir` (a fresh start if
        there is none); a fresh start seeds torch, numpy and `random` with `seed + rank`.
        Raises `NonFiniteLossError` naming the first step whose loss (or gradient norm) was NaN or
        infinite; no checkpoint is written after it.
        """
        self._start(resume)
        window = _Window(self.device)
        bar = tqdm(total=self.cfg.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (self.progress and self.is_main and sys.stderr.isatty()))
        try:
            with _cuda_backends(self.device, self.cfg.tf32, self.cfg.cudnn_benchmark):
                while self.step < self.cfg.steps:
                    lr_used = self._optimiser_step(window)
                    bar.update(1)
                    self._end_of_step(window, lr_used, bar)
        finally:
            bar.close()
            self.data.close()
        if self.is_main:
            self.plot_loss()

    def _start(self, resume: bool) -> None:
        """Resume from the newest good checkpoint, or seed a fresh run; write `config.json`."""
        found = self._resume_point() if resume else None
        if found is not None:
            self.load(*found)
        elif self.step == 0:
            stale = list_checkpoints(self.out_dir)
            if stale and resume:
                raise CheckpointError(
                    f"none of the {len(stale)} checkpoints in {self.out_dir} can be read (see the "
                    "warnings); move them away to start afresh"
                )
            if stale:
                raise FileExistsError(
                    f"{self.out_dir} already holds checkpoints of a run (newest {stale[-1].name}); "
                    "pass resume=True to continue it, or choose another out_dir"
                )
            seed_everything(self.cfg.seed + self.rank)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.cfg.to_json(self.out_dir / "config.json")
            self._trim_metrics(self.step)
        self.model.train()

    def _optimiser_step(self, window: _Window) -> float:
        """One optimiser step over `grad_accum` micro-batches; returns the learning rate it used."""
        cfg = self.cfg
        step = self.step + 1
        for micro in range(cfg.grad_accum):
            # DDP all-reduces the gradients once, on the last micro-batch of the step
            last = micro == cfg.grad_accum - 1
            sync = self.train_model.no_sync() if self.world_size > 1 and not last else nullcontext()
            with sync:
                loss = self._forward_backward(self.data.next(), self._autocast_dtype)
            # recorded on the device, checked at the next log point: no host sync per step
            window.bad_loss = _first_failure(window.bad_loss, torch.isfinite(loss), step)
            window.loss_sum += loss / cfg.grad_accum
        if cfg.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            window.grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            if self.scaler is None:  # a NaN gradient with a finite loss corrupts the weights too
                window.bad_grad = _first_failure(window.bad_grad, torch.isfinite(window.grad_norm), step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr_used = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.ema.update(self.model)
        self.step = step
        window.steps += 1
        return lr_used

    def _end_of_step(self, window: _Window, lr_used: float, bar: tqdm) -> None:
        """Every `log_every` steps check for failures and log; every `checkpoint_every`, save."""
        checkpoint_now = self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps
        if checkpoint_now or self.step % self.cfg.log_every == 0:
            self._check_finite(window)
            record = window.record(self.step, self.data.epoch, lr_used, self._mean_across_ranks)
            if self.is_main:
                self._log(record)
                bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
        if checkpoint_now:
            self.save()

    def _forward_backward(self, batch: Any, autocast_dtype: torch.dtype | None) -> torch.Tensor:
        """Loss of one (micro-)batch, back-propagated with weight 1 / grad_accum; returns it detached."""
        dev = self.device
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = self.loss_fn(self.train_model, self.process, to_device(batch, dev, self.memory_format))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(
                f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                f"of shape {getattr(loss, 'shape', None)}"
            )
        loss = loss.reshape(())
        scaled = loss / self.cfg.grad_accum if self.cfg.grad_accum > 1 else loss
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward()
        return loss.detach().to(torch.float64)

    def _check_finite(self, window: _Window) -> None:
        flags = torch.stack([window.bad_loss, window.bad_grad])
        if self.world_size > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        bad_loss, bad_grad = (int(v) for v in flags.tolist())
        if min(bad_loss, bad_grad) < _NEVER:
            # the loss of a step is computed before its gradient: on a tie, the loss failed first
            step, what = (bad_loss, "loss") if bad_loss <= bad_grad else (bad_grad, "gradient norm (the loss was finite)")
            last = self.last_checkpoint if self.last_checkpoint is not None else "none written yet"
            raise NonFiniteLossError(
                f"non-finite {what} at step {step}: training stopped, no checkpoint was "
                f"written after it; last good checkpoint: {last}"
            )

    def _mean_across_ranks(self, value: torch.Tensor) -> float:
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return float(value)

    # ------------------------------------------------------------------ logs and pictures
    def _log(self, record: Mapping[str, Any]) -> None:
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _trim_metrics(self, step: int) -> None:
        """Drop log lines past `step`: a killed run may have logged beyond its last checkpoint."""
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))

    def plot_loss(self, path: str | Path | None = None) -> Path | None:
        """Draw `metrics.jsonl`'s loss against step to `loss.png` (log scale); None if nothing logged."""
        metrics = self.out_dir / "metrics.jsonl"
        if not metrics.is_file():
            return None
        rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
        if not rows:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel(f"loss (mean over {self.cfg.log_every} steps)")
        if all(r["loss"] > 0 for r in rows):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = Path(path) if path is not None else self.out_dir / "loss.png"
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
        return out
