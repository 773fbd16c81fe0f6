"""The Trainer end to end: exact resume after SIGKILL, DDP under torchrun, sample quality, docs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from core.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_train_worker.py")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _start(args: list[str], torchrun: bool = False) -> subprocess.Popen:
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=0",
            "--rdzv_backend=c10d",
            "--rdzv_endpoint=localhost:0",
            str(WORKER),
            *args,
        ]
    else:
        cmd = [sys.executable, str(WORKER), *args]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _losses(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def _default_loss_available() -> bool:
    try:
        from core import DiffusionProcess, get_schedule, losses  # noqa: F401
    except ImportError:
        return False
    return True


def test_resume_after_sigkill_is_bitwise(tmp_path):
    """N=40 steps straight == killed after the step-20 checkpoint (at step 22) and resumed to 40."""
    loss = "default" if _default_loss_available() else "custom"
    common = ["--mode", "resume", "--steps", "40", "--ckpt-every", "10", "--loss", loss]
    straight = _start([*common, "--out", str(tmp_path / "a")])
    victim = _start([*common, "--out", str(tmp_path / "b"), "--hang-at", "23"])
    deadline = time.monotonic() + 120
    while not (tmp_path / "b" / "HANG").exists():
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline, "worker never reached the hang point"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == [
        "ckpt_00000010.pt",
        "ckpt_00000020.pt",
    ]
    assert max(_losses(tmp_path / "b")) == 20  # the killed run logged up to its last checkpoint
    _finish(_start([*common, "--out", str(tmp_path / "b")]))
    _finish(straight)

    a = load_checkpoint(tmp_path / "a" / "ckpt_00000040.pt")
    b = load_checkpoint(tmp_path / "b" / "ckpt_00000040.pt")
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"
    for pid, st in a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], b["optimizer"]["state"][pid]["exp_avg_sq"])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert a["data"] == b["data"]
    assert _losses(tmp_path / "a") == _losses(
        tmp_path / "b"
    )  # every logged loss, before and after the kill


def test_torchrun_ddp_matches_single_process_with_double_batch(tmp_path):
    """2 gloo processes x batch 8 == 1 process x batch 16: DDP averages the gradients of the shards."""
    common = ["--mode", "ddp", "--steps", "30", "--ckpt-every", "15"]
    ddp = _start([*common, "--batch", "8", "--out", str(tmp_path / "ddp")], torchrun=True)
    single = _start([*common, "--batch", "16", "--out", str(tmp_path / "single")])
    log = _finish(ddp, timeout=180)
    _finish(single)
    a = load_checkpoint(tmp_path / "ddp" / "ckpt_00000030.pt")
    b = load_checkpoint(tmp_path / "single" / "ckpt_00000030.pt")
    assert a["world_size"] == 2 and len(a["rng"]) == 2 and b["world_size"] == 1
    assert not torch.equal(a["rng"][0]["torch"], a["rng"][1]["torch"])  # ranks draw different noise
    init = load_checkpoint(tmp_path / "single" / "ckpt_00000015.pt")["model"]
    for part in ("model", "ema"):
        for name, tensor in b[part].items():
            diff = (a[part][name] - tensor).abs().max().item()
            moved = (
                (tensor - init[name]).abs().max().item()
                if part == "model" and "net" in name
                else 1.0
            )
            assert diff < 1e-5, f"{part}.{name}: DDP vs single max |diff| = {diff:.3g}"
            assert moved > 1e-3, f"{name} barely trained; the comparison would be vacuous"
    # rank 0 alone writes: one log line per logging step
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(5, 31, 5)), log
