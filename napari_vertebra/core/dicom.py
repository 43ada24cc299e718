"""DICOM folders: the series they hold, reading one, its slice positions and gantry tilt.

Files of a folder that cannot be opened (a link to a missing file, a file without read
permission, a pipe) are left out by name before GDCM looks at the folder: GDCM's
scanner otherwise drops readable slices next to them, and the series' geometry would
come from the slices that remain.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import CTReadError, quiet_itk, sitk_reason

__all__ = ["DicomSeries", "MultipleSeriesError", "list_dicom_series", "read_dicom_folder"]


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


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM series in ``folder`` (not recursive), largest first; files that cannot
    be opened are left out."""
    with _readable(Path(folder)) as (scan, _):
        return _list_series(scan)


def _unreadable(path: str) -> str:
    """Why the file at ``path`` cannot be opened ("" when it can)."""
    if not os.path.exists(path):
        return "a link to a missing file" if os.path.islink(path) else "gone"
    if not os.path.isfile(path):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "no permission to read it"
    return ""


@contextmanager
def _readable(folder: Path) -> Iterator[tuple[Path, list[str]]]:
    """``folder``, or a temporary folder of links to its files that can be opened, and
    the names of the others with the reason ("name (why)")."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise CTReadError(f"{folder}: the folder cannot be listed ({e.strerror})") from e
    files = [e for e in entries if not e.is_dir()]
    why = {e.name: _unreadable(e.path) for e in files}
    skipped = [f"{name} ({reason})" for name, reason in why.items() if reason]
    if not skipped:
        yield folder, []
        return
    with tempfile.TemporaryDirectory(prefix="napari-vertebra-dicom-") as tmp:
        for e in files:
            if not why[e.name]:
                try:
                    os.symlink(os.path.abspath(e.path), os.path.join(tmp, e.name))
                except OSError:
                    shutil.copy2(e.path, os.path.join(tmp, e.name))
        yield Path(tmp), skipped


def _list_series(folder: Path) -> list[DicomSeries]:
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


#: DICOM slice positions: a step between slices that differs from the series' usual step
#: by more than this share of it is a gap (a missing slice) or an overlap.
_DICOM_STEP_TOL = 0.1
#: Slices closer than this along their normal (mm) lie at one position.
_DICOM_MIN_STEP_MM = 0.01
#: A shear of the slice positions (gantry tilt) is resampled away when it moves the last
#: slice by more than this share of a pixel against the first.
_DICOM_SHEAR_PX = 0.5


def read_dicom_folder(folder: Path, series: str | None) -> tuple[sitk.Image, list[str]]:
    """One series of ``folder`` (the only one unless ``series`` names it) and notes on
    its geometry and on the files left out; raises :class:`CTReadError` for a missing
    or incomplete series."""
    with _readable(folder) as (scan, skipped):
        img, notes = _read_series(folder, scan, series, skipped)
    if skipped:
        n = len(skipped)
        notes.insert(
            0,
            f"left out {n} file{'s' if n > 1 else ''} of the DICOM folder that cannot be "
            f"opened: {', '.join(skipped)}; the series was read from the other files and "
            "its slice positions checked as usual",
        )
    return img, notes


def _read_series(
    folder: Path, scan: Path, series: str | None, skipped: list[str]
) -> tuple[sitk.Image, list[str]]:
    """:func:`read_dicom_folder` on ``scan`` (``folder`` or its readable files)."""
    all_series = _list_series(scan)
    if not all_series:
        n = sum(1 for e in os.scandir(folder) if not e.is_dir())
        left = f"; left out: {', '.join(skipped)}" if skipped else ""
        raise CTReadError(
            f"{folder}: no DICOM series found in this folder ({n} files, none a DICOM "
            f"image GDCM can read{left}); choose the folder that holds the series' slices, "
            "or a volume file (.nii.gz, .nrrd, .mha)"
        )
    if series is None:
        if len(all_series) > 1:
            raise MultipleSeriesError(folder, all_series)
        series = all_series[0].uid
    elif series not in {s.uid for s in all_series}:
        raise CTReadError(
            f"{folder}: no DICOM series {series!r}; found: " + ", ".join(s.uid for s in all_series)
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(scan), series)
    if len(files) < 2:
        raise CTReadError(f"{folder}: DICOM series {series} has one slice; a 3D CT needs more")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with quiet_itk():  # spacing is checked below, clearly
            img = reader.Execute()
    except RuntimeError as e:
        raise CTReadError(
            f"{folder}: could not read DICOM series {series}: {sitk_reason(e)}"
        ) from e
    return _dicom_geometry(folder, img, reader, files)


def _check_steps(folder: Path, files: list[str], order: np.ndarray, along: np.ndarray) -> None:
    """Refuse slices (positions ``along`` the normal, in ``order``) not evenly spaced or
    all at one position."""
    steps = np.diff(along)
    step = float(np.median(steps))
    if step < _DICOM_MIN_STEP_MM:
        raise CTReadError(
            f"{folder}: the DICOM slices lie at one position (ImagePositionPatient "
            f"(0020,0032): {len(files)} files {step:.3f} mm apart along the slice normal): "
            "the slice spacing is zero, so they are not one 3D series (repeated "
            "acquisitions, or positions not exported). Export the series with its slice "
            "positions"
        )
    bad = np.nonzero(np.abs(steps - step) > _DICOM_STEP_TOL * max(step, 1e-6))[0]
    if len(bad):
        k = int(bad[0])
        what = "a slice is missing" if steps[k] > step else "slices overlap or repeat"
        raise CTReadError(
            f"{folder}: the DICOM slices are not evenly spaced: {steps[k]:.2f} mm between "
            f"{Path(files[order[k]]).name} and {Path(files[order[k + 1]]).name} (positions "
            f"{along[k]:.1f} and {along[k + 1]:.1f} mm along the slice normal) where the others "
            f"are {step:.2f} mm apart ({len(bad)} such step{'s' if len(bad) > 1 else ''}); "
            f"{what}. Export the complete series again"
        )


def _check_pixel_spacing(folder: Path, reader: sitk.ImageSeriesReader, files: list[str]) -> None:
    """Refuse a PixelSpacing (0028,0030) that is not positive or differs between slices."""
    values = [_dicom_tag(reader, i, "0028|0030") for i in range(len(files))]
    for i, ps in enumerate(values):
        name = Path(files[i]).name
        if ps is not None and (ps.shape != (2,) or not np.all(np.isfinite(ps) & (ps > 0))):
            raise CTReadError(
                f"{folder}: the PixelSpacing (0028,0030) of {name} is {_fmt(ps)}: a pixel's "
                "size in mm must be positive (ITK would take 1 mm or the absolute value). "
                "Export the series again with its pixel spacing"
            )
        if ps is not None and values[0] is not None and not np.allclose(ps, values[0], rtol=1e-3):
            raise CTReadError(
                f"{folder}: the slices' PixelSpacing (0028,0030) differ ({_fmt(values[0])} mm "
                f"in {Path(files[0]).name}, {_fmt(ps)} mm in {name}): they are not one "
                "series on one grid. Export the series again, or read its parts apart"
            )


def _fmt(v: np.ndarray) -> str:
    return ", ".join(f"{x:g}" for x in np.ravel(v))


def _dicom_tag(reader: sitk.ImageSeriesReader, i: int, tag: str) -> np.ndarray | None:
    if not reader.HasMetaDataKey(i, tag):
        return None
    try:
        return np.array([float(v) for v in reader.GetMetaData(i, tag).strip().split("\\")])
    except ValueError:
        return None


def _dicom_geometry(
    folder: Path, img: sitk.Image, reader: sitk.ImageSeriesReader, files: list[str]
) -> tuple[sitk.Image, list[str]]:
    """Check the slice positions (0020|0032) against the slice orientation (0020|0037).

    ITK builds the grid from the first two slices. A series whose slices are not evenly
    spaced (a missing slice) or all at one position, or whose PixelSpacing is not
    positive (ITK would take 1 mm or its absolute value), is refused; one whose
    positions advance obliquely to the slice normal (gantry tilt) is resampled onto an
    orthogonal grid, as dcm2niix does.
    """

    def unchecked(why: str) -> tuple[sitk.Image, list[str]]:
        return img, [
            f"the DICOM slice positions could not be checked for missing slices or a gantry "
            f"tilt ({why}); the grid is ITK's, built from the first slices of {folder.name}"
        ]

    n = img.GetSize()[2]
    if n != len(files):
        return unchecked("multi-frame files have no per-slice position tags")
    _check_pixel_spacing(folder, reader, files)
    pos = [_dicom_tag(reader, i, "0020|0032") for i in range(n)]
    iop = _dicom_tag(reader, 0, "0020|0037")
    if any(p is None or p.shape != (3,) for p in pos) or iop is None or iop.shape != (6,):
        return unchecked("ImagePositionPatient or ImageOrientationPatient missing or unreadable")
    pos = np.array(pos)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    order = np.argsort(pos @ normal, kind="stable")
    _check_steps(folder, files, order, (pos @ normal)[order])
    if not np.array_equal(order, np.arange(n)):
        return img, []  # not in ITK's usual order: keep ITK's geometry
    d = (pos[-1] - pos[0]) / (n - 1)  # mean step between slice positions (mm, LPS)
    shear = d - (d @ normal) * normal
    sx, sy = img.GetSpacing()[:2]
    if np.linalg.norm(shear) * (n - 1) <= _DICOM_SHEAR_PX * min(sx, sy):
        return img, []
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(shear), d @ normal)))
    return _resample_tilt(img, pos[0], row, col, normal, d), [
        f"DICOM gantry tilt of {tilt:.1f} degrees (slice positions sheared against the slice "
        "planes): resampled onto an orthogonal grid as dcm2niix does"
    ]


def _resample_tilt(
    img: sitk.Image,
    p0: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    normal: np.ndarray,
    d: np.ndarray,
) -> sitk.Image:
    """Resample a sheared slice stack onto the orthogonal grid (row, col, normal)."""
    sx, sy = img.GetSpacing()[:2]
    nx, ny, nz = img.GetSize()
    dz = float(d @ normal)
    # the stack as ITK holds it: voxel (i, j, k) at p0 + A (i, j, k)
    a = np.stack([row * sx, col * sy, normal * dz], axis=1)
    # where it really is: p0 + M (i, j, k)
    m = np.stack([row * sx, col * sy, d], axis=1)
    held = sitk.Image(img)
    held.SetOrigin(tuple(p0))
    held.SetDirection(tuple(np.stack([row, col, normal], axis=1).ravel()))
    held.SetSpacing((sx, sy, dz))
    shear = sitk.AffineTransform(3)
    shear.SetMatrix(tuple((a @ np.linalg.inv(m)).ravel()))
    shear.SetCenter(tuple(p0))
    # output grid: the sheared stack's bounding box in the (row, col, normal) frame
    corners = np.array(np.meshgrid([0, nx - 1], [0, ny - 1], [0, nz - 1], indexing="ij"))
    frame = np.stack([row, col, normal], axis=1)
    local = (m @ corners.reshape(3, -1)).T @ frame  # (8, 3) mm in the frame, from p0
    lo, hi = local.min(axis=0), local.max(axis=0)
    spacing = np.array([sx, sy, dz])
    size = [int(v) for v in np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1]
    out = sitk.Resample(
        held,
        size,
        shear,
        sitk.sitkLinear,
        tuple(p0 + frame @ lo),
        tuple(spacing),
        tuple(frame.ravel()),
        -1024.0,
        img.GetPixelID(),
    )
    return out
