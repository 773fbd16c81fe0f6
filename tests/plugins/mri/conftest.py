"""Shared fixtures: small real NIfTI files, a DICOM series built from pydicom's CT slice, a tiny model."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pytest
import torch

from sciffusion.plugins.mri.model import SRConfig, SRDenoiser, save_checkpoint


def phantom(shape=(32, 32, 32), seed=0) -> np.ndarray:
    """A smooth head-like phantom: an ellipsoid with blobs of different intensity, zero outside."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    head = (g**2).sum(0) < 0.8
    vol = np.zeros(shape, np.float32)
    vol[head] = 100.0
    for _ in range(6):
        c = rng.uniform(-0.5, 0.5, 3)[:, None, None, None]
        vol += 80.0 * np.exp(-((g - c) ** 2).sum(0) / 0.02) * head
    return vol


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


def tiny_config(scale=(2, 2, 2)) -> SRConfig:
    """A small model for fast tests (two levels, 8/16 channels)."""
    patch = tuple(8 if f > 1 else 16 for f in scale)
    return SRConfig(scale=scale, channels=(8, 16), norm_num_groups=8, patch=patch)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised tiny 2x model saved with save_checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny2x.pt"
    save_checkpoint(SRDenoiser(tiny_config()), path)
    return path
