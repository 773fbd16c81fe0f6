"""`python -m recipes.mri_superres` end to end on small volumes with a tiny checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from recipes.mri_superres import main
from sciffusion.plugins import core_sampler
from sciffusion.plugins.mri.io import sr_affine
from sciffusion.plugins.mri.model import (
    SRDenoiser,
    default_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from tests.plugins.mri.helpers import phantom, tiny_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny2x.pt"
    save_checkpoint(SRDenoiser(tiny_config()), path)
    return path


def _affine():
    a = np.diag([1.2, 0.8, 1.0, 1.0])
    a[:3, 3] = [-30.0, 12.5, 4.0]
    return a


def test_reference_mode_writes_every_output(tmp_path, ckpt, capsys):
    ref = tmp_path / "hr.nii.gz"
    nib.save(nib.Nifti1Image(phantom((32, 32, 32)), _affine()), str(ref))
    out = tmp_path / "out"
    rc = main(["--reference", str(ref), "--checkpoint", str(ckpt), "--steps", "2", "--samples", "2",
               "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "cubic" in printed and "sciffusion" in printed and "Spearman" in printed
    for name in ("sr.nii.gz", "uncertainty.nii.gz", "trilinear.nii.gz", "lowres.nii.gz", "metrics.json",
                 "slices.png", "config.json"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["methods"]) >= {"trilinear", "cubic", "sciffusion"}
    assert all(np.isfinite(v["psnr"]) and -1 <= v["ssim"] <= 1 for v in m["methods"].values())
    # the super-resolved volume lies exactly on the reference grid
    sr = nib.load(str(out / "sr.nii.gz"))
    assert sr.shape == (32, 32, 32)
    np.testing.assert_allclose(sr.affine, _affine(), atol=1e-6)
    low = nib.load(str(out / "lowres.nii.gz"))
    np.testing.assert_allclose(sr_affine(low.affine, (2, 2, 2)), sr.affine, atol=1e-6)
    assert b"sciffusion SR 2x2x2" in sr.header["descrip"].tobytes()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["samples"] == 2 and cfg["steps"] == 2 and cfg["model"]["scale"] == [2, 2, 2]
    assert cfg["method"] == core_sampler()  # the name of the sampler that ran, not None


def test_input_mode_overlays_the_input(tmp_path, ckpt, device):
    scan = tmp_path / "scan.nii"
    nib.save(nib.Nifti1Image(phantom((12, 10, 14)), _affine()), str(scan))
    out = tmp_path / "o"
    assert main(["--input", str(scan), "--checkpoint", str(ckpt), "--steps", "2", "--samples", "2",
                 "--out", str(out), "--quiet", "--device", str(device)]) == 0
    sr = nib.load(str(out / "sr.nii.gz"))
    assert sr.shape == (24, 20, 28)
    np.testing.assert_allclose(sr.affine, sr_affine(_affine(), (2, 2, 2)), atol=1e-6)
    np.testing.assert_allclose(sr.header.get_zooms(), (0.6, 0.4, 0.5), atol=1e-6)
    assert not (out / "metrics.json").exists()  # no reference, no metrics
    assert nib.load(str(out / "uncertainty.nii.gz")).get_fdata().max() > 0


def test_bad_inputs_exit_2_with_a_named_error(tmp_path, ckpt, capsys):
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(phantom((12, 12, 12)), _affine()), str(scan))
    cases = [
        (["--input", str(scan), "--scale", "1.5"], "--scale: '1.5' does not divide sensibly"),
        (["--input", str(scan), "--scale", "1,1,4", "--checkpoint", str(ckpt)],
         "tiny2x.pt: trained for scale 2,2,2, which cannot serve scale 1,1,4 even with the axes permuted"),
        (["--input", str(tmp_path / "nope.nii.gz"), "--checkpoint", str(ckpt)], "nope.nii.gz: no such file"),
        (["--input", str(ROOT / "pyproject.toml"), "--checkpoint", str(ckpt)], "pyproject.toml: not a NIfTI"),
        (["--input", str(scan), "--checkpoint", str(ckpt), "--out", str(tmp_path), "--steps", "1",
          "--samples", "1"], None),
    ]
    for argv, msg in cases[:-1]:
        assert main(argv) == 2, argv
        assert msg in capsys.readouterr().err
    # an input named like an output, in the output folder, is never overwritten
    victim = tmp_path / "sr.nii.gz"
    victim.write_bytes(scan.read_bytes())
    before = victim.read_bytes()
    assert main(["--input", str(victim), "--checkpoint", str(ckpt), "--out", str(tmp_path), "--steps", "1",
                 "--samples", "1"]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert victim.read_bytes() == before


def test_shipped_checkpoints_load_for_their_scales():
    for scale in ((2, 2, 2), (1, 1, 4)):
        path = default_checkpoint(scale)
        assert path.is_file(), f"missing shipped checkpoint {path}"
        assert path.stat().st_size < 20 * 2**20
        model = load_checkpoint(path, scale)
        assert model.config.scale == scale


def test_cli_help_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "recipes.mri_superres", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--reference" in out.stdout and "--scale" in out.stdout
