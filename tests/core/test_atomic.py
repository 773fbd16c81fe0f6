"""`atomic_write`: the final name holds the old content or the new one, never a half, and no
temporary is left behind."""

from __future__ import annotations

import os

import pytest

from sciffusion.core.atomic import atomic_write, atomic_write_bytes, atomic_write_text


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_text_and_bytes_replace_the_content(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    assert atomic_write_text(p, "new äö") == p
    assert p.read_text(encoding="utf-8") == "new äö"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert _names(tmp_path) == ["a.txt"]


def test_parent_folders_are_created(tmp_path):
    p = tmp_path / "x" / "y" / "z.json"
    atomic_write_text(p, "{}")
    assert p.read_text() == "{}"


def test_writer_sees_a_sibling_with_the_same_name(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text("v")

    target = tmp_path / "volume.nii.gz"
    atomic_write(target, write)
    (tmp,) = seen
    assert tmp.name == "volume.nii.gz" and tmp != target
    assert tmp.parent.parent == tmp_path and tmp.parent.name.startswith(".volume.nii.gz.")
    assert not tmp.exists() and _names(tmp_path) == ["volume.nii.gz"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failure_mid_write_keeps_the_old_file_and_no_temporary(tmp_path, exc):
    p = tmp_path / "ckpt.pt"
    p.write_bytes(b"old content")

    def write(tmp):
        tmp.write_bytes(b"half of the n")
        raise exc("disk full")

    with pytest.raises(exc, match="disk full"):
        atomic_write(p, write)
    assert p.read_bytes() == b"old content"
    assert _names(tmp_path) == ["ckpt.pt"]


def test_failure_without_an_old_file_leaves_nothing(tmp_path):
    def write(tmp):
        tmp.write_text("x")
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        atomic_write(tmp_path / "new.txt", write)
    assert _names(tmp_path) == []


def test_a_writer_that_creates_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not create"):
        atomic_write(tmp_path / "out.bin", lambda tmp: None)
    assert _names(tmp_path) == []


def _store(files: dict[str, str]):
    def write(tmp):
        tmp.mkdir()
        for name, text in files.items():
            (tmp / name).write_text(text)

    return write


def test_directory_is_written_and_replaces_an_old_one(tmp_path):
    p = tmp_path / "field.zarr"
    atomic_write(p, _store({"a": "1", "b": "2"}))
    assert _names(p) == ["a", "b"]
    atomic_write(p, _store({"c": "3"}))
    assert _names(p) == ["c"] and (p / "c").read_text() == "3"
    assert _names(tmp_path) == ["field.zarr"]


def test_directory_failure_keeps_the_old_one(tmp_path):
    p = tmp_path / "field.zarr"
    atomic_write(p, _store({"a": "1"}))

    def write(tmp):
        _store({"half": "x"})(tmp)
        raise OSError("interrupted")

    with pytest.raises(OSError, match="interrupted"):
        atomic_write(p, write)
    assert _names(p) == ["a"] and _names(tmp_path) == ["field.zarr"]


def test_failed_rename_puts_the_old_directory_back(tmp_path, monkeypatch):
    p = tmp_path / "field.zarr"
    atomic_write(p, _store({"a": "1"}))
    real = os.replace

    def replace(src, dst):
        if str(dst) == str(p) and not str(src).endswith(".old"):  # the new store, not the restore
            raise OSError("rename refused")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename refused"):
        atomic_write(p, _store({"b": "2"}))
    monkeypatch.setattr(os, "replace", real)
    assert _names(p) == ["a"] and _names(tmp_path) == ["field.zarr"]


def test_a_file_may_replace_a_directory_and_back(tmp_path):
    p = tmp_path / "out"
    atomic_write(p, _store({"a": "1"}))
    atomic_write_text(p, "file now")
    assert p.read_text() == "file now"
    atomic_write(p, _store({"b": "2"}))
    assert _names(p) == ["b"] and _names(tmp_path) == ["out"]
