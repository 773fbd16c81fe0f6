"""Checkpoint files: atomic writes, safe loads, integrity and compatibility checks.

A checkpoint is two files in the run folder:

    ckpt_00001000.pt     torch.save of a dict of tensors and plain Python values
    ckpt_00001000.json   manifest: step, byte size, sha256 of the .pt, the TrainConfig

Both are written with `sciffusion.core.atomic.atomic_write` (a temporary file in the same
folder, flushed to disk and renamed over the final name with `os.replace`), so a crash leaves
either the old file or the new one, never half of one. Loading uses `torch.load(weights_only=True)`: a checkpoint
is data and can never run code. The manifest's hash catches truncated or bit-flipped
files with an error that names the file.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sciffusion.core.atomic import atomic_write, atomic_write_text

FORMAT = "sciffusion.trainer"
VERSION = 1
REQUIRED_KEYS = (
    "format",
    "version",
    "step",
    "model",
    "ema",
    "optimizer",
    "scheduler",
    "rng",
    "data",
    "config",
)
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint file is missing, truncated, corrupt, or of another kind.

    Also a `ValueError`: to a program it is bad input, and command lines that turn bad input into
    one line and exit status 2 catch it with the rest.
    """


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to another architecture or another training configuration."""


# ----------------------------------------------------------------------------- atomic writes
def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj, path)` through `sciffusion.core.atomic.atomic_write`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# ----------------------------------------------------------------------------- safe reads
def _load_error(err: BaseException) -> str:
    """What is wrong with a file `torch.load(weights_only=True)` refused, in a few words.

    torch's own message suggests loading with `weights_only=False`; that runs arbitrary code
    from the file, so it is never passed on.
    """
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        reason = detail[0].split(" was not an allowed global")[0].strip() if detail else ""
        if "weights_only" in reason:
            reason = ""
        if reason.startswith("Unsupported global"):
            return (
                f"holds Python objects that a safe (weights-only) load refuses ({reason}); "
                "it is not a file this code wrote"
            )
        return "is not a torch file of tensors" + (f" (the safe reader stops at: {reason})" if reason else "")
    if isinstance(err, EOFError) or "central directory" in text or "zip archive" in text:
        return "is truncated or corrupt (not a complete torch file)"
    first = next((ln for ln in text.splitlines() if ln.strip() and "weights_only" not in ln), "")
    return f"is not a readable torch file ({type(err).__name__}{': ' + first[:120] if first else ''})"


def read_torch_file(
    path: str | Path, what: str = "checkpoint", map_location: Any = "cpu"
) -> Any:
    """`torch.load(path, weights_only=True)` with every failure as one `CheckpointError` line.

    The message names `what` and the file and says what is wrong: missing, empty, truncated,
    not a torch file, or holding Python objects (a pickle that could run code). Loaders of every
    checkpoint kind read through this and then check the kind of what they got.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes)")
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    if zipped and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"{what} {path} is truncated or corrupt (an incomplete zip archive)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip, unpickling and EOF errors: all mean "not a file we can read"
        raise CheckpointError(f"{what} {path} {_load_error(err)}") from None


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- files in a run folder
def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """`out_dir/ckpt_{step:08d}.pt`."""
    return Path(out_dir) / f"ckpt_{step:08d}.pt"


def manifest_path(ckpt: str | Path) -> Path:
    """The manifest beside a checkpoint: `ckpt_00001000.pt` -> `ckpt_00001000.json`."""
    return Path(ckpt).with_suffix(".json")


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoints of a run folder, oldest step first."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (and their manifests); return what was deleted."""
    ckpts = list_checkpoints(out_dir)
    doomed = ckpts[:-keep] if keep > 0 else []
    for p in doomed:
        manifest_path(p).unlink(missing_ok=True)
        p.unlink(missing_ok=True)
    return doomed


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write a checkpoint and then its manifest, each atomically.

    The manifest is written last, so a checkpoint whose manifest exists is complete; its
    sha256 lets `load_checkpoint` tell a good file from a damaged one.
    """
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_torch_save(payload, path)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(state["step"]),
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "config": state.get("config"),
    }
    atomic_write_text(manifest_path(path), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def load_checkpoint(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Load a trainer checkpoint safely (`weights_only=True`, on the CPU).

    With `verify`, the file's size and sha256 are checked against its manifest when one
    exists. Raises `CheckpointError` naming the file when it is missing, truncated,
    corrupt, or lacks the trainer's keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    man = manifest_path(path)
    if verify and man.is_file():
        try:
            meta = json.loads(man.read_text())
            want_size, want_hash = int(meta["bytes"]), str(meta["sha256"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint manifest {man} is corrupt: {err}") from err
        size = path.stat().st_size
        if size != want_size:
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt: {size} bytes, manifest {man.name} says {want_size}"
            )
        if sha256_file(path) != want_hash:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its sha256 differs from the one in manifest {man.name}"
            )
    obj = read_torch_file(path, "checkpoint")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a sciffusion trainer checkpoint (no format tag {FORMAT!r})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing keys {missing}")
    if obj["version"] > VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {obj['version']}; this code reads <= {VERSION}"
        )
    return obj


# ----------------------------------------------------------------------------- compatibility
def _names(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_state_dict(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, Any], what: str, path: str | Path
) -> None:
    """Raise `CheckpointMismatchError` naming missing, unexpected and reshaped keys of `found`."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [
        f"{k} {tuple(found[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found
        and isinstance(found[k], torch.Tensor)
        and tuple(found[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_names(unexpected)}")
        if reshaped:
            parts.append(f"shape mismatch: {_names(reshaped)}")
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit this architecture ({what}): " + "; ".join(parts)
        )


def check_config(
    saved: Mapping[str, Any], current: Mapping[str, Any], may_differ: set[str], path: str | Path
) -> None:
    """Raise `CheckpointMismatchError` naming every config field that differs (outside `may_differ`)."""
    keys = sorted((set(saved) | set(current)) - may_differ)
    diff = [
        f"{k}: checkpoint {saved.get(k, '<absent>')!r} vs now {current.get(k, '<absent>')!r}"
        for k in keys
        if saved.get(k, "<absent>") != current.get(k, "<absent>")
    ]
    if diff:
        raise CheckpointMismatchError(
            f"checkpoint {path} was written with another TrainConfig; mismatched fields: "
            + "; ".join(diff)
        )


# ----------------------------------------------------------------------------- random number generators
def capture_rng() -> dict[str, Any]:
    """Every global RNG state as tensors and plain values (loadable with `weights_only=True`)."""
    # the legacy global numpy RNG is the one user code (augmentations) draws from
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_gauss": float(gauss),
        "python_version": int(py_version),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_gauss"]),
        )
    )
    random.setstate(
        (
            int(state["python_version"]),
            tuple(int(v) for v in state["python_state"].tolist()),
            state["python_gauss"],
        )
    )
    restore_cuda_rng(list(state.get("cuda") or []))


def restore_cuda_rng(states: list[torch.Tensor]) -> None:
    """Restore the saved CUDA generator of every GPU that exists here; say which streams could not be.

    A run resumed with fewer visible GPUs continues the streams of the GPUs it has; the others'
    states are dropped (with a warning), and new GPUs keep their current streams.
    """
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, s in enumerate(states[:visible]):
        torch.cuda.set_rng_state(s, index)
    if len(states) != visible and (states or visible):
        warnings.warn(
            f"the checkpoint holds CUDA random states for {len(states)} GPU(s) and {visible} are visible: "
            f"{min(len(states), visible)} restored, the rest start from their current state",
            stacklevel=3,
        )
