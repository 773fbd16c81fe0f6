"""NIfTI/DICOM I/O: exact geometry round trips and every bad-input error of issue 5."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from sciffusion.plugins.mri.io import VolumeError, load_volume, lr_affine, save_volume, sr_affine


def test_nifti_round_trip_is_exact(nifti, tmp_path):
    path, data, affine = nifti
    vol = load_volume(path)
    assert vol.data.dtype == np.float32 and vol.data.shape == data.shape
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, affine, rtol=0, atol=1e-6)  # header stores float32
    out = save_volume(vol.data * 2, vol.affine, tmp_path / "out" / "x.nii.gz", like=vol, description="doubled")
    back = nib.load(str(out))
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), data * 2)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-6)
    assert back.header["descrip"].tobytes().rstrip(b"\0") == b"doubled"
    assert int(back.header["sform_code"]) > 0 and int(back.header["qform_code"]) > 0
    assert not list(out.parent.glob(".*tmp*")), "temporary file left behind"


def test_sr_affine_keeps_field_of_view_and_voxel_centres(affine):
    scale = (2, 3, 4)
    hr = sr_affine(affine, scale)
    np.testing.assert_allclose(np.linalg.norm(hr[:3, :3], axis=0),
                               np.linalg.norm(affine[:3, :3], axis=0) / scale)
    # The mean world position of the f voxels tiling a coarse voxel is the coarse voxel's centre.
    j = np.array([3, 5, 7])
    ks = np.stack(np.meshgrid(*[np.arange(f) + f * jj for f, jj in zip(scale, j)], indexing="ij"), -1).reshape(-1, 3)
    world_fine = (hr[:3, :3] @ ks.T).T + hr[:3, 3]
    np.testing.assert_allclose(world_fine.mean(0), affine[:3, :3] @ j + affine[:3, 3], atol=1e-9)
    # Corner of the field of view: fine voxel -0.5 edge coincides with coarse voxel -0.5 edge.
    np.testing.assert_allclose(hr[:3, :3] @ np.full(3, -0.5) + hr[:3, 3],
                               affine[:3, :3] @ np.full(3, -0.5) + affine[:3, 3], atol=1e-9)
    np.testing.assert_allclose(lr_affine(sr_affine(affine, scale), scale), affine, atol=1e-12)


def test_chosen_volume_of_4d(tmp_path, affine):
    data = np.stack([np.full((8, 8, 8), v, np.float32) + np.arange(8)[:, None, None] for v in (1, 5, 9)], -1)
    path = tmp_path / "four.nii"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    np.testing.assert_array_equal(load_volume(path, volume_index=1).data, data[..., 1])
    with pytest.raises(VolumeError, match=r"four\.nii.*4-D file with 3 volumes"):
        load_volume(path)
    with pytest.raises(VolumeError, match="out of range"):
        load_volume(path, volume_index=3)


def _expect(path, pattern):
    with pytest.raises(VolumeError, match=pattern) as err:
        load_volume(path)
    assert str(path) in str(err.value)


def test_not_nifti_or_dicom(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    _expect(txt, "not a NIfTI .* or DICOM")
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(gzip.compress(b"this is not an image" * 30))
    _expect(fake, "not a NIfTI file")
    plain = tmp_path / "fake.nii"
    plain.write_bytes(b"\0" * 400)
    _expect(plain, "not a NIfTI file")
    _expect(tmp_path / "missing.nii.gz", "no such file")


def test_truncated_nii_gz(nifti, tmp_path):
    path = nifti[0]
    raw = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    _expect(cut, "truncated or corrupt")


def test_two_d_image(tmp_path, affine):
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16), np.float32), affine), str(path))
    _expect(path, "expected a 3-D volume, got 2-D")


def test_nan_inf_and_empty(tmp_path, affine):
    data = np.ones((8, 8, 8), np.float32)
    data[1, 2, 3], data[4, 4, 4] = np.nan, np.inf
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(p))
    _expect(p, "2 voxels are NaN or infinite")
    z = tmp_path / "zero.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), affine), str(z))
    _expect(z, "empty volume")
    e = tmp_path / "nothing.nii"
    nib.save(nib.Nifti1Image(np.zeros((0, 8, 8), np.float32), affine), str(e))
    _expect(e, "empty volume")


def test_never_writes_over_input(nifti):
    path = nifti[0]
    vol = load_volume(path)
    before = path.read_bytes()
    with pytest.raises(VolumeError, match="refusing to overwrite the input"):
        save_volume(vol.data, vol.affine, path, protect=(path,))
    assert path.read_bytes() == before


def test_dicom_series_and_single_slice(dicom_series, ct_small):
    vol = load_volume(dicom_series)
    assert vol.data.shape == (128, 128, 4)
    np.testing.assert_allclose(vol.zooms, (0.661468, 0.661468, 2.5), atol=1e-5)
    # slices come back in position order, in HU (rescale intercept -1024 applied)
    assert [float(vol.data[..., k].min()) for k in range(4)] == [-896.0, -886.0, -876.0, -866.0]
    _expect(ct_small, "expected a 3-D volume, got 2-D")


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, affine, monkeypatch):
    out = tmp_path / "sr.nii.gz"
    save_volume(np.ones((4, 4, 4), np.float32), affine, out)
    before = out.read_bytes()

    def half_save(img, filename):
        with open(filename, "wb") as f:
            f.write(b"\x1f\x8b half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        save_volume(np.zeros((4, 4, 4), np.float32), affine, out)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["sr.nii.gz"]
