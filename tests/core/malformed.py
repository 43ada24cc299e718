"""Builders of malformed and unusual CT inputs from the real samples (for tmp_path fixtures).

Nothing here is committed as data: every file is written at test time.
"""

from __future__ import annotations

import gzip
import re
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_vertebra.core import Volume

#: SOP class of CT images (the sample's slices have it emptied by anonymisation).
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_array_like(img: sitk.Image, arr: np.ndarray, path: Path, compress: bool = True) -> Path:
    """Write ``arr`` (z, y, x) with ``img``'s geometry to ``path``."""
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path), useCompression=compress)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` (the largest file of it: .raw for .mhd) to ``keep`` of its size."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation about LPS axis "x", "y" or "z"."""
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def rotated(vol: Volume, rot: np.ndarray) -> Volume:
    """``vol`` with its grid turned by ``rot`` about its centre (same voxels, new direction)."""
    centre = vol.index_to_physical((np.array(vol.shape, float) - 1) / 2)
    origin = centre + rot @ (np.asarray(vol.origin) - centre)
    return replace(vol, direction=rot @ vol.direction, origin=tuple(origin))


def copy_dicom_series(
    src: Path,
    dst: Path,
    skip: tuple[int, ...] = (),
    tilt_degrees: float = 0.0,
    shift_mm: float = 0.0,
) -> list[Path]:
    """Rewrite the DICOM series of ``src`` into ``dst`` with SimpleITK, slice by slice.

    ``skip`` leaves those slices out (a missing slice). ``tilt_degrees`` tilts the slice
    planes about x (ImageOrientationPatient) while the slice positions keep advancing
    along z, as a CT acquired with a tilted gantry stores them. ``shift_mm`` moves each
    slice's position that far further in y than the one before (axial planes, positions
    sheared). The pixel data are kept;
    new study / series / instance UIDs are written. Returns the written files in order.
    """
    dst.mkdir(parents=True, exist_ok=True)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(src))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    t = np.radians(tilt_degrees)
    root = "1.2.826.0.1.3680043.2.1125.9"
    out = []
    for i, f in enumerate(files):
        if i in skip:
            continue
        img = sitk.ReadImage(f)
        img.SetMetaData("0008|0016", CT_IMAGE_STORAGE)
        img.SetMetaData("0020|000d", f"{root}.1")
        img.SetMetaData("0020|000e", f"{root}.2")
        img.SetMetaData("0008|0018", f"{root}.3.{i + 1}")
        if tilt_degrees:
            img.SetMetaData("0020|0037", f"1\\0\\0\\0\\{np.cos(t):.6f}\\{np.sin(t):.6f}")
        if shift_mm:
            x, y, z = (float(v) for v in img.GetMetaData("0020|0032").split("\\"))
            img.SetMetaData("0020|0032", f"{x}\\{y + i * shift_mm}\\{z}")
        p = dst / f"{i:03d}.dcm"
        writer.SetFileName(str(p))
        writer.Execute(img)
        out.append(p)
    return out


def dicom_slices(src: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Pixel arrays (row, col) and ImagePositionPatient of each slice of the series in ``src``."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(src))
    arrays, positions = [], []
    for f in files:
        img = sitk.ReadImage(f)
        arrays.append(sitk.GetArrayFromImage(img)[0])
        positions.append(np.array([float(v) for v in img.GetMetaData("0020|0032").split("\\")]))
    return arrays, positions


def copy_tree(src: Path, dst: Path) -> Path:
    """A plain copy of a folder."""
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------ header fields
#: Offset and struct format of NIfTI-1 header fields.
NIFTI1_FIELDS = {
    "pixdim": (76, "<8f"),
    "codes": (252, "<2h"),  # qform_code, sform_code
    "quatern": (256, "<3f"),
    "qoffset": (268, "<3f"),
    "srow": (280, "<12f"),
}


def nifti_field(raw: bytes, name: str) -> np.ndarray:
    """A field of an uncompressed NIfTI-1 file's header."""
    off, fmt = NIFTI1_FIELDS[name]
    return np.array(struct.unpack_from(fmt, raw, off), float)


def nifti_with(src: Path, dst: Path, **fields) -> Path:
    """``src`` (a .nii.gz) rewritten to ``dst`` (.nii or .nii.gz) with header fields set."""
    raw = bytearray(gzip.decompress(src.read_bytes()))
    for name, values in fields.items():
        off, fmt = NIFTI1_FIELDS[name]
        struct.pack_into(fmt, raw, off, *np.ravel(values))
    data = bytes(raw)
    dst.write_bytes(gzip.compress(data, 1) if dst.name.endswith(".gz") else data)
    return dst


def metaimage_with(img: sitk.Image, dst: Path, **fields: str) -> Path:
    """``img`` written as MetaImage (``dst``, .mha) with header lines replaced."""
    sitk.WriteImage(img, str(dst))
    data = dst.read_bytes()
    end = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    head = data[:end].decode()
    for key, value in fields.items():
        head = re.sub(rf"^{key} = .*$", f"{key} = {value}", head, flags=re.M)
    dst.write_bytes(head.encode() + data[end:])
    return dst


def nrrd_with(img: sitk.Image, dst: Path, space_directions: str) -> Path:
    """``img`` written as NRRD (``dst``, raw) with its ``space directions`` replaced."""
    sitk.WriteImage(img, str(dst), useCompression=False)
    data = dst.read_bytes()
    end = data.index(b"\n\n") + 2
    head = re.sub(
        r"^space directions: .*$",
        f"space directions: {space_directions}",
        data[:end].decode(),
        flags=re.M,
    )
    dst.write_bytes(head.encode() + data[end:])
    return dst


def dicom_with_value(src: Path, dst: Path, group: int, element: int, value: bytes) -> Path:
    """A copy of the DICOM folder ``src`` whose files hold ``value`` in an explicit-VR
    little-endian element (group, element), e.g. PixelSpacing (0x0028, 0x0030)."""
    dst.mkdir(parents=True)
    tag = struct.pack("<HH", group, element)
    value = value + b" " * (len(value) % 2)
    for f in sorted(src.iterdir()):
        data = bytearray(f.read_bytes())
        i = data.index(tag)
        n = struct.unpack_from("<H", data, i + 6)[0]
        data[i + 6 : i + 8 + n] = struct.pack("<H", len(value)) + value
        (dst / f.name).write_bytes(bytes(data))
    return dst
