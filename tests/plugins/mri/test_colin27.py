"""Finding Colin27: an explicit path, the dpkg lookup, and the message when it is absent."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from sciffusion.plugins.mri import colin27


def test_env_path_wins(tmp_path, monkeypatch):
    p = tmp_path / "ch2bet.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(27, dtype=np.float32).reshape(3, 3, 3), np.eye(4)), str(p))
    monkeypatch.setenv(colin27.ENV, str(p))
    assert colin27.colin27_path() == p
    assert colin27.colin27_available()
    assert colin27.load_colin27().data.shape == (3, 3, 3)


def test_missing_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv(colin27.ENV, str(tmp_path / "absent.nii.gz"))
    monkeypatch.setattr(colin27, "_from_dpkg", lambda: None)
    monkeypatch.setattr(colin27, "KNOWN_DIRS", (str(tmp_path),))
    with pytest.raises(colin27.Colin27Missing, match="apt-get install mricron-data"):
        colin27.colin27_path()
    assert not colin27.colin27_available()


@pytest.mark.skipif(not colin27.colin27_available(), reason=colin27.MISSING)
def test_installed_colin27_is_the_1mm_brain():
    vol = colin27.load_colin27()
    assert vol.data.shape == (181, 217, 181)
    np.testing.assert_allclose(vol.zooms, (1.0, 1.0, 1.0))
