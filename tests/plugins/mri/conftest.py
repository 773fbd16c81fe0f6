"""Shared fixtures: small real NIfTI files, a DICOM series built from pydicom's CT slice, a tiny model."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pytest
import torch

from sciffusion.plugins.mri.model import SRDenoiser, save_checkpoint
from tests.plugins.mri.helpers import phantom, tiny_config


@pytest.fixture
def affine() -> np.ndarray:
    """An oblique, anisotropic affine (rotation, voxel sizes 0.9 x 1.1 x 1.3 mm, offset)."""
    th = 0.3
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.9, 1.1, 1.3])
    a[:3, 3] = [-20.5, 13.25, -7.0]
    return a


@pytest.fixture
def nifti(tmp_path, affine):
    """Write a phantom as .nii.gz with nibabel; returns (path, data, affine)."""
    data = phantom()
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path, data, affine


@pytest.fixture(scope="session")
def ct_small() -> str:
    """pydicom's real CT slice (128 x 128, HU after rescale)."""
    from pydicom.data import get_testdata_file

    return get_testdata_file("CT_small.dcm")


@pytest.fixture
def dicom_series(tmp_path, ct_small):
    """A 4-slice series folder made from CT_small.dcm (slices 2.5 mm apart, +10 HU per slice)."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(ct_small)
    folder = tmp_path / "series"
    folder.mkdir()
    for i in range(4):
        d = copy.deepcopy(ds)
        pos = [float(v) for v in ds.ImagePositionPatient]
        d.ImagePositionPatient = [pos[0], pos[1], pos[2] + 2.5 * i]
        d.InstanceNumber, d.SOPInstanceUID = i + 1, generate_uid()
        d.PixelData = (ds.pixel_array + 10 * i).astype(ds.pixel_array.dtype).tobytes()
        d.save_as(str(folder / f"slice{i}.dcm"))
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised tiny 2x model saved with save_checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny2x.pt"
    save_checkpoint(SRDenoiser(tiny_config()), path)
    return path


@pytest.fixture(scope="session")
def mni_2mm() -> np.ndarray:
    """The MNI152 T1 template at 2 mm from nilearn's installed data (99 x 117 x 95)."""
    from sciffusion.plugins.mri.data import mni_volume

    return np.asarray(mni_volume(2).data, np.float32)
