"""The Trainer's batch stream with loader workers: same batches as in-process loading, workers kept across epochs."""

from __future__ import annotations

import os

import torch

from sciffusion.core.train.data import BatchStream, to_device
from sciffusion.core.train.trainer import TrainConfig


class _Indexed(torch.utils.data.Dataset):
    """Item i is (i, the id of the process that loaded it)."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int):
        return torch.tensor(i), torch.tensor(os.getpid())


def _stream(workers: int, persistent: bool = True) -> BatchStream:
    cfg = TrainConfig(batch_size=8, num_workers=workers, persistent_workers=persistent, seed=4)
    return BatchStream(_Indexed(), cfg, None, rank=0, world=1, pin=False)


def _take(stream: BatchStream, n: int) -> tuple[list[list[int]], set[int]]:
    batches, pids = [], set()
    for _ in range(n):
        idx, pid = stream.next()
        batches.append(idx.tolist())
        pids |= set(pid.tolist())
    return batches, pids


def test_persistent_workers_give_the_in_process_batches_and_serve_every_epoch():
    """3 batches per epoch, 10 batches: the order of 0 workers, with 1 or 2 worker processes that live
    through all four epochs (persistent) or are started again each epoch (not persistent); resuming a
    persistent stream mid-epoch continues the same order."""
    reference, main_pid = _take(_stream(0), 10)
    assert main_pid == {os.getpid()} and sorted(i for b in reference[:3] for i in b) == list(range(24))
    for workers in (1, 2):
        stream = _stream(workers)
        batches, pids = _take(stream, 10)
        assert batches == reference and len(pids) == workers and os.getpid() not in pids
        resumed = _stream(workers)
        resumed.load_state({"epoch": 1, "batch": 1})
        assert _take(resumed, 6)[0] == reference[4:10]
        stream.close(), resumed.close()
    batches, pids = _take(_stream(1, persistent=False), 10)
    assert batches == reference and len(pids) == 4  # one new worker per epoch


def test_to_device_sets_the_memory_format_of_4d_float_tensors_only():
    batch = {"x": torch.zeros(2, 3, 4, 5), "i": torch.zeros(2, 3, 4, 5, dtype=torch.long), "v": torch.zeros(2, 3, 4)}
    out = to_device(batch, torch.device("cpu"), torch.channels_last)
    assert out["x"].is_contiguous(memory_format=torch.channels_last) and not out["x"].is_contiguous()
    assert out["i"].is_contiguous() and out["v"].is_contiguous()
    assert to_device(batch, torch.device("cpu"))["x"].is_contiguous()


class _ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x, t, cond=None):
        return self.conv(x)


def test_channels_last_applies_to_cuda_runs_only(tmp_path, device):
    """`channels_last=True`: NHWC weights and batches on CUDA; the CPU run leaves both as they are."""
    seen = []

    def loss_fn(model, process, batch):
        seen.append(batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous())
        return model(batch, None).square().mean()

    cfg = TrainConfig(steps=2, batch_size=4, channels_last=True, checkpoint_every=2, log_every=1,
                      out_dir=str(tmp_path / "run"), device=str(device))
    from sciffusion.core.train.trainer import Trainer

    trainer = Trainer(_ConvNet(), None, torch.randn(8, 2, 6, 6), cfg, loss_fn=loss_fn, progress=False)
    trainer.fit()
    nhwc = device.type == "cuda"
    w = trainer.model.conv.weight
    assert w.is_contiguous(memory_format=torch.channels_last) == nhwc and w.is_contiguous() != nhwc
    assert seen == [nhwc, nhwc]
