"""Atomic writes: a file or a folder appears complete under its final name, or not at all.

`atomic_write(path, write)` calls `write(tmp)` with a temporary path beside `path` (same folder,
so the same filesystem, and the same file name, so writers that choose a format from the suffix
such as `.nii.gz`, `.png`, `.nc` or `.zarr` behave as they would for `path`), then renames it
over `path` with `os.replace`. A crash or an exception leaves the old `path` untouched and no
temporary behind; the exception propagates. Readers never see half of a file.

A folder (a zarr store, say) cannot be renamed over an existing folder in one step: the old one
is first moved aside into the temporary folder, the new one renamed into place, and the old one
deleted; if the second rename fails the old one is put back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable; not every filesystem lets a folder be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, path: Path, aside: Path) -> None:
    """`os.replace(tmp, path)`; an existing folder (or a file over which a folder goes) is moved to
    `aside` first and restored if the rename fails."""
    moved = path.exists() and not path.is_symlink() and (path.is_dir() or tmp.is_dir())
    if moved:
        os.replace(path, aside)
    try:
        os.replace(tmp, path)
    except BaseException:
        if moved:
            os.replace(aside, path)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Write `path` through a temporary sibling and `os.replace`; return `path`.

    `write(tmp)` must create a file or a folder at `tmp`, a path in a fresh hidden folder
    `.{name}.*.tmp` beside `path` whose last component is `path`'s own name. On success the
    result replaces `path` (a file atomically; a folder by moving the old one aside first);
    on any failure (including `KeyboardInterrupt`) `path` is left as it was, the temporary is
    removed and the exception re-raised. Parent folders are created as needed.

    >>> atomic_write("out/table.csv", lambda p: p.write_text("a,b\\n1,2\\n"))  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp = scratch / path.name
    try:
        write(tmp)
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {path}: the writer did not create {tmp}")
        if tmp.is_file():
            _fsync_file(tmp)
        _swap_into_place(tmp, path, scratch / ".old")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))
