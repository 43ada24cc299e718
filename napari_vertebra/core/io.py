"""Reading CT volumes and label maps through SimpleITK, with clear errors.

Every reader returns a :class:`~napari_vertebra.core.volume.Volume` reoriented to the
canonical LPS orientation (x: right to left, y: anterior to posterior, z: inferior to
superior), with spacing, origin and direction kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .volume import Volume

__all__ = [
    "CT_SUFFIXES",
    "CTReadError",
    "DicomSeries",
    "MultipleSeriesError",
    "is_supported_path",
    "list_dicom_series",
    "read_ct",
    "read_labels",
    "write_volume",
]

#: File suffixes read as volumes (a folder is read as a DICOM series).
CT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


class CTReadError(ValueError):
    """A file or folder could not be read as a 3D CT volume; the message says why."""


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder."""

    uid: str
    description: str
    n_files: int


class MultipleSeriesError(CTReadError):
    """A DICOM folder holds several series; pass ``series=`` one of ``self.series``."""

    def __init__(self, path: Path, series: list[DicomSeries]):
        self.path = path
        self.series = series
        lines = "\n".join(
            f"  {s.uid}  ({s.n_files} files{', ' + s.description if s.description else ''})"
            for s in series
        )
        super().__init__(
            f"{path}: the folder holds {len(series)} DICOM series; choose one with "
            f"series=<uid> (command line: --series UID):\n{lines}"
        )


def is_supported_path(path: str | os.PathLike) -> bool:
    """True for a file with a volume suffix or a folder (possibly a DICOM series)."""
    p = Path(path)
    return p.is_dir() or p.name.lower().endswith(CT_SUFFIXES)


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM series in ``folder`` (not recursive), largest first."""
    folder = Path(folder)
    reader = sitk.ImageSeriesReader()
    out = []
    for uid in reader.GetGDCMSeriesIDs(str(folder)) or ():
        files = reader.GetGDCMSeriesFileNames(str(folder), uid)
        desc = ""
        try:
            fr = sitk.ImageFileReader()
            fr.SetFileName(files[0])
            fr.ReadImageInformation()
            if fr.HasMetaDataKey("0008|103e"):
                desc = fr.GetMetaData("0008|103e").strip()
        except RuntimeError:
            pass
        out.append(DicomSeries(uid=uid, description=desc, n_files=len(files)))
    return sorted(out, key=lambda s: -s.n_files)


def _read_dicom_folder(folder: Path, series: str | None) -> sitk.Image:
    all_series = list_dicom_series(folder)
    if not all_series:
        raise CTReadError(f"{folder}: no DICOM series found in this folder")
    if series is None:
        if len(all_series) > 1:
            raise MultipleSeriesError(folder, all_series)
        series = all_series[0].uid
    elif series not in {s.uid for s in all_series}:
        raise CTReadError(
            f"{folder}: no DICOM series {series!r}; found: " + ", ".join(s.uid for s in all_series)
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series)
    if len(files) < 2:
        raise CTReadError(f"{folder}: DICOM series {series} has one slice; a 3D CT needs more")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as e:
        raise CTReadError(
            f"{folder}: could not read DICOM series {series}: {_first_line(e)}"
        ) from e


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # SimpleITK errors end with the useful sentence; keep it short.
    return lines[-1] if lines else type(e).__name__


def _read_image(path: str | os.PathLike, series: str | None = None) -> tuple[Path, sitk.Image]:
    p = Path(path)
    if not p.exists():
        raise CTReadError(f"{p}: no such file or folder")
    if p.is_dir():
        img = _read_dicom_folder(p, series)
    else:
        try:
            img = sitk.ReadImage(str(p))
        except RuntimeError as e:
            msg = _first_line(e)
            if p.name.lower().endswith(".gz"):
                raise CTReadError(
                    f"{p}: could not read the file; the archive may be corrupt or cut short "
                    f"({msg})"
                ) from e
            raise CTReadError(f"{p}: not an image SimpleITK can read ({msg})") from e
        if p.name.lower().endswith(".nii.gz") and not _nifti_gz_complete(p):
            raise CTReadError(
                f"{p}: the gzip archive is cut short or corrupt (it ends before the image "
                "data does)"
            )
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CTReadError(
            f"{p}: has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a CT has one (grey values in HU)"
        )
    dim = img.GetDimension()
    if dim == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
        dim = 3
    if dim != 3:
        size = "x".join(str(s) for s in img.GetSize())
        raise CTReadError(f"{p}: is {dim}D (size {size}); a CT volume must be 3D")
    if min(img.GetSize()) < 2:
        raise CTReadError(f"{p}: size {img.GetSize()} is a single slice, not a volume")
    return p, img


def _nifti_gz_complete(path: Path) -> bool:
    """False when a .nii.gz stream is cut short (ITK then reads it silently, zero-filled).

    Fast path: the gzip trailer's uncompressed size matches the size the NIfTI header
    announces. Otherwise the whole stream is decompressed to check it ends properly.
    """
    import gzip
    import struct
    import zlib

    try:
        with gzip.open(path, "rb") as f:
            head = f.read(544)
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(size - 4)
            isize = struct.unpack("<I", f.read(4))[0]
        expected = None
        for end in "<>":
            n = struct.unpack(end + "i", head[:4])[0]
            if n == 348:  # NIfTI-1
                dim = struct.unpack(end + "8h", head[40:56])
                bitpix = struct.unpack(end + "h", head[72:74])[0]
                offset = int(struct.unpack(end + "f", head[108:112])[0])
            elif n == 540:  # NIfTI-2
                dim = struct.unpack(end + "8q", head[16:80])
                bitpix = struct.unpack(end + "h", head[14:16])[0]
                offset = struct.unpack(end + "q", head[168:176])[0]
            else:
                continue
            nvox = int(np.prod([max(1, d) for d in dim[1 : 1 + max(0, min(7, dim[0]))]]))
            expected = max(offset, n) + nvox * bitpix // 8
            break
        if expected is not None and expected % 2**32 == isize:
            return True
        with gzip.open(path, "rb") as f:  # slow path: decompress to the end
            while f.read(1 << 24):
                pass
        return True
    except (OSError, EOFError, zlib.error, struct.error):
        return False


def _to_lps(img: sitk.Image) -> sitk.Image:
    """Reorient to LPS by axis permutation and flips only (no resampling)."""
    return sitk.DICOMOrient(img, "LPS")


def read_ct(path: str | os.PathLike, series: str | None = None) -> Volume:
    """Read a CT (NIfTI, NRRD, MHA/MHD or a DICOM series folder) as an LPS Volume in HU.

    ``series`` picks one series of a DICOM folder that holds several
    (:class:`MultipleSeriesError` lists them). Raises :class:`CTReadError` with the file
    and the problem for anything that is not a 3D scalar volume.
    """
    _, img = _read_image(path, series)
    return Volume.from_sitk(_to_lps(img))


def read_labels(
    path: str | os.PathLike, like: Volume | None = None, series: str | None = None
) -> Volume:
    """Read an integer label map as an LPS Volume.

    With ``like`` (the CT it belongs to), the label map must share its grid, otherwise a
    :class:`CTReadError` says how they differ.
    """
    p, img = _read_image(path, series)
    vol = Volume.from_sitk(_to_lps(img))
    arr = vol.array
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise CTReadError(f"{p}: holds non-integer values; a label map holds integer ids")
        vol = vol.with_array(arr.astype(np.int32))
    if like is not None and not vol.same_grid(like):
        raise CTReadError(
            f"{p}: the label map's grid does not match the CT "
            f"(labels: shape {vol.shape}, spacing {_fmt(vol.spacing)}, origin {_fmt(vol.origin)}; "
            f"CT: shape {like.shape}, spacing {_fmt(like.spacing)}, origin {_fmt(like.origin)})"
        )
    return vol


def _fmt(t: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in t) + ")"


def write_volume(volume: Volume, path: str | os.PathLike) -> None:
    """Write a Volume with its geometry (format from the suffix, e.g. .nii.gz, .nrrd)."""
    sitk.WriteImage(volume.to_sitk(), str(path), useCompression=True)
