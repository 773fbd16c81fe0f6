"""Checkpoints of the Trainer: config round trip, atomic files, damaged and mismatched files, NaN stops."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import pytest
import torch

from sciffusion.core.train import checkpoint as ck
from sciffusion.core.train.ema import EMA, decay_from_half_life
from sciffusion.core.train.trainer import (
    CheckpointError,
    CheckpointMismatchError,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    load_weights,
)
from tests.core._train_worker import JitteredPoints, ToyMLP, gaussian_mixture, noisy_loss


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        steps=30,
        batch_size=8,
        lr=1e-2,
        checkpoint_every=10,
        keep_last=2,
        log_every=5,
        seed=1,
        out_dir=str(tmp_path / "run"),
    )
    base.update(kw)
    return TrainConfig(**base)


def _trainer(
    cfg: TrainConfig, hidden: int = 16, loss_fn=noisy_loss, progress: bool = False
) -> Trainer:
    torch.manual_seed(0)
    data = JitteredPoints(gaussian_mixture(64, seed=2))
    return Trainer(ToyMLP(hidden=hidden), None, data, cfg, loss_fn=loss_fn, progress=progress)


@pytest.fixture
def run(tmp_path):
    """A finished 30-step run with checkpoints at steps 20 and 30 (keep_last=2)."""
    cfg = _cfg(tmp_path)
    _trainer(cfg).fit()
    return cfg


def test_config_json_round_trip_and_errors(tmp_path):
    cfg = TrainConfig(
        steps=7, ema_half_life=50.0, adam_betas=(0.9, 0.99), grad_clip=None, out_dir=str(tmp_path)
    )
    cfg.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json") == cfg
    with pytest.raises(
        ValueError, match=r"^TrainConfig: unknown keys \['colour'\] in .*bad\.json; known: \["
    ):
        (tmp_path / "bad.json").write_text(json.dumps({**cfg.to_dict(), "colour": "red"}))
        TrainConfig.from_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="ema_decay or ema_half_life, not both"):
        TrainConfig(ema_decay=0.9, ema_half_life=10)
    with pytest.raises(dataclass_error()):
        cfg.steps = 3


def dataclass_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_lr_schedule_and_ema_half_life():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert cfg.lr_factor(0) == pytest.approx(0.1) and cfg.lr_factor(9) == pytest.approx(1.0)
    assert cfg.lr_factor(10) == pytest.approx(1.0)
    assert cfg.lr_factor(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cfg.lr_factor(110) == pytest.approx(0.1)
    assert TrainConfig(lr_schedule="linear", steps=100).lr_factor(50) == pytest.approx(0.5)
    # after h updates towards a constant target, the initial value's weight has halved
    h = 20
    beta = decay_from_half_life(h)
    assert TrainConfig(ema_half_life=h).ema_beta == pytest.approx(beta)
    src = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(src.weight)
    ema = EMA(src, beta)
    torch.nn.init.ones_(src.weight)
    for _ in range(h):
        ema.update(src)
    assert ema.model.weight.item() == pytest.approx(0.5, abs=1e-6)
    assert math.isclose(beta**h, 0.5)


def test_run_folder_layout_and_keep_last(run, tmp_path):
    out = tmp_path / "run"
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "ckpt_00000020.json",
        "ckpt_00000020.pt",
        "ckpt_00000030.json",
        "ckpt_00000030.pt",
        "config.json",
        "loss.png",
        "metrics.jsonl",
    ]  # no temporary files left behind
    assert TrainConfig.from_json(out / "config.json") == run
    assert (
        TrainConfig.from_json(out / "ckpt_00000030.json") == run
    )  # the config beside each checkpoint
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30]
    state = ck.load_checkpoint(out / "ckpt_00000030.pt")
    assert state["step"] == 30 and state["data"]["epoch"] >= 1
    assert set(state["rng"][0]) >= {"torch", "numpy_keys", "python_state", "cuda"}
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load_weights(ToyMLP(hidden=16), out / "ckpt_00000030.pt")
    assert torch.equal(model.net[0].weight, state["ema"]["net.0.weight"])


def test_truncated_checkpoint_is_named_and_resume_falls_back(run, tmp_path):
    out = tmp_path / "run"
    newest = out / "ckpt_00000030.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"ckpt_00000030\.pt is truncated or corrupt: \d+ bytes"
    ):
        ck.load_checkpoint(newest)
    ck.manifest_path(newest).unlink()  # without the manifest torch's reader catches it
    with pytest.raises(
        CheckpointError, match=r"ckpt_00000030\.pt is truncated or corrupt \(an incomplete zip archive\)$"
    ):
        ck.load_checkpoint(newest)
    trainer = _trainer(_cfg(tmp_path, steps=30))
    with pytest.warns(UserWarning, match=r"skipping damaged checkpoint: .*ckpt_00000030\.pt"):
        found = trainer._resume_point()
    assert found is not None and found[0].name == "ckpt_00000020.pt"
    with pytest.warns(UserWarning, match="skipping damaged"):
        trainer.fit(resume=True)
    assert trainer.step == 30 and ck.load_checkpoint(newest)["step"] == 30  # rewritten, whole again


def test_corrupt_checkpoint_is_named(run, tmp_path):
    out = tmp_path / "run"
    path = out / "ckpt_00000030.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = b"\xff" * 16  # same size, flipped bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"ckpt_00000030\.pt is corrupt: its sha256 differs"):
        ck.load_checkpoint(path)
    junk = out / "ckpt_00000040.pt"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=r"ckpt_00000040\.pt is not a torch file of tensors") as err:
        ck.load_checkpoint(junk)
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "payload": datetime.date(2020, 1, 1)}, path)  # any non-tensor class
    with pytest.raises(CheckpointError) as err:
        ck.load_checkpoint(path)
    assert str(err.value).startswith(
        f"checkpoint {path} holds Python objects that a safe (weights-only) load refuses "
        "(Unsupported global: GLOBAL "
    )
    assert str(err.value).endswith("datetime.date); it is not a file this code wrote")
    assert err.value.__cause__ is None and err.value.__suppress_context__
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt is not a sciffusion trainer checkpoint"):
        ck.load_checkpoint(tmp_path / "other.pt")


def test_mismatched_architecture_names_keys(run, tmp_path):
    path = tmp_path / "run" / "ckpt_00000030.pt"
    wider = _trainer(_cfg(tmp_path), hidden=24)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"ckpt_00000030\.pt does not fit this architecture "
        r"\(model\): shape mismatch: net\.0\.weight \(16, 10\) vs model \(24, 10\)",
    ):
        wider.load(path)
    with pytest.raises(
        CheckpointMismatchError, match=r"missing keys: net\.5\.weight, net\.5\.bias"
    ):
        load_weights(Deeper(), path)


class Deeper(ToyMLP):
    def __init__(self) -> None:
        super().__init__(hidden=16)
        self.net.append(torch.nn.Linear(2, 2))


def test_mismatched_config_names_fields(run, tmp_path):
    other = _trainer(
        _cfg(tmp_path, lr=3e-3, seed=9, steps=50)
    )  # steps may change, lr and seed may not
    with pytest.raises(
        CheckpointMismatchError,
        match=r"ckpt_00000030\.pt was written with another TrainConfig; mismatched fields: "
        r"lr: checkpoint 0\.01 vs now 0\.003; seed: checkpoint 1 vs now 9",
    ):
        other.fit(resume=True)


def test_non_finite_loss_names_step_and_keeps_last_good_checkpoint(tmp_path):
    calls = [0]

    def nan_at_17(model, process, batch):
        calls[0] += 1
        loss = noisy_loss(model, process, batch)
        return loss * float("nan") if calls[0] == 17 else loss

    trainer = _trainer(_cfg(tmp_path), loss_fn=nan_at_17)
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite loss at step 17: .*last good checkpoint: "
        r".*ckpt_00000010\.pt",
    ):
        trainer.fit()
    assert [p.name for p in ck.list_checkpoints(tmp_path / "run")] == ["ckpt_00000010.pt"]
    assert ck.load_checkpoint(tmp_path / "run" / "ckpt_00000010.pt")["step"] == 10


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    ck.atomic_torch_save({"a": torch.ones(3)}, path)

    def broken_save(obj, f):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.atomic_torch_save({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


class _Crash(Exception):
    pass


@pytest.mark.parametrize("iterable", [False, True])
def test_in_process_resume_is_bitwise(tmp_path, iterable, device):
    """Crash at step 13 (checkpoint at 10), rebuild everything, resume: same weights as 25 steps straight."""
    points = gaussian_mixture(40, seed=4)

    def make(out, crash_at=0):
        calls = [0]

        def loss_fn(model, process, batch):
            calls[0] += 1
            if calls[0] == crash_at:
                raise _Crash
            return noisy_loss(model, process, batch)

        torch.manual_seed(0)
        data = (
            _Reiterable([points[i] for i in range(len(points))])
            if iterable
            else JitteredPoints(points)
        )
        cfg = _cfg(
            tmp_path, out_dir=str(tmp_path / out), steps=25, checkpoint_every=5, batch_size=8,
            device=str(device),
        )
        return Trainer(ToyMLP(hidden=16), None, data, cfg, loss_fn=loss_fn, progress=False)

    straight = make("a")
    straight.fit()
    with pytest.raises(_Crash):
        make("b", crash_at=13).fit()
    torch.manual_seed(1234)  # the resumed run must not depend on the RNG it starts with
    resumed = make("b")
    resumed.fit(resume=True)
    for name, a in straight.model.state_dict().items():
        assert torch.equal(a, resumed.model.state_dict()[name]), name
        assert torch.equal(
            straight.ema_model.state_dict()[name], resumed.ema_model.state_dict()[name]
        ), name
    assert straight.data.state() == resumed.data.state()


class _Reiterable(torch.utils.data.IterableDataset):
    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


def test_fresh_start_refuses_a_folder_with_checkpoints(run, tmp_path):
    with pytest.raises(
        FileExistsError,
        match=r"run already holds checkpoints of a run \(newest ckpt_00000030\.pt\)",
    ):
        _trainer(run).fit(resume=False)
    assert ck.load_checkpoint(tmp_path / "run" / "ckpt_00000030.pt")["step"] == 30


def test_data_errors_are_named(tmp_path):
    cfg = _cfg(tmp_path, batch_size=100)
    with pytest.raises(ValueError, match=r"dataset has 64 items: fewer than batch_size=100"):
        _trainer(cfg)
    loader = torch.utils.data.DataLoader(gaussian_mixture(64, seed=0), batch_size=8)
    with pytest.raises(TypeError, match="not a DataLoader"):
        Trainer(ToyMLP(hidden=16), None, loader, _cfg(tmp_path), loss_fn=noisy_loss)
    one_shot = (p for p in gaussian_mixture(20, seed=0))  # a generator: 2 batches, then nothing
    trainer = Trainer(
        ToyMLP(hidden=16), None, one_shot, _cfg(tmp_path), loss_fn=noisy_loss, progress=False
    )
    with pytest.raises(RuntimeError, match="one-shot iterator"):
        trainer.fit()
    assert trainer.step == 2


@pytest.mark.parametrize("iterable", [False, True])
def test_two_ranks_shard_the_data_like_one_process_with_double_batch(tmp_path, iterable):
    """Rank 0 and rank 1 of 2 see disjoint halves of what one process sees with twice the batch."""
    from sciffusion.core.train.data import BatchStream

    items = torch.arange(40.0)[:, None]
    source = _Reiterable(list(items)) if iterable else items
    cfg = _cfg(tmp_path, batch_size=4)
    single = BatchStream(source, _cfg(tmp_path, batch_size=8), None, rank=0, world=1, pin=False)
    ranks = [BatchStream(source, cfg, None, rank=r, world=2, pin=False) for r in (0, 1)]
    for _ in range(7):  # crosses an epoch boundary (5 batches per epoch)
        both = torch.cat([ranks[0].next(), ranks[1].next()]).flatten()
        want = single.next().flatten()
        assert sorted(both.tolist()) == sorted(want.tolist())
    assert ranks[0].state() == single.state() == {"epoch": 1, "batch": 2}


def test_resume_with_only_damaged_checkpoints_refuses_to_start_over(run, tmp_path):
    for p in ck.list_checkpoints(tmp_path / "run"):
        p.write_bytes(p.read_bytes()[:100])
    with pytest.warns(UserWarning, match="skipping damaged"):
        with pytest.raises(
            CheckpointError, match=r"none of the 2 checkpoints in .*run can be read"
        ):
            _trainer(run).fit(resume=True)


def test_progress_bar_only_on_a_terminal_and_when_asked(tmp_path, monkeypatch, capsys):
    import sys

    def run(name, progress, tty):
        monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
        _trainer(_cfg(tmp_path, steps=10, out_dir=str(tmp_path / name)), progress=progress).fit()
        return capsys.readouterr().err

    shown = run("tty", progress=True, tty=True)
    assert "10/10" in shown and "loss=" in shown
    assert "10/10" not in run("pipe", progress=True, tty=False)
    assert "10/10" not in run("off", progress=False, tty=True)


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """grad_accum=2 x batch 8 == batch 16: the step's gradient is the mean over the 16 examples."""
    from tests.core._train_worker import FixedNoisePoints, fixed_noise_loss

    def train(out, batch, accum):
        torch.manual_seed(0)
        cfg = _cfg(
            tmp_path, out_dir=str(tmp_path / out), steps=15, batch_size=batch, grad_accum=accum
        )
        trainer = Trainer(
            ToyMLP(hidden=16),
            None,
            FixedNoisePoints(64, seed=3),
            cfg,
            loss_fn=fixed_noise_loss,
            progress=False,
        )
        trainer.fit()
        return trainer

    a, b = train("accum", 8, 2), train("big", 16, 1)
    for name, w in b.model.state_dict().items():
        assert torch.allclose(a.model.state_dict()[name], w, atol=1e-6, rtol=0), name
    assert a.data.state() == {"epoch": 3, "batch": 6} and b.data.state() == {"epoch": 3, "batch": 3}
    assert _losses_of(tmp_path / "accum") == pytest.approx(_losses_of(tmp_path / "big"), abs=1e-6)


def _losses_of(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_nan_gradient_with_finite_loss_is_named(tmp_path):
    calls = [0]

    def bad_grad_at_12(model, process, batch):
        calls[0] += 1
        loss = noisy_loss(model, process, batch)
        if (
            calls[0] == 12
        ):  # d sqrt(u)/du at u = 0 is inf; times 0 gives a NaN gradient, the loss stays finite
            loss = loss + 0.0 * (model.net[0].weight * 0.0).sqrt().sum()
        return loss

    with pytest.raises(
        NonFiniteLossError, match=r"non-finite gradient norm \(the loss was finite\) at step 12"
    ):
        _trainer(_cfg(tmp_path), loss_fn=bad_grad_at_12).fit()
    assert [p.name for p in ck.list_checkpoints(tmp_path / "run")] == ["ckpt_00000010.pt"]


def test_checkpoint_from_before_a_new_config_field_still_resumes(run, tmp_path):
    path = tmp_path / "run" / "ckpt_00000030.pt"
    state = ck.load_checkpoint(path)
    del state["config"]["grad_accum"]  # as written before that field existed
    ck.save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, path)
    trainer = _trainer(_cfg(tmp_path, steps=30))
    trainer.fit(resume=True)
    assert trainer.step == 30


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "is empty (0 bytes)"),
        (None, "is truncated or corrupt (an incomplete zip archive)"),
        (b"hello world\n", "is not a readable torch file (KeyError"),
        ("pickle", "is not a torch file of tensors (the safe reader stops at: Unsupported operand"),
        ("object", "holds Python objects that a safe (weights-only) load refuses"),
    ],
)
def test_read_torch_file_says_what_is_wrong_in_one_line(tmp_path, content, problem):
    import pickle

    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"a": torch.ones(100)}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"x": {1, 2}}))
    elif content == "object":
        torch.save({"x": pickle.PickleError("any object")}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        ck.read_torch_file(path, "model")
    msg = str(err.value)
    assert msg.startswith(f"model {path} {problem}")
    assert "\n" not in msg and "weights_only" not in msg
    with pytest.raises(CheckpointError, match=r"^model .*missing\.pt does not exist$"):
        ck.read_torch_file(tmp_path / "missing.pt", "model")
