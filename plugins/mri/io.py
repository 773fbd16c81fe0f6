"""Volume I/O: NIfTI through nibabel, DICOM series through MONAI's `LoadImage` (pydicom).

Geometry is kept exact. A volume on grid `A` (4x4 voxel-to-world affine) super-resolved by the
integer factors `f = (f_x, f_y, f_z)` lives on the grid

    A_hr = A @ [[diag(1/f), (1/f - 1) / 2], [0, 1]]

(voxel size divided by `f`; origin moved so that the `f` new voxels tile each old voxel, i.e. the
same field of view), and the grid a degradation by `f` produces is its inverse,

    A_lr = A @ [[diag(f), (f - 1) / 2], [0, 1]].
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from sciffusion.core.atomic import atomic_write

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


class VolumeError(ValueError):
    """A volume file (or array) that cannot be used; the message names the file and the problem."""


@dataclass
class Volume:
    """A 3-D scalar volume with its voxel-to-world affine (RAS+ mm) and, for NIfTI, its header."""

    data: np.ndarray  # (X, Y, Z) float32
    affine: np.ndarray  # (4, 4) float64
    header: nib.Nifti1Header | None = None
    path: str = "<array>"

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel sizes in mm: the column norms of the affine's linear part."""
        return tuple(float(z) for z in np.linalg.norm(self.affine[:3, :3], axis=0))


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _check_nifti_magic(path: Path) -> None:
    """Reject files whose first bytes are not a (gzipped) NIfTI-1/2 header."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(348)
    except (OSError, EOFError, zlib.error) as err:
        raise VolumeError(f"{path}: not a readable NIfTI file ({err})") from err
    if len(head) < 348:
        raise VolumeError(f"{path}: not a NIfTI file (header is {len(head)} bytes, expected 348)")
    size_le = int.from_bytes(head[:4], "little")
    size_be = int.from_bytes(head[:4], "big")
    if {size_le, size_be}.isdisjoint({348, 540}):
        raise VolumeError(f"{path}: not a NIfTI file (sizeof_hdr is not 348 or 540)")


def check_volume(data: np.ndarray, name: str = "<array>") -> np.ndarray:
    """Validate a 3-D volume (finite, non-empty, not constant); return it as float32."""
    if data.ndim != 3:
        raise VolumeError(f"{name}: expected a 3-D volume, got {data.ndim}-D with shape {data.shape}")
    if data.size == 0 or min(data.shape) < 2:
        raise VolumeError(f"{name}: empty volume (shape {data.shape})")
    data = np.asarray(data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        raise VolumeError(f"{name}: {int(bad.sum())} voxels are NaN or infinite")
    if float(data.max()) == float(data.min()):
        raise VolumeError(f"{name}: empty volume (every voxel equals {float(data.min())})")
    return data


def _select_volume(data: np.ndarray, name: str, volume_index: int | None) -> np.ndarray:
    if data.ndim == 4:
        if volume_index is None and data.shape[3] == 1:
            return data[..., 0]
        if volume_index is None:
            raise VolumeError(
                f"{name}: 4-D file with {data.shape[3]} volumes; choose one with volume_index "
                f"(--volume) in 0..{data.shape[3] - 1}"
            )
        if not 0 <= volume_index < data.shape[3]:
            raise VolumeError(f"{name}: volume_index {volume_index} out of range 0..{data.shape[3] - 1}")
        return data[..., volume_index]
    if data.ndim > 4:
        raise VolumeError(f"{name}: expected a 3-D or 4-D image, got {data.ndim}-D {data.shape}")
    return data


def load_volume(path: str | os.PathLike, volume_index: int | None = None) -> Volume:
    """Load a NIfTI file (`.nii`, `.nii.gz`) or a DICOM file/series folder as a `Volume`.

    A 4-D file needs `volume_index` (a 4-D file with one volume is squeezed). The data must be
    3-D, finite and not constant; every failure raises `VolumeError` naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"{p}: no such file or folder")
    if p.is_dir() or p.name.lower().endswith(DICOM_SUFFIXES):
        return _load_dicom(p, volume_index)
    if not _is_nifti(p):
        raise VolumeError(f"{p}: not a NIfTI (.nii, .nii.gz) or DICOM (.dcm, folder) file")
    _check_nifti_magic(p)
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise VolumeError(f"{p}: truncated or corrupt NIfTI file ({err})") from err
    data = _select_volume(data, str(p), volume_index)
    slope, inter = img.dataobj.slope, img.dataobj.inter
    data = data.astype(np.float64) * (1.0 if np.isnan(slope) else slope) + (
        0.0 if np.isnan(inter) else inter
    )
    return Volume(check_volume(data, str(p)), np.asarray(img.affine, np.float64), img.header.copy(), str(p))


def _load_dicom(p: Path, volume_index: int | None) -> Volume:
    """Read DICOM with MONAI's PydicomReader (rescale slope/intercept applied, affine in RAS)."""
    from monai.transforms import LoadImage

    try:
        img = LoadImage(reader="PydicomReader", image_only=True)(str(p))
    except Exception as err:  # MONAI wraps pydicom's many error types
        raise VolumeError(f"{p}: not a readable DICOM file or series ({err})") from err
    data = _select_volume(np.asarray(img.as_tensor(), dtype=np.float64), str(p), volume_index)
    return Volume(check_volume(data, str(p)), np.asarray(img.affine, np.float64), None, str(p))


def sr_affine(affine: np.ndarray, scale: tuple[int, int, int]) -> np.ndarray:
    """Affine of the grid refined by `scale`: `A @ [[diag(1/f), (1/f - 1)/2], [0, 1]]`."""
    f = np.asarray(scale, np.float64)
    m = np.eye(4)
    m[:3, :3] = np.diag(1.0 / f)
    m[:3, 3] = (1.0 / f - 1.0) / 2.0
    return np.asarray(affine, np.float64) @ m


def lr_affine(affine: np.ndarray, scale: tuple[int, int, int]) -> np.ndarray:
    """Affine of the grid coarsened by `scale`: `A @ [[diag(f), (f - 1)/2], [0, 1]]`."""
    f = np.asarray(scale, np.float64)
    m = np.eye(4)
    m[:3, :3] = np.diag(f)
    m[:3, 3] = (f - 1.0) / 2.0
    return np.asarray(affine, np.float64) @ m


def save_volume(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    like: Volume | None = None,
    description: str = "",
    protect: tuple[str | os.PathLike, ...] = (),
) -> Path:
    """Write `data` as NIfTI atomically (temporary file + `os.replace`).

    The header is copied from `like` (a NIfTI input) when given, with the new shape, voxel sizes,
    qform/sform (same codes) and `descrip` set; the file is never written over a path in `protect`.
    """
    out = Path(path)
    if not _is_nifti(out):
        raise VolumeError(f"{out}: output must end in .nii or .nii.gz")
    for q in protect:
        if Path(q).exists() and out.exists() and out.resolve() == Path(q).resolve():
            raise VolumeError(f"{out}: refusing to overwrite the input file")
    header = like.header.copy() if like is not None and like.header is not None else None
    img = nib.Nifti1Image(np.asarray(data, np.float32), None, header=header)
    qcode = int(header["qform_code"]) if header is not None and header["qform_code"] > 0 else 1
    scode = int(header["sform_code"]) if header is not None and header["sform_code"] > 0 else 1
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    img.set_data_dtype(np.float32)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    return atomic_write(out, lambda tmp: nib.save(img, str(tmp)))
