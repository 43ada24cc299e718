"""Reading CT volumes and label maps through SimpleITK, with clear errors.

Every reader returns a :class:`~napari_vertebra.core.volume.Volume` with its index axes
permuted and flipped to the closest of the canonical LPS orientation (x: right to left,
y: anterior to posterior, z: inferior to superior), spacing, origin and direction kept.
An oblique scan keeps its oblique direction here;
:func:`~napari_vertebra.core.resample.resample_isotropic` straightens it onto an
axis-aligned LPS grid.

What is read is validated (see ``docs/reading.md``): a file cut short, a header whose
grid cannot be right (zero or negative spacing, a scaled, sheared or singular direction:
:mod:`.header`), values that cannot be Hounsfield units, a DICOM series with a missing
slice raise :class:`CTReadError`; what can be corrected without guessing (HU stored with
a +1024 offset, NaN voxels, a DICOM gantry tilt, a NIfTI placed by nibabel's choice of
sform or qform: :mod:`.nifti`, DICOM files that cannot be opened left out) is corrected
and said in ``Volume.warnings``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dicom import read_dicom_folder
from .errors import CTReadError, quiet_itk, sitk_reason
from .header import check_grid
from .nifti import check_nifti_size, nifti_gz_complete, nifti_transform, place, read_nifti_header
from .volume import Volume

__all__ = [
    "CT_SUFFIXES",
    "check_ct",
    "is_supported_path",
    "read_ct",
    "read_labels",
    "read_volume",
    "write_volume",
]

#: File suffixes read as volumes (a folder is read as a DICOM series).
CT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_supported_path(path: str | os.PathLike) -> bool:
    """True for a file with a volume suffix or a folder (possibly a DICOM series)."""
    p = Path(path)
    return p.is_dir() or p.name.lower().endswith(CT_SUFFIXES)


def _read_image(
    path: str | os.PathLike, series: str | None = None
) -> tuple[Path, sitk.Image, list[str]]:
    """The 3D scalar image of a file or DICOM folder, its header checked, and notes."""
    p = Path(path)
    if not p.exists():
        raise CTReadError(f"{p}: no such file or folder")
    if p.is_dir():
        img, notes = read_dicom_folder(p, series)
        check_grid(p, img.GetSpacing(), img.GetDirection())
        return p, _scalar_3d(p, img), notes
    name = p.name.lower()
    hdr = read_nifti_header(p) if name.endswith((".nii", ".nii.gz")) else None
    if name.endswith(".nii"):
        check_nifti_size(p, hdr)
    affine, notes = nifti_transform(p, hdr) if hdr is not None else (None, [])
    info = _header_info(p)
    if info is not None and hdr is None and info.GetDimension() >= 3:
        n = info.GetDimension()
        direction = np.reshape(info.GetDirection(), (n, n))[:3, :3]
        check_grid(p, info.GetSpacing()[:3], tuple(direction.ravel()))
    try:
        with quiet_itk(hdr is not None):  # NIfTI: its geometry is checked below, clearly
            img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        raise _read_failure(p, e, info is not None) from e
    if name.endswith(".nii.gz") and not nifti_gz_complete(p, hdr):
        raise CTReadError(
            f"{p}: the gzip archive is cut short or corrupt (it ends before the image "
            "data does); copy or export the file again"
        )
    img = _scalar_3d(p, img)
    return p, (place(img, affine) if affine is not None else img), notes


def _header_info(p: Path) -> sitk.ImageFileReader | None:
    """SimpleITK's reader of ``p`` with its header read, or None when it reads no header."""
    info = sitk.ImageFileReader()
    info.SetFileName(str(p))
    try:
        with quiet_itk():
            info.ReadImageInformation()
    except RuntimeError:
        return None
    return info


def _scalar_3d(p: Path, img: sitk.Image) -> sitk.Image:
    """``img`` as a 3D image of one value per voxel, or a :class:`CTReadError` saying
    what the file holds instead and what to do."""
    size = "x".join(str(s) for s in img.GetSize())
    n = img.GetNumberOfComponentsPerPixel()
    if n != 1:
        hint = (
            "; SimpleITK's GetImageFromArray makes this of a 4D array unless given isVector=False"
            if n > 4
            else ""
        )
        raise CTReadError(
            f"{p}: is a {size} image with {n} values per voxel (a colour or vector "
            f"image{hint}), not a CT, which has one grey value (HU) per voxel. If it holds "
            "several CT volumes, save each as its own 3D file and read that one"
        )
    dim = img.GetDimension()
    if dim == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
        dim = 3
    if dim == 4:
        one = "x".join(str(s) for s in img.GetSize()[:3])
        raise CTReadError(
            f"{p}: is 4D, a series of {img.GetSize()[3]} volumes of {one} voxels (e.g. "
            "phases or time points), not one CT volume: save the volume you want as a 3D "
            "file (e.g. with SimpleITK: sitk.WriteImage(img[:, :, :, 0], 'ct.nii.gz')) and "
            "read that one"
        )
    if dim != 3:
        raise CTReadError(
            f"{p}: is {dim}D (size {size}); a CT volume must be 3D: read the whole "
            "series (a DICOM folder or a 3D file), not one picture of it"
        )
    if min(img.GetSize()) < 2:
        raise CTReadError(f"{p}: size {img.GetSize()} is a single slice, not a volume")
    return img


def _read_failure(p: Path, e: RuntimeError, header_ok: bool) -> CTReadError:
    """The error for a file SimpleITK cannot read: no image at all, or a header without data."""
    msg = sitk_reason(e)
    if header_ok or p.name.lower().endswith(".gz"):
        detail = "" if "No such file" in msg else f" ({msg})"
        return CTReadError(
            f"{p}: the image data could not be read: the file is cut short or corrupt"
            f"{detail}; copy or export it again"
        )
    return CTReadError(f"{p}: not an image SimpleITK can read ({msg})")


def _to_lps(img: sitk.Image) -> sitk.Image:
    """Reorient to LPS by axis permutation and flips only (no resampling).

    For an oblique scan this is the closest permutation; the exact straightening is done
    by the resampling to isotropic voxels.
    """
    return sitk.DICOMOrient(img, "LPS")


# ----------------------------------------------------------------------------- values
#: Value that replaces NaN / inf voxels of a CT: air.
AIR_HU = -1024
#: Offset of CTs stored unsigned without a rescale intercept (HU = stored - 1024).
_UNSIGNED_OFFSET = 1024
#: Voxels sampled to judge the value distribution (fractions are steady well below this).
_SAMPLE_VOXELS = 2_000_000
#: A CT of the trunk holds air or fat (below -50 HU), soft tissue (-300..300 HU) and bone
#: (above 150 HU): least fractions of the voxels for the values to be taken as HU.
_MIN_LOW = 0.005
_MIN_SOFT = 0.05
_MIN_BONE = 0.001


def _sample(arr: np.ndarray) -> np.ndarray:
    flat = arr.reshape(-1)
    step = max(1, flat.size // _SAMPLE_VOXELS)
    return flat[::step].astype(np.float32)


def _hu_fractions(v: np.ndarray, offset: float = 0.0) -> tuple[float, float, float]:
    """Fractions of ``v + offset`` below -50 HU, within -300..300 HU and above 150 HU."""
    low = float(np.mean(v < -50 - offset))
    soft = float(np.mean((v >= -300 - offset) & (v <= 300 - offset)))
    bone = float(np.mean(v > 150 - offset))
    return low, soft, bone


def _looks_like_hu(fr: tuple[float, float, float]) -> bool:
    low, soft, bone = fr
    return low >= _MIN_LOW and soft >= _MIN_SOFT and bone >= _MIN_BONE


def _replace_non_finite(arr: np.ndarray, value: float) -> tuple[np.ndarray, int]:
    """``arr`` with NaN / inf set to ``value`` (copied only when there are some), and the count."""
    if arr.dtype.kind != "f":
        return arr, 0
    bad = ~np.isfinite(arr)
    count = int(np.count_nonzero(bad))
    if count:
        arr = arr.copy()
        arr[bad] = value
    return arr, count


def _check_ct_values(
    p: Path, arr: np.ndarray, hu_offset: float | None
) -> tuple[np.ndarray, list[str]]:
    """Validate (and where unambiguous, correct) that ``arr`` holds HU; notes of what changed."""
    _check_value_type(p, arr)
    arr, bad, notes = _mark_non_finite(p, arr)
    lo, hi = (np.nanmin(arr), np.nanmax(arr)) if bad is not None else (arr.min(), arr.max())
    if lo == hi:
        raise CTReadError(
            f"{p}: every voxel holds the same value ({lo:g}); there is no image in it. "
            "Check the export (an empty or blank volume)"
        )
    v = _sample(arr)
    if bad is not None:
        v = v[np.isfinite(v)]
    if hu_offset is not None:
        offset = float(hu_offset)
    else:
        offset = _unsigned_offset(v)
        if offset:
            notes.append(
                f"values look like HU + {_UNSIGNED_OFFSET} stored without a rescale "
                f"intercept (none below -50, soft tissue near {_UNSIGNED_OFFSET}): "
                f"subtracted {_UNSIGNED_OFFSET} to get HU (hu_offset=0, on the command line "
                "--hu-offset 0, reads them as stored)"
            )
    fr = _hu_fractions(v, offset)
    if not _looks_like_hu(fr):
        shown = f" after the offset {offset:+g}" if offset else ""
        raise CTReadError(
            f"{p}: the values{shown} do not look like Hounsfield units (range {lo:g}..{hi:g}; "
            f"{100 * fr[0]:.1f}% below -50 HU (air, fat), {100 * fr[1]:.1f}% in -300..300 HU "
            f"(soft tissue), {100 * fr[2]:.2f}% above 150 HU (bone)): a CT needs all three. "
            "If the data are HU shifted by a constant, pass it as hu_offset "
            "(command line: --hu-offset, e.g. -1024)"
        )
    if bad is not None:
        arr[bad] = AIR_HU - offset
    if offset:
        arr = _add_offset(arr, offset)
    return arr, notes


def _check_value_type(p: Path, arr: np.ndarray) -> None:
    """Refuse voxel types that cannot hold HU: booleans, non-numbers, 8-bit integers."""
    kind = arr.dtype.kind
    if kind == "b":
        raise CTReadError(f"{p}: holds true/false values, not CT values in HU; use the CT itself")
    if kind not in "iuf":
        raise CTReadError(f"{p}: holds {arr.dtype} values; a CT holds real grey values in HU")
    if arr.dtype.itemsize == 1:
        info = np.iinfo(arr.dtype)
        raise CTReadError(
            f"{p}: holds {arr.dtype} values ({info.min}..{info.max}), which cannot hold CT "
            "values in HU (-1024 to 3000 and more): it looks like a label map or an 8-bit "
            "export. Use the original CT (16-bit or float)"
        )


def _mark_non_finite(p: Path, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """``arr`` with NaN in place of NaN / inf (a copy), where they are, and the note.

    ``None`` and no note where all voxels are finite (``arr`` itself is returned); a
    volume of nothing but NaN / inf is refused.
    """
    if arr.dtype.kind != "f":
        return arr, None, []
    bad = ~np.isfinite(arr)
    n_bad = int(np.count_nonzero(bad))
    if n_bad == arr.size:
        raise CTReadError(f"{p}: every voxel is NaN or infinite; there is no image in it")
    if not n_bad:
        return arr, None, []
    arr = arr.copy()
    arr[bad] = np.nan
    note = (
        f"{n_bad:,} voxels ({100 * n_bad / arr.size:.2g}% of the volume) were NaN or "
        f"infinite: set to {AIR_HU} HU (air)"
    )
    return arr, bad, [note]


def _unsigned_offset(v: np.ndarray) -> float:
    """-1024 when the sampled values ``v`` are HU + 1024 stored unsigned, else 0."""
    fr = _hu_fractions(v)
    if not _looks_like_hu(fr) and fr[0] < _MIN_LOW / 5:
        if _looks_like_hu(_hu_fractions(v, -_UNSIGNED_OFFSET)):
            return -float(_UNSIGNED_OFFSET)
    return 0.0


def _add_offset(arr: np.ndarray, offset: float) -> np.ndarray:
    """``arr + offset`` in a type that holds the result (signed integers stay integers)."""
    if arr.dtype.kind in "iu" and float(offset).is_integer():
        lo, hi = int(arr.min()) + int(offset), int(arr.max()) + int(offset)
        for t in (np.int16, np.int32, np.int64):
            if (
                np.iinfo(t).min <= lo
                and hi <= np.iinfo(t).max
                and (np.dtype(t).itemsize >= arr.dtype.itemsize or arr.dtype.kind == "u")
            ):
                out = arr.astype(t)
                out += t(offset)
                return out
    out = arr.astype(np.float32) if arr.dtype != np.float64 else arr.copy()
    out += offset
    return out


def read_volume(path: str | os.PathLike, series: str | None = None) -> Volume:
    """Read any 3D scalar volume (a CT or a label map) as an LPS Volume, values as stored.

    The checks of the file apply (cut short, DICOM slice spacing and gantry tilt); the
    checks of CT values do not: :func:`check_ct` adds them (``read_ct`` is both). For a
    reader that learns from the content whether it holds a CT or a label map.
    """
    _, img, notes = _read_image(path, series)
    return replace(Volume.from_sitk(_to_lps(img)), warnings=tuple(notes))


def check_ct(volume: Volume, path: str | os.PathLike, hu_offset: float | None = None) -> Volume:
    """:func:`read_ct`'s checks and corrections of CT values on a volume read from ``path``.

    Raises :class:`CTReadError` (naming ``path``) for values that cannot be HU; returns
    the volume with NaN / inf set to -1024 HU and an HU offset removed, each said in
    ``warnings``.
    """
    arr, more = _check_ct_values(Path(path), volume.array, hu_offset)
    return replace(volume, array=arr, warnings=(*volume.warnings, *more))


def read_ct(
    path: str | os.PathLike, series: str | None = None, hu_offset: float | None = None
) -> Volume:
    """Read a CT (NIfTI, NRRD, MHA/MHD or a DICOM series folder) as an LPS Volume in HU.

    ``series`` picks one series of a DICOM folder that holds several
    (:class:`MultipleSeriesError` lists them). The values are checked to be HU: NaN and
    infinite voxels become -1024 (air); data stored as HU + 1024 without a rescale are
    recognised and shifted; ``hu_offset`` (added to the stored values) overrides that
    recognition. What was corrected is listed in ``Volume.warnings``. Raises
    :class:`CTReadError` with the file and the problem for anything that is not a 3D
    scalar CT (cut short, 8-bit, constant, not HU, a DICOM series with a missing slice).
    See ``docs/reading.md``.
    """
    return check_ct(read_volume(path, series), path, hu_offset)


def read_labels(
    path: str | os.PathLike, like: Volume | None = None, series: str | None = None
) -> Volume:
    """Read an integer label map as an LPS Volume.

    NaN voxels become 0 (background), said in ``Volume.warnings``; other non-integer
    values raise :class:`CTReadError`. With ``like`` (the CT it belongs to), the label
    map must share its grid, otherwise a :class:`CTReadError` says how they differ.
    """
    p, img, notes = _read_image(path, series)
    vol = Volume.from_sitk(_to_lps(img))
    arr = vol.array
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype.kind == "b":
            arr = arr.astype(np.uint8)
        else:
            arr, n_bad = _replace_non_finite(arr, 0)
            if n_bad:
                notes.append(
                    f"{n_bad:,} label voxels ({100 * n_bad / arr.size:.2g}%) were NaN or "
                    "infinite: set to 0 (background)"
                )
            if not np.all(np.mod(arr, 1) == 0):
                frac = arr[np.mod(arr, 1) != 0]
                raise CTReadError(
                    f"{p}: holds non-integer values (e.g. {frac[0]:g}); a label map holds "
                    "integer ids. Use the label map itself, not a probability or a resampled "
                    "copy made with linear interpolation"
                )
            arr = arr.astype(np.int32)
    vol = replace(vol, array=arr, warnings=tuple(notes))
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
