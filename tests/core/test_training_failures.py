"""Trainer: non-finite losses and gradients stop the run at the right step; device and DDP rules."""

import warnings

import pytest
import torch
from torch import nn

from sciffusion.core import DiffusionProcess, get_schedule
from sciffusion.core.train.checkpoint import list_checkpoints, restore_cuda_rng
from sciffusion.core.train.data import init_distributed
from sciffusion.core.train.trainer import NonFiniteLossError, TrainConfig, Trainer, _cuda_backends


class _FailAt:
    """A loss that is finite until `step`, then non-finite in the loss itself or only in its gradient."""

    def __init__(self, step: int, kind: str) -> None:
        self.step, self.kind, self.calls = step, kind, 0

    def __call__(self, model, process, batch):
        self.calls += 1
        w = model.weight
        loss = ((model(batch) - 1.0) ** 2).mean()
        if self.calls < self.step:
            return loss
        if self.kind == "loss":
            return loss * float("nan")
        return loss + torch.sqrt((w - w.detach()).abs()).sum()   # value unchanged, gradient NaN


@pytest.mark.parametrize(("kind", "what"), [("loss", "non-finite loss"), ("grad", "non-finite gradient norm")])
def test_non_finite_step_is_named_and_nothing_is_saved_after_it(tmp_path, kind, what):
    cfg = TrainConfig(steps=10, batch_size=4, checkpoint_every=2, log_every=5, out_dir=str(tmp_path),
                      lr_schedule="constant", device="cpu")
    trainer = Trainer(nn.Linear(3, 3), DiffusionProcess(get_schedule("cosine")), torch.randn(16, 3), cfg,
                      loss_fn=_FailAt(3, kind), progress=False)
    with pytest.raises(NonFiniteLossError, match=rf"{what}.* at step 3: .*ckpt_00000002\.pt"):
        trainer.fit(resume=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000002.pt"]


def test_cuda_run_asking_for_more_processes_than_gpus_says_so(monkeypatch):
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    monkeypatch.setenv("WORLD_SIZE", str(visible + 2))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(visible + 2))
    monkeypatch.setenv("LOCAL_RANK", str(visible))               # the first process without a GPU
    with pytest.raises(RuntimeError, match=rf"started {visible + 2} processes .* only {visible} GPU"):
        init_distributed("cuda")


def test_cuda_random_states_of_missing_gpus_are_dropped_with_a_warning():
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    saved = [torch.cuda.get_rng_state(i) for i in range(visible)] if visible else []
    extra = [*saved, torch.zeros(16, dtype=torch.uint8)]          # one more GPU than this machine has
    with pytest.warns(UserWarning, match=rf"{visible + 1} GPU\(s\) and {visible} are visible: {visible} restored"):
        restore_cuda_rng(extra)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restore_cuda_rng(saved)                                    # the same count: silent


def test_tf32_and_cudnn_benchmark_only_during_a_cuda_run_and_restored_after():
    def flags():
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark

    before = flags()
    with _cuda_backends(torch.device("cpu"), True, True):
        assert flags() == before
    with _cuda_backends(torch.device("cuda"), True, True):
        assert flags() == (True, True, True)
    with _cuda_backends(torch.device("cuda"), False, False):
        assert flags() == before
    assert flags() == before
