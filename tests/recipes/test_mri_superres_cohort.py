"""`--input-dir`: a folder or BIDS dataset of real NIfTI files, per-scan outputs, summary, resume, shards, bad files."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from recipes.mri_superres import main
from sciffusion.plugins.mri.cohort import find_scans, scan_name
from sciffusion.plugins.mri.io import VolumeError
from sciffusion.plugins.mri.model import SRDenoiser, save_checkpoint
from tests.plugins.mri.helpers import phantom, tiny_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny2x.pt"
    save_checkpoint(SRDenoiser(tiny_config()), path)
    return path


def _nifti(path, shape=(10, 12, 8), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(phantom(shape, seed), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def _summary(out):
    lines = (out / "summary.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    return {os.path.basename(r["scan"]): r for r in (dict(zip(head, ln.split("\t"))) for ln in lines[1:])}


def _argv(d, out, ckpt):
    return ["--input-dir", str(d), "--out", str(out), "--checkpoint", str(ckpt), "--steps", "1", "--samples", "1",
            "--quiet"]


def test_folder_with_a_bad_file_resumes_and_skips_finished(tmp_path, ckpt):
    d = tmp_path / "scans"
    _nifti(d / "a.nii.gz")
    _nifti(d / "b.nii", seed=1)
    (d / "broken.nii.gz").write_bytes(b"not a nifti at all" * 40)
    (d / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    assert main(_argv(d, out, ckpt)) == 1  # one scan failed, the others were done
    s = _summary(out)
    assert set(s) == {"a.nii.gz", "b.nii", "broken.nii.gz"}
    assert s["a.nii.gz"]["status"] == s["b.nii"]["status"] == "done"
    assert s["broken.nii.gz"]["status"] == "failed" and "not a readable NIfTI file" in s["broken.nii.gz"]["error"]
    assert nib.load(str(out / "a" / "sr.nii.gz")).shape == (20, 24, 16)
    assert s["a.nii.gz"]["scale"] == "2,2,2" and s["a.nii.gz"]["voxel_mm"] == "2x2x2"
    # a kill after scan a: its status is there, b's is not -> only b runs again
    (out / "b" / "status.json").unlink()
    t_a = (out / "a" / "sr.nii.gz").stat().st_mtime_ns
    main(_argv(d, out, ckpt))
    assert (out / "a" / "sr.nii.gz").stat().st_mtime_ns == t_a
    assert json.loads((out / "b" / "status.json").read_text())["status"] == "done"


def test_bids_dataset_takes_anat_scans_only(tmp_path, ckpt, monkeypatch):
    d = tmp_path / "bids"
    d.mkdir()
    (d / "dataset_description.json").write_text('{"Name": "toy", "BIDSVersion": "1.8.0"}')
    _nifti(d / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _nifti(d / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T2w.nii.gz", seed=2)
    _nifti(d / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    scans = find_scans(d)
    assert [scan_name(p) for p in scans] == ["sub-01_T1w", "sub-02_ses-1_T2w"]
    out = tmp_path / "out"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(_argv(d, out, ckpt)) == 0  # process 1 of 2 takes the second scan only
    s = _summary(out)
    assert s["sub-01_T1w.nii.gz"]["status"] == "pending" and s["sub-02_ses-1_T2w.nii.gz"]["status"] == "done"
    monkeypatch.setenv("RANK", "0")
    assert main(_argv(d, out, ckpt)) == 0
    assert {r["status"] for r in _summary(out).values()} == {"done"}


def test_empty_or_missing_folder_is_one_line_error(tmp_path, ckpt, capsys):
    (tmp_path / "empty").mkdir()
    assert main(_argv(tmp_path / "empty", tmp_path / "o", ckpt)) == 2
    assert "no NIfTI files" in capsys.readouterr().err
    assert main(_argv(tmp_path / "absent", tmp_path / "o", ckpt)) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(VolumeError, match="share the name"):
        _nifti(tmp_path / "dup" / "x.nii")
        _nifti(tmp_path / "dup" / "x.nii.gz")
        find_scans(tmp_path / "dup")


@pytest.mark.slow
def test_torchrun_shares_the_scans(tmp_path, ckpt):
    import subprocess
    import sys
    from pathlib import Path

    d = tmp_path / "scans"
    for k in range(3):
        _nifti(d / f"s{k}.nii.gz", seed=k)
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0", "-m",
           "recipes.mri_superres", *_argv(d, out, ckpt), "--threads", "1"]
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    s = _summary(out)
    assert {r["status"] for r in s.values()} == {"done"} and len(s) == 3
