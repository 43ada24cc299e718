"""NIfTI headers: files cut short, and the grid nibabel would give (sform, qform, pixdim).

A NIfTI-1 / -2 header can place the voxels in two ways, the qform (a rotation from
``quatern_b/c/d``, ``qoffset_x/y/z`` and the voxel size ``pixdim[1..3]``) and the
sform (the affine ``srow_x/y/z``), with codes saying which are set. SimpleITK's choice
between them depends on the codes and on how alike they are, and it takes the voxel
size from ``pixdim`` even where the sform says otherwise (``pixdim[3] = 0`` becomes
1 mm). :func:`nifti_transform` applies nibabel's documented rule instead
(``Nifti1Header.get_best_affine``: the sform when ``sform_code`` > 0, else the qform when
``qform_code`` > 0), refuses what cannot be placed and says what it corrects;
:func:`place` puts SimpleITK's image on that grid. See
``docs/reading.md``.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import CTReadError
from .header import direction_problem

__all__ = [
    "NiftiHeader",
    "check_nifti_size",
    "nifti_gz_complete",
    "nifti_transform",
    "parse_nifti_header",
    "place",
    "read_nifti_header",
]

#: sform and qform taken as the same grid within these: direction cosines, relative
#: voxel size, origin (mm).
_SAME_COSINE = 0.01
_SAME_SIZE = 0.01
_SAME_ORIGIN_MM = 1.0
#: pixdim taken as the sform's voxel size within this share.
_PIXDIM_TOL = 0.01
#: RAS (NIfTI) to LPS (ITK): x and y change sign.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1 or -2 header that size and place the image."""

    version: int
    dim: tuple[int, ...]
    bitpix: int
    vox_offset: int
    pixdim: np.ndarray  # (8,)
    qform_code: int
    sform_code: int
    quatern: np.ndarray  # b, c, d
    qoffset: np.ndarray  # x, y, z
    srow: np.ndarray  # (3, 4)

    def expected_size(self) -> int | None:
        """Bytes the file (header + image data) holds; None when the header is unsure."""
        if not 1 <= self.dim[0] <= 7 or self.bitpix <= 0:
            return None
        nvox = int(np.prod([max(1, d) for d in self.dim[1 : 1 + self.dim[0]]]))
        return max(self.vox_offset, 348 if self.version == 1 else 540) + nvox * self.bitpix // 8

    def sform(self) -> np.ndarray:
        """The 4 x 4 sform (voxel index to RAS mm)."""
        out = np.eye(4)
        out[:3] = self.srow
        return out

    def qform(self) -> np.ndarray:
        """The 4 x 4 qform (voxel index to RAS mm), as the NIfTI standard defines it."""
        b, c, d = self.quatern
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        rot = np.array(
            [
                [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
            ]
        )
        qfac = -1.0 if self.pixdim[0] < 0 else 1.0
        out = np.eye(4)
        out[:3, :3] = rot @ np.diag([self.pixdim[1], self.pixdim[2], qfac * self.pixdim[3]])
        out[:3, 3] = self.qoffset
        return out


#: Offset and struct format of the fields in NIfTI-1 and NIfTI-2 headers.
_N1 = {
    "dim": (40, "8h"), "bitpix": (72, "h"), "pixdim": (76, "8f"), "vox": (108, "f"),
    "codes": (252, "2h"), "quatern": (256, "3f"), "qoffset": (268, "3f"), "srow": (280, "12f"),
}  # fmt: skip
_N2 = {
    "dim": (16, "8q"), "bitpix": (14, "h"), "pixdim": (104, "8d"), "vox": (168, "q"),
    "codes": (344, "2i"), "quatern": (352, "3d"), "qoffset": (376, "3d"), "srow": (400, "12d"),
}  # fmt: skip


def read_nifti_header(path: Path) -> NiftiHeader | None:
    """The header of a ``.nii`` / ``.nii.gz`` file (either byte order); None when it is not one."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(544)
    except (OSError, EOFError, zlib.error):
        return None
    return parse_nifti_header(head)


def parse_nifti_header(head: bytes) -> NiftiHeader | None:
    """A :class:`NiftiHeader` from the first bytes of a NIfTI file; None when it is not one."""
    if len(head) < 348:
        return None
    for end in "<>":
        n = struct.unpack(end + "i", head[:4])[0]
        layout = _N1 if n == 348 else _N2 if n == 540 and len(head) >= 540 else None
        if layout is None:
            continue

        def get(key: str, layout: dict = layout, end: str = end) -> tuple:
            off, fmt = layout[key]
            return struct.unpack_from(end + fmt, head, off)

        return NiftiHeader(
            version=1 if n == 348 else 2,
            dim=tuple(int(v) for v in get("dim")),
            bitpix=int(get("bitpix")[0]),
            vox_offset=int(get("vox")[0]),
            pixdim=np.array(get("pixdim"), float),
            qform_code=int(get("codes")[0]),
            sform_code=int(get("codes")[1]),
            quatern=np.array(get("quatern"), float),
            qoffset=np.array(get("qoffset"), float),
            srow=np.array(get("srow"), float).reshape(3, 4),
        )
    return None


def check_nifti_size(p: Path, hdr: NiftiHeader | None) -> None:
    """Refuse an uncompressed .nii shorter than its header says (ITK zero-fills it)."""
    expected = hdr.expected_size() if hdr is not None else None
    size = p.stat().st_size
    if expected is not None and size < expected:
        raise CTReadError(
            f"{p}: the file is cut short: it holds {size:,} bytes where its header announces "
            f"{expected:,} ({100 * (expected - size) / expected:.0f}% of the image data "
            "missing); copy or export it again"
        )


def nifti_gz_complete(path: Path, hdr: NiftiHeader | None) -> bool:
    """False when a .nii.gz stream is cut short (ITK then reads it silently, zero-filled).

    Fast path: the gzip trailer's uncompressed size matches the size the NIfTI header
    announces. Otherwise the whole stream is decompressed to check it ends properly.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(size - 4)
            isize = struct.unpack("<I", f.read(4))[0]
        expected = hdr.expected_size() if hdr is not None else None
        if expected is not None and expected % 2**32 == isize:
            return True
        with gzip.open(path, "rb") as f:  # slow path: decompress to the end
            while f.read(1 << 24):
                pass
        return True
    except (OSError, EOFError, zlib.error, struct.error):
        return False


def nifti_transform(p: Path, hdr: NiftiHeader) -> tuple[np.ndarray | None, list[str]]:
    """The transform nibabel places the voxels with, and notes on header fields that
    disagree with it; checked before SimpleITK reads the file.

    The sform when ``sform_code`` > 0, else the qform when ``qform_code`` > 0 (both
    ``Nifti1Header.get_best_affine``); None with neither (SimpleITK's grid is kept).
    Notes say a ``pixdim`` or a qform that contradicts the sform used. Raises
    :class:`CTReadError` naming the field for a transform that cannot place a grid: a
    voxel size of zero or below in ``pixdim`` where the qform or nothing else gives one,
    a singular or sheared sform.
    """
    if hdr.sform_code > 0:
        affine = hdr.sform()
        _check_affine(p, affine, f"the sform (srow_x/y/z, sform_code {hdr.sform_code})", hdr)
        return affine, _sform_notes(hdr, affine)
    _check_pixdim(p, hdr)
    return (hdr.qform() if hdr.qform_code > 0 else None), []


def place(img: sitk.Image, affine: np.ndarray) -> sitk.Image:
    """``img`` with the voxel size, direction and origin of a RAS ``affine`` where
    SimpleITK's differ (it takes ``pixdim`` for the size, and sometimes the qform)."""
    m = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    u, _, vt = np.linalg.svd(m / spacing)
    direction = u @ vt  # the nearest rotation (rounding of the header's values)
    origin = _RAS_TO_LPS @ affine[:3, 3]
    same = (
        np.allclose(img.GetSpacing(), spacing, rtol=1e-4, atol=1e-6)
        and np.allclose(np.reshape(img.GetDirection(), (3, 3)), direction, atol=1e-4)
        and np.allclose(img.GetOrigin(), origin, atol=1e-3)
    )
    if not same:
        img.SetSpacing(tuple(float(v) for v in spacing))
        img.SetDirection(tuple(float(v) for v in direction.ravel()))
        img.SetOrigin(tuple(float(v) for v in origin))
    return img


def _check_pixdim(p: Path, hdr: NiftiHeader) -> None:
    """Refuse a voxel size of zero or below in pixdim[1..3] where nothing else gives one."""
    bad = [k for k in (1, 2, 3) if not np.isfinite(hdr.pixdim[k]) or hdr.pixdim[k] <= 0]
    if bad:
        k = bad[0]
        raise CTReadError(
            f"{p}: the NIfTI header's voxel size pixdim[{k}] is {hdr.pixdim[k]:g} "
            f"(pixdim[1..3] = {_fmt(hdr.pixdim[1:4])}) and no sform gives another "
            f"(sform_code 0): the spacing along axis {k} is unknown (SimpleITK would take "
            f"{'1 mm' if hdr.pixdim[k] == 0 else 'its absolute value'}). Set pixdim[{k}] to "
            "the voxel size in mm, e.g. with nibabel: img.header.set_zooms(...) and save "
            "again, and read it again"
        )


def _check_affine(p: Path, affine: np.ndarray, used: str, hdr: NiftiHeader) -> None:
    """Refuse a chosen transform that is singular or shears the grid."""
    m = affine[:3, :3]
    problem = direction_problem(m / np.maximum(np.linalg.norm(m, axis=0), 1e-12))
    if problem:
        alt = (
            "; if the qform is the right one, set sform_code to 0 (FSL: fslorient "
            "-setsformcode 0 FILE)"
            if hdr.qform_code > 0
            else ""
        )
        raise CTReadError(
            f"{p}: {used} {problem}. nibabel and this reader use the sform when "
            f"sform_code > 0: fix srow_x/y/z{alt}, and read it again"
        )


def _sform_notes(hdr: NiftiHeader, sform: np.ndarray) -> list[str]:
    """Notes on a qform or a pixdim that disagree with the sform that is used."""
    notes = []
    size = np.linalg.norm(sform[:3, :3], axis=0)
    pix = hdr.pixdim[1:4]
    if np.any(~np.isfinite(pix)) or np.any(np.abs(pix - size) > _PIXDIM_TOL * size):
        notes.append(
            f"the NIfTI header's voxel size pixdim[1..3] ({_fmt(pix)}) disagrees with its "
            f"sform ({_fmt(size)} mm): used the sform's, as nibabel does (sform_code "
            f"{hdr.sform_code} > 0); SimpleITK alone would take pixdim. Set pixdim[1..3] "
            "to the voxel size to silence this"
        )
    if hdr.qform_code > 0 and np.all(pix > 0):
        diff = _difference(sform, hdr.qform())
        if diff:
            notes.append(
                f"the NIfTI header's sform and qform disagree ({diff}): used the sform "
                f"(sform_code {hdr.sform_code}), as nibabel does (its img.affine); if the "
                "qform is the right one, set sform_code to 0 (FSL: fslorient -setsformcode "
                "0 FILE) or copy it over the sform (fslorient -copyqform2sform FILE)"
            )
    return notes


def _difference(sform: np.ndarray, qform: np.ndarray) -> str:
    """How two transforms differ in words ("" when they place the grid alike)."""
    ms, mq = sform[:3, :3], qform[:3, :3]
    ss, sq = np.linalg.norm(ms, axis=0), np.linalg.norm(mq, axis=0)
    ds, dq = ms / ss, mq / sq
    parts = []
    if np.max(np.abs(ds - dq)) > _SAME_COSINE:
        rel = ds.T @ dq
        if np.linalg.det(rel) < 0:
            parts.append("one is the mirror image of the other")
        else:
            angle = np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1)))
            parts.append(f"turned {angle:.1f} degrees against each other")
        parts.append(f"sform orientation {_axcodes(ds)}, qform {_axcodes(dq)}")
    if np.any(np.abs(ss - sq) > _SAME_SIZE * ss):
        parts.append(f"voxel sizes {_fmt(ss)} and {_fmt(sq)} mm")
    gap = float(np.linalg.norm(sform[:3, 3] - qform[:3, 3]))
    if gap > _SAME_ORIGIN_MM:
        parts.append(f"origins {gap:.1f} mm apart")
    return "; ".join(parts)


def _axcodes(d: np.ndarray) -> str:
    """RAS letters of the direction each index axis points to (nibabel's aff2axcodes)."""
    letters = ("LR", "PA", "IS")
    out = ""
    for j in range(3):
        i = int(np.argmax(np.abs(d[:, j])))
        out += letters[i][1] if d[i, j] > 0 else letters[i][0]
    return out


def _fmt(v: np.ndarray) -> str:
    return ", ".join(f"{x:.4g}" for x in v)
