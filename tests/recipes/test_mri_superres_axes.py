"""Slice axis, target spacing and --adapt through the recipe: permutations, header-derived factors, errors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from recipes.mri_superres import main
from sciffusion.plugins.mri.cli import target_spacing_scale
from sciffusion.plugins.mri.infer import super_resolve
from sciffusion.plugins.mri.io import Volume, VolumeError, sr_affine
from sciffusion.plugins.mri.model import SRDenoiser, load_checkpoint, save_checkpoint
from sciffusion.plugins.mri.pipeline import axis_permutation, super_resolve_volume
from tests.plugins.mri.helpers import phantom, tiny_config


@pytest.fixture(scope="module")
def ckpt114(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny114.pt"
    save_checkpoint(SRDenoiser(tiny_config((1, 1, 4))), path)
    return path


def _save(path, data, zooms):
    a = np.diag([*zooms, 1.0])
    a[:3, 3] = [-20.0, 5.0, 3.0]
    nib.save(nib.Nifti1Image(data.astype(np.float32), a), str(path))
    return path


@pytest.mark.parametrize("zooms, target, want", [((1.0, 1.0, 4.0), 1.0, (1, 1, 4)),
                                                  ((0.94, 0.94, 4.0), 1.0, (1, 1, 4)),
                                                  ((3.0, 1.0, 1.0), 1.0, (3, 1, 1)),
                                                  ((2.0, 2.0, 2.0), 1.0, (2, 2, 2)),
                                                  ((1.0, 1.0, 3.96), 1.0, (1, 1, 4))])
def test_target_spacing_factors(zooms, target, want):
    assert target_spacing_scale(zooms, target) == want


@pytest.mark.parametrize("zooms, target, msg", [((1.0, 1.0, 2.5), 1.0, "2.5 x the target spacing 1 mm, not an integer"),
                                                ((1.0, 1.0, 1.0), 2.0, "already at or below --target-spacing 2 mm"),
                                                ((1.0, 1.0, 4.0), 0.0, "must be > 0")])
def test_target_spacing_errors(zooms, target, msg):
    with pytest.raises(VolumeError, match=msg):
        target_spacing_scale(zooms, target, "scan.nii")


def test_axis_permutation():
    assert axis_permutation((1, 1, 4), (1, 1, 4)) == (0, 1, 2)
    assert axis_permutation((4, 1, 1), (1, 1, 4)) == (1, 2, 0)
    assert axis_permutation((1, 4, 1), (1, 1, 4)) == (0, 2, 1)
    with pytest.raises(VolumeError, match="cannot serve scale 2,1,1"):
        axis_permutation((2, 1, 1), (1, 1, 4))


def test_thick_axis_first_is_served_by_permuting(ckpt114):
    model = load_checkpoint(ckpt114)
    lr = phantom((12, 16, 18))  # thick slices along axis 0
    vol = Volume(lr, np.diag([4.0, 1.0, 1.0, 1.0]), None, "scan")
    run = super_resolve_volume(vol, model, samples=2, steps=2, seed=1, scale=(4, 1, 1))
    assert run.result.mean.shape == (48, 16, 18)
    direct = super_resolve(model, np.transpose(lr, (1, 2, 0)), samples=2, steps=2, seed=1)
    np.testing.assert_allclose(run.result.mean, np.transpose(direct.mean, (2, 0, 1)), atol=1e-5)
    np.testing.assert_allclose(run.result.std, np.transpose(direct.std, (2, 0, 1)), atol=1e-5)
    np.testing.assert_allclose(run.affine, sr_affine(vol.affine, (4, 1, 1)))
    assert run.settings["axis_permutation"] == [1, 2, 0]


def test_recipe_target_spacing_and_scale_per_axis(tmp_path, ckpt114, capsys):
    scan = _save(tmp_path / "thick.nii.gz", phantom((16, 16, 6)), (1.0, 1.0, 4.0))
    out = tmp_path / "o"
    assert main(["--input", str(scan), "--target-spacing", "1", "--checkpoint", str(ckpt114), "--steps", "1",
                 "--samples", "2", "--out", str(out)]) == 0
    assert "-> target 1 mm: scale 1,1,4" in capsys.readouterr().out
    sr = nib.load(str(out / "sr.nii.gz"))
    assert sr.shape == (16, 16, 24)
    np.testing.assert_allclose(sr.header.get_zooms(), (1.0, 1.0, 1.0), atol=1e-6)
    side = _save(tmp_path / "side.nii.gz", phantom((6, 16, 16)), (4.0, 1.0, 1.0))
    assert main(["--input", str(side), "--scale", "4,1,1", "--checkpoint", str(ckpt114), "--steps", "1",
                 "--samples", "1", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert nib.load(str(tmp_path / "s" / "sr.nii.gz")).shape == (24, 16, 16)


def test_recipe_bad_axis_spacing_and_adapt_exit_2(tmp_path, ckpt114, capsys):
    iso = _save(tmp_path / "iso.nii.gz", phantom((16, 16, 16)), (1.0, 1.0, 1.0))
    frac = _save(tmp_path / "frac.nii.gz", phantom((16, 16, 8)), (1.0, 1.0, 2.5))
    cases = [
        (["--input", str(iso), "--scale", "2,1,1", "--checkpoint", str(ckpt114)], "cannot serve scale 2,1,1"),
        (["--input", str(frac), "--target-spacing", "1", "--checkpoint", str(ckpt114)], "not an integer factor"),
        (["--input", str(iso), "--target-spacing", "2", "--checkpoint", str(ckpt114)], "nothing to refine"),
        (["--input", str(iso), "--scale", "1,1,4", "--adapt", "5", "--checkpoint", str(ckpt114)],
         "needs an anisotropic input (thick slices), but its voxels are isotropic"),
        (["--input", str(frac), "--scale", "2", "--adapt", "5"], "--adapt needs a thick-slice scale"),
        (["--reference", str(iso), "--target-spacing", "1"], "--target-spacing needs --input"),
    ]
    for argv, msg in cases:
        assert main([*argv, "--out", str(tmp_path / "x"), "--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err


def test_adapt_fine_tunes_on_the_scan(tmp_path, ckpt114):
    from sciffusion.plugins.mri.adapt import adapt_model, inplane_volumes

    model = load_checkpoint(ckpt114)
    from sciffusion.plugins.mri.degrade import upsample

    lr = phantom((40, 40, 8))
    vols = inplane_volumes(lr, (1, 1, 4))
    assert [v.shape for v in vols] == [(40, 32, 40), (40, 32, 40)]  # thick axis interpolated to 1 mm
    up = upsample(lr, (1, 1, 4), 3)
    np.testing.assert_array_equal(vols[0][:, 13, :], up[:, :, 13].T)  # (y, z', x): plane z'=13 is an x-y image
    np.testing.assert_array_equal(vols[1][:, 13, :], up[:, :, 13])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = adapt_model(model, lr, steps=2, batch_size=1)
    assert any(not torch.equal(before[k], v) for k, v in adapted.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    vol = Volume(lr, np.diag([1.0, 1.0, 4.0, 1.0]), None, "scan")
    run = super_resolve_volume(vol, model, samples=1, steps=1, adapt=2)
    assert run.settings["adapt_steps"] == 2 and run.result.mean.shape == (40, 40, 32)


def test_recipe_training_flags_reach_the_trainer(tmp_path, monkeypatch, ckpt114):
    import sciffusion.plugins.mri.train as T

    seen = {}

    def fake_train_on_mni(scale, run_dir, **kw):
        seen.update(kw, scale=scale, run_dir=run_dir)
        save_checkpoint(SRDenoiser(tiny_config(scale)), kw["export"])

    monkeypatch.setattr(T, "train_on_mni", fake_train_on_mni)
    export = tmp_path / "m.pt"
    iso = _save(tmp_path / "thick.nii.gz", phantom((16, 16, 6)), (1.0, 1.0, 4.0))
    assert main(["--train", "--blind", "--synth", "0.3", "--scale", "1,1,4", "--train-steps", "7", "--init", str(ckpt114),
                 "--train-dir", str(tmp_path / "run"), "--export", str(export), "--input", str(iso), "--steps", "1",
                 "--samples", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert seen["family"].p_synth == 0.3 and seen["steps"] == 7 and seen["init"] == str(ckpt114)
    assert seen["run_dir"] == tmp_path / "run" and seen["scale"] == (1, 1, 4)
    assert main(["--train", "--synth", "0.3", "--out", str(tmp_path / "o"), "--quiet"]) == 2


def test_recipe_estimates_the_slice_profile_of_thick_slices(tmp_path, ckpt114, capsys):
    """`--input` defaults to `--slice-profile auto`: a thick-slice scan (slices along axis 0 here) gets
    an estimate, printed and recorded, that drives the data-consistency step; a 2x scan gets unknown."""
    import json

    from sciffusion.plugins.mri.degrade import SliceProfile, degrade_profile

    thick = degrade_profile(np.transpose(phantom((32, 32, 32)), (2, 0, 1)), (4, 1, 1), SliceProfile("box"))
    path = _save(tmp_path / "thick.nii.gz", thick, (4.0, 1.0, 1.0))
    out = tmp_path / "o"
    assert main(["--input", str(path), "--scale", "4,1,1", "--checkpoint", str(ckpt114), "--samples", "1",
                 "--steps", "1", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    estimate = config["slice_profile_estimate"]["estimated"]
    assert f"slice profile: {estimate}, estimated" in said
    assert config["data_consistency"] != "off"
    torch.manual_seed(0)
    save_checkpoint(SRDenoiser(tiny_config()), tmp_path / "tiny2x.pt")
    iso = _save(tmp_path / "iso.nii.gz", phantom((16, 16, 16)), (2.0, 2.0, 2.0))
    assert main(["--input", str(iso), "--scale", "2", "--checkpoint", str(tmp_path / "tiny2x.pt"), "--samples", "1",
                 "--steps", "1", "--out", str(tmp_path / "o2")]) == 0
    assert "slice profile: unknown (the slice profile can be estimated only for a thick-slice scan" in capsys.readouterr().out
    assert json.loads((tmp_path / "o2" / "config.json").read_text())["data_consistency"] == "off"
