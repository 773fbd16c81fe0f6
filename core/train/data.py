"""Data plumbing of the Trainer: device moves, the DDP process group, and resumable sharded batches.

A map-style dataset is shuffled per epoch by `DistributedSampler(seed=seed)`, so the order of batches
depends only on the seed and the epoch, and a resumed run skips the consumed indices without loading
them; an iterable is dealt item by item across ranks. Nothing here is home-made distribution: the
process group is `torch.distributed` as `torchrun` sets it up (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import atexit
import itertools
import os
import random
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

__all__ = ["BatchStream", "init_distributed", "seed_everything", "to_device"]


def to_device(batch: Any, device: torch.device, memory_format: torch.memory_format | None = None) -> Any:
    """`batch` (a tensor, or mappings, tuples and lists of them, or anything with `.to`) on `device`;
    4-D floating tensors also in `memory_format` when one is given (`torch.channels_last`)."""
    if isinstance(batch, torch.Tensor):
        out = batch.to(device, non_blocking=True)
        if memory_format is not None and out.dim() == 4 and out.is_floating_point():
            out = out.contiguous(memory_format=memory_format)
        return out
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, memory_format) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(to_device(v, device, memory_format) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device, memory_format) for v in batch)
    if hasattr(batch, "to") and not isinstance(batch, type):  # e.g. a PyG Batch
        return batch.to(device)
    return batch


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global RNG users draw from)
    random.seed(seed)


def init_distributed(device_type: str = "cpu") -> tuple[int, int, int]:
    """(rank, world size, local rank); initialise the process group when torchrun asks for one.

    The backend follows the run's device: NCCL for a CUDA run, Gloo otherwise (a CPU run on a
    machine with GPUs included). A CUDA run takes one GPU per process, so `torchrun` asking for more
    processes per node than there are visible GPUs is an error that says so.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        if device_type == "cuda":
            visible = torch.cuda.device_count()
            if local_rank >= visible:
                local_world = os.environ.get("LOCAL_WORLD_SIZE", "?")
                raise RuntimeError(
                    f"torchrun started {local_world} processes on this node but only {visible} GPU(s) are "
                    f"visible: use --nproc_per_node={visible}, or train on the CPU (device='cpu')"
                )
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank
    return 0, 1, 0


class ShardedIterable(IterableDataset):
    """Every `world`-th item of an iterable, starting at `rank`, after skipping `skip` of them."""

    def __init__(self, source: Iterable, rank: int, world: int, skip: int) -> None:
        self.source, self.rank, self.world, self.skip = source, rank, world, skip

    def __iter__(self):
        return itertools.islice(
            itertools.islice(iter(self.source), self.rank, None, self.world), self.skip, None
        )


class SkipSampler(torch.utils.data.Sampler):
    """A sampler's indices after the first `skip` (the part of an epoch already trained on).

    `set(epoch, skip)` moves it to another epoch, so that one loader (with persistent workers) serves all.
    """

    def __init__(self, sampler: DistributedSampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def set(self, epoch: int, skip: int) -> None:
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class BatchStream:
    """Endless batches with a resumable position (epoch, batches consumed in the epoch).

    A map-style dataset is shuffled per epoch by `DistributedSampler(seed=seed)` (one replica
    when not distributed), so the order depends only on the seed and the epoch; resuming
    skips the consumed indices without loading them. An iterable is sharded item by item
    across ranks and re-iterated each epoch; resuming skips the consumed items.

    With `cfg.num_workers > 0` and `cfg.persistent_workers`, one loader and its worker processes
    serve every epoch (the sampler moves to the next epoch), so a worker's state (a dataset's cache)
    outlives the epoch; `close` ends the workers.
    """

    def __init__(
        self,
        source: Any,
        cfg: Any,  # a TrainConfig: batch_size, num_workers, seed
        collate_fn: Callable | None,
        rank: int,
        world: int,
        pin: bool,
    ) -> None:
        if isinstance(source, DataLoader):
            raise TypeError(
                "pass the Dataset (or iterable) itself, not a DataLoader: the Trainer builds the "
                "loader so that it can shard, shuffle and resume it"
            )
        self.source, self.cfg, self.collate_fn = source, cfg, collate_fn
        self.rank, self.world, self.pin = rank, world, pin
        self.map_style = (
            not isinstance(source, IterableDataset)
            and hasattr(source, "__len__")
            and hasattr(source, "__getitem__")
        )
        if self.map_style and len(source) // world < cfg.batch_size:
            raise ValueError(
                f"dataset has {len(source)} items: fewer than batch_size={cfg.batch_size} "
                f"per process for {world} process(es)"
            )
        if not self.map_style and not isinstance(source, Iterable):
            raise TypeError(
                f"data must be a torch Dataset, a tensor or an iterable, got {type(source).__name__}"
            )
        if not self.map_style and cfg.num_workers > 0 and rank == 0:
            warnings.warn(
                "an iterable data source is read in the main process: num_workers is ignored "
                "(shard it yourself in an IterableDataset to use workers)",
                stacklevel=3,
            )
        self.epoch, self.batch, self._it = 0, 0, None
        self._loader: DataLoader | None = None  # kept across epochs with persistent workers

    def close(self) -> None:
        """End the loader's worker processes (a later batch starts new ones)."""
        self._it = self._loader = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state(self, state: Mapping[str, int]) -> None:
        self.epoch, self.batch, self._it = int(state["epoch"]), int(state["batch"]), None

    def _open(self) -> None:
        bs, cfg = self.cfg.batch_size, self.cfg
        if self._loader is not None:  # persistent workers: the same loader, moved to this epoch
            self._loader.sampler.set(self.epoch, self.batch * bs)
            self._it = iter(self._loader)
            return
        # a private generator: making the iterator must not draw from the global RNG
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.epoch * 1009 + self.rank)
        common = dict(
            batch_size=bs,
            drop_last=True,
            collate_fn=self.collate_fn,
            generator=gen,
            pin_memory=self.pin,
        )
        if self.map_style:
            sampler = DistributedSampler(
                self.source,
                num_replicas=self.world,
                rank=self.rank,
                shuffle=True,
                seed=cfg.seed,
                drop_last=True,
            )
            sampler.set_epoch(self.epoch)
            persistent = cfg.num_workers > 0 and getattr(cfg, "persistent_workers", False)
            loader = DataLoader(
                self.source,
                sampler=SkipSampler(sampler, self.batch * bs),
                num_workers=cfg.num_workers,
                persistent_workers=persistent,
                **common,
            )
            if persistent:
                self._loader = loader
        else:
            shard = ShardedIterable(self.source, self.rank, self.world, self.batch * bs)
            loader = DataLoader(shard, num_workers=0, **common)
        self._it = iter(loader)

    def next(self) -> Any:
        for _ in range(2):
            if self._it is None:
                self._open()
            try:
                out = next(self._it)
                self.batch += 1
                return out
            except StopIteration:
                if self.batch == 0:
                    break
                self.epoch, self.batch, self._it = self.epoch + 1, 0, None
        raise RuntimeError(
            f"the data source gave no full batch of {self.cfg.batch_size} in epoch {self.epoch}: a one-shot "
            "iterator (e.g. a generator) is exhausted; pass a Dataset, a list or an IterableDataset that can be "
            "iterated again"
        )
