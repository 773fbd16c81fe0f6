"""The Trainer end to end: exact resume after SIGKILL, DDP under torchrun, sample quality, docs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sciffusion.core import DiffusionProcess, get_schedule, sample
from sciffusion.core.train.checkpoint import list_checkpoints, load_checkpoint
from sciffusion.core.train.trainer import TrainConfig, Trainer
from tests.core import _train_worker
from tests.core._train_worker import ToyMLP, gaussian_mixture

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


def _in_process(args: list[str]) -> None:
    """Run the worker's `main` here (torch is already imported: saves a process start)."""
    old = torch.get_num_threads()
    try:
        _train_worker.main(args)
    finally:
        torch.set_num_threads(old)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _losses(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise(tmp_path, device):
    """N=40 steps straight == killed at step 27 (last checkpoint: 20) and resumed to 40."""
    common = ["--mode", "resume", "--steps", "40", "--ckpt-every", "10", "--loss", "default",
              "--device", str(device)]
    victim = _start([*common, "--out", str(tmp_path / "b"), "--hang-at", "27"])
    _in_process([*common, "--out", str(tmp_path / "a")])  # straight, meanwhile, in this process
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
    assert (
        max(_losses(tmp_path / "b")) == 25
    )  # logged past its last checkpoint: resume drops that line
    _finish(_start([*common, "--out", str(tmp_path / "b")]))

    a = load_checkpoint(tmp_path / "a" / "ckpt_00000040.pt")
    b = load_checkpoint(tmp_path / "b" / "ckpt_00000040.pt")
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"
    for pid, st in a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], b["optimizer"]["state"][pid]["exp_avg_sq"])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert a["data"] == b["data"]
    # every logged loss, before and after the kill, once each
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(5, 41, 5))


@pytest.mark.slow
def test_torchrun_ddp_matches_single_process_with_double_batch(tmp_path):
    """2 gloo processes x batch 8 == 1 process x batch 16: DDP averages the gradients of the shards.

    Both runs then resume from their step-30 checkpoint in a new Trainer and go on to step 40.
    """
    common = ["--mode", "ddp", "--steps", "30", "--ckpt-every", "15", "--extend-to", "40"]
    ddp = _start([*common, "--batch", "8", "--out", str(tmp_path / "ddp")], torchrun=True)
    _in_process([*common, "--batch", "16", "--out", str(tmp_path / "single")])
    log = _finish(ddp, timeout=180)
    a = load_checkpoint(tmp_path / "ddp" / "ckpt_00000040.pt")
    b = load_checkpoint(tmp_path / "single" / "ckpt_00000040.pt")
    assert a["world_size"] == 2 and len(a["rng"]) == 2 and b["world_size"] == 1
    assert not torch.equal(a["rng"][0]["torch"], a["rng"][1]["torch"])  # ranks draw different noise
    torch.manual_seed(0)
    init = ToyMLP(hidden=32).state_dict()  # the workers' initial weights
    worst = max((a[p][k] - v).abs().max().item() for p in ("model", "ema") for k, v in b[p].items())
    print(
        f"DDP (2 x 8) vs single (16) after 40 steps: max |diff| over weights and EMA = {worst:.3g}"
    )
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
    assert steps == list(range(5, 41, 5)), log


def _mmd2(x: torch.Tensor, y: torch.Tensor, scales: tuple[float, ...] = (0.05, 0.2, 1.0)) -> float:
    """Unbiased MMD^2 between samples x and y, kernel sum_s exp(-|a - b|^2 / (2 s^2)) (Gretton et al. 2012)."""
    xy = torch.cat([x, y]).double()
    d2 = torch.cdist(xy, xy).pow(2)
    k = sum(torch.exp(-d2 / (2 * s * s)) for s in scales)
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float(
        (kxx.sum() - kxx.diag().sum()) / (n * (n - 1))
        + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
        - 2 * kxy.mean()
    )


MMD_THRESHOLD = 0.02  # held-out vs held-out: ~0.000; trained: ~0.005; moment-matched Gaussian and untrained: ~0.13


@pytest.mark.slow
def test_trained_ema_samples_match_gaussian_mixture(tmp_path):
    """MLP on a 4-mode mixture with the default loss; EMA samples pass an MMD test that baselines fail."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, held = gaussian_mixture(4000, seed=0), gaussian_mixture(1000, seed=1)
        proc = DiffusionProcess(get_schedule("cosine"), prediction="v")
        torch.manual_seed(0)
        cfg = TrainConfig(
            steps=1000,
            batch_size=256,
            lr=5e-3,
            warmup_steps=50,
            ema_half_life=50,
            checkpoint_every=1000,
            log_every=50,
            out_dir=str(tmp_path / "run"),
        )
        trainer = Trainer(ToyMLP(hidden=64), proc, train, cfg, progress=False)

        def draw(model):
            g = torch.Generator().manual_seed(7)
            return sample(
                model, proc, (1000, 2), method="dpmpp_2m", steps=30, generator=g, progress=False
            )

        untrained = _mmd2(draw(trainer.ema_model), held)
        trainer.fit()
        trained = _mmd2(draw(trainer.ema_model), held)
        gauss = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T))
        moment_matched = _mmd2(gauss.sample((1000,)), held)
        floor = _mmd2(gaussian_mixture(1000, seed=2), held)
    finally:
        torch.set_num_threads(old_threads)
    print(
        f"MMD^2: trained {trained:.4f}, untrained {untrained:.4f}, Gaussian {moment_matched:.4f}, data {floor:.4f}"
    )
    assert trained < MMD_THRESHOLD, trained
    assert untrained > MMD_THRESHOLD and moment_matched > MMD_THRESHOLD and floor < MMD_THRESHOLD
    assert not torch.equal(trainer.ema_model.net[0].weight, trainer.model.net[0].weight)
    assert (tmp_path / "run" / "loss.png").is_file()
    losses = _losses(tmp_path / "run")
    print({s: round(v, 3) for s, v in losses.items() if s % 250 == 0 or s == 50})
    assert losses[1000] < 0.9 * losses[50]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_request_keeps_fp32_master_weights(tmp_path, precision):
    """On the CPU autocast runs only when asked; weights, EMA and the checkpoint stay fp32."""
    proc = DiffusionProcess(get_schedule("cosine"), prediction="v")
    cfg = TrainConfig(
        steps=20,
        batch_size=32,
        lr=1e-2,
        precision=precision,
        checkpoint_every=10,
        log_every=5,
        out_dir=str(tmp_path / precision),
    )
    torch.manual_seed(0)
    trainer = Trainer(ToyMLP(hidden=16), proc, gaussian_mixture(256, seed=0), cfg, progress=False)
    assert trainer.precision == precision and (trainer.scaler is not None) == (precision == "fp16")
    trainer.fit()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    state = load_checkpoint(tmp_path / precision / "ckpt_00000020.pt")
    assert all(t.dtype == torch.float32 for t in state["ema"].values())
    assert bool(state["scaler"]) == (precision == "fp16")
    assert all(math.isfinite(v) for v in _losses(tmp_path / precision).values())
    auto = Trainer(
        ToyMLP(hidden=16),
        proc,
        gaussian_mixture(256, seed=0),
        TrainConfig(out_dir=str(tmp_path / "auto"), device="cpu"),
        progress=False,
    )
    assert auto.precision == "fp32" and auto.scaler is None


def test_docs_training_page_runs(tmp_path):
    from tests.doc_examples import run_markdown_examples

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ns = run_markdown_examples("docs/training.md", tmp_path)
    finally:
        torch.set_num_threads(old)
    assert ns["longer"].step == 300 and ns["x"].shape == (100, 2)
    assert (tmp_path / "runs" / "two_blobs" / "loss.png").is_file()
