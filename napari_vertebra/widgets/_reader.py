"""napari reader: CT volumes and label maps (NIfTI, NRRD, MHA/MHD, DICOM folder).

Volumes come in the canonical LPS orientation of :func:`napari_vertebra.core.io.read_ct`
with ``scale`` / ``translate`` in mm, so a CT and its label map overlay. Label maps
(integer, non-negative, few distinct values or piecewise constant; or an integer file
named like a mask) open as Labels layers; an 8-bit image with the texture of a CT is a
CT, which :func:`~napari_vertebra.core.io.check_ct` refuses with its message. Every folder
but a zarr store is this reader's: a DICOM series opens, any other folder gets a message
that says what it holds and how to open it otherwise. Errors become a napari
notification, never a traceback (nor another reader's).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from napari_vertebra.core.dicom import MultipleSeriesError, list_dicom_series
from napari_vertebra.core.errors import CTReadError
from napari_vertebra.core.io import check_ct, is_supported_path, read_volume
from napari_vertebra.core.volume import Volume

from ._layers import BONE_CONTRAST, layer_kwargs
from ._status import error_message, notify

__all__ = ["get_reader", "is_label_volume", "prefer_this_reader", "read_layer_data"]

#: The npe2 name of this plugin (napari.yaml), used for the reader preference.
PLUGIN_NAME = "napari-vertebra"

#: At most this many distinct values (all >= 0, integer) make a volume a label map.
MAX_LABEL_VALUES = 256
#: With more distinct values than this, a label map must be piecewise constant: at least
#: :data:`MIN_EQUAL_NEIGHBOURS` of its pairs of neighbouring non-zero voxels are equal
#: (label maps: 0.98 and more; a CT stored as 8 bits: 0.3 at most).
FEW_LABEL_VALUES = 32
MIN_EQUAL_NEIGHBOURS = 0.6
#: The reader preference pattern of every folder (napari matches it against the folder's
#: path and a trailing separator).
FOLDER_PATTERN = "*" + os.sep
_MASK_NAME = re.compile(r"(^|[^a-z])(seg|segmentation|msk|mask|labels?)([^a-z]|$)", re.I)
_CT_NAME = re.compile(r"(^|[^a-z])ct$", re.I)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_label_volume(array: np.ndarray, path: str | os.PathLike | None = None) -> bool:
    """True when ``array`` looks like a label map rather than a CT.

    A label map is integer and non-negative with at most :data:`MAX_LABEL_VALUES`
    distinct values, or integer with a file name that says so (``seg``, ``msk``,
    ``mask``, ``label``), unless the name ends in ``ct`` (e.g. ``sub-01_label-22_ct``).
    """
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        return False
    if array.dtype == bool:
        return True
    if path is not None:
        stem = _stem(Path(path))
        if _CT_NAME.search(stem):
            return False
    lo, hi = int(array.min(initial=0)), int(array.max(initial=0))
    if lo >= 0 and hi < 65536:
        sample = array[::2, ::2, :] if array.size > 4_000_000 else array
        n = np.unique(sample).size
        if n <= MAX_LABEL_VALUES and (hi <= 1024 or n <= FEW_LABEL_VALUES):
            return n <= FEW_LABEL_VALUES or _piecewise_constant(sample)
    if path is not None and _MASK_NAME.search(_stem(Path(path))):
        return lo >= 0
    return False


def _piecewise_constant(array: np.ndarray) -> bool:
    """Whether at least :data:`MIN_EQUAL_NEIGHBOURS` of the pairs of non-zero voxels next
    to each other (along the last axis) are equal, as in a label map."""
    a = np.asarray(array)
    if a.ndim == 0 or a.shape[-1] < 2:
        return True
    left, right = a[..., :-1], a[..., 1:]
    both = (left != 0) & (right != 0)
    n = int(np.count_nonzero(both))
    return n == 0 or np.count_nonzero((left == right) & both) >= MIN_EQUAL_NEIGHBOURS * n


def _read_volume(path: Path) -> tuple[Volume, str]:
    """Read ``path``; a DICOM folder with several series loads the largest, with a note."""
    try:
        return read_volume(path), ""
    except MultipleSeriesError as e:
        series = e.series or list_dicom_series(path)
        best = series[0]
        listing = "; ".join(
            f"{s.uid} ({s.n_files} files{', ' + s.description if s.description else ''})"
            for s in series
        )
        note = (
            f"{path.name}: {len(series)} DICOM series in this folder; loaded the largest "
            f"({best.n_files} slices{', ' + best.description if best.description else ''}). "
            f"Series: {listing}"
        )
        return read_volume(path, series=best.uid), note


def read_layer_data(path: str | os.PathLike) -> list[tuple]:
    """Layer-data tuples for one CT / label-map path (raises CTReadError on bad input)."""
    p = Path(path)
    if p.is_dir() and not _looks_like_dicom_folder(p):
        raise CTReadError(_not_dicom_message(p))
    volume, note = _read_volume(p)
    if note:
        notify(note, "warning")
    name = _stem(p) if p.is_file() else p.name
    meta = {"source_path": str(p)}
    if is_label_volume(volume.array, p):
        arr = volume.array
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        elif arr.dtype not in (np.uint8, np.uint16, np.int32, np.int64):
            arr = arr.astype(np.int32)
        kwargs = layer_kwargs(volume.with_array(arr), name=name, metadata=meta)
        return [(arr, kwargs, "labels")]
    volume = check_ct(volume, p)  # a CT: its values must be HU (corrections noted)
    if volume.warnings:
        notify(f"{name}: " + "; ".join(volume.warnings), "warning")
    arr = volume.array
    kwargs = layer_kwargs(
        volume,
        name=name,
        metadata=meta,
        colormap="gray",
        contrast_limits=BONE_CONTRAST,
    )
    return [(arr, kwargs, "image")]


def _reader_function(paths: str | Sequence[str]) -> list[tuple]:
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[tuple] = []
    for path in paths:
        try:
            out.extend(read_layer_data(path))
        except (CTReadError, ValueError, OSError, RuntimeError) as e:
            notify(_could_not_open(path, error_message(e)), "error")
    # [(None,)] tells napari the reader handled the path but has nothing to add
    # (the error was shown as a notification).
    return out or [(None,)]


def _could_not_open(path: str | os.PathLike, why: str) -> str:
    """The message for a path this reader cannot open: its name and why first (a
    notification shows the first words), the full path last."""
    full = str(path)
    for prefix in (full.rstrip(os.sep) + ":", full + ":"):
        if why.startswith(prefix):
            why = why[len(prefix) :].strip()
            break
    return f"napari-vertebra could not open {Path(full).name}: {why} ({full})"


def get_reader(path: str | Sequence[str]) -> Callable[..., list[tuple]] | None:
    """npe2 reader hook: a reader function for volume files / DICOM folders, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for p in paths:
        if not is_supported_path(p) or _is_zarr(Path(p)):
            return None
    return _reader_function


def _is_zarr(path: Path) -> bool:
    """True for a zarr store (napari's own reader opens those)."""
    if not path.is_dir():
        return False
    if path.name.lower().endswith(".zarr"):
        return True
    return any((path / n).is_file() for n in (".zgroup", ".zarray", "zarr.json"))


def _not_dicom_message(folder: Path, shown: int = 4) -> str:
    """Plain words for a folder that holds no DICOM file: what it holds, what to do."""
    try:
        names = sorted(f.name for f in folder.iterdir() if not f.name.startswith("."))
    except OSError as e:
        return f"{folder}: cannot list this folder ({e})"
    if not names:
        held = "it is empty"
    else:
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        held = f"it holds {', '.join(names[:shown])}{more}"
    volumes = [n for n in names if is_supported_path(folder / n) and (folder / n).is_file()]
    todo = (
        f"open the volume file itself (File > Open: {volumes[0]})"
        if volumes
        else "choose the folder of one DICOM series"
    )
    return (
        f"{folder}: no DICOM file in this folder ({held}). napari-vertebra opens DICOM "
        f"series folders and NIfTI / NRRD / MHA files: {todo}. To open this folder with "
        "another reader: File > Open with Plugin > Open Folder..."
    )


def _reader_patterns() -> list[str]:
    """The file-name patterns this plugin's reader declares in its manifest."""
    import yaml

    manifest = Path(__file__).resolve().parents[1] / "napari.yaml"
    data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    return [p for r in data["contributions"]["readers"] for p in r["filename_patterns"]]


def prefer_this_reader() -> list[str]:
    """Make this plugin napari's preferred reader for its CT patterns; returns those set.

    napari's "napari" (builtins) reader also claims ``*.nii.gz`` and friends, so File >
    Open and drag and drop ask which reader to use, preselect the built-in one, and it
    fails ("Could not find a backend"). Setting ``settings.plugins.extension2reader``
    (what the dialog's "remember" box does) removes the question. Folders get the
    pattern :data:`FOLDER_PATTERN` (the dialog can only remember one folder by its path,
    so a DICOM folder would ask every time): DICOM series open at once, other folders
    get this plugin's message, zarr stores go back to the dialog. A pattern the user has
    already given a reader is left alone. Called when any of the plugin's widgets, its
    sample or its launcher is first used.
    """
    from napari.settings import get_settings

    prefs = get_settings().plugins
    current = dict(prefs.extension2reader)
    added = [p for p in (*_reader_patterns(), FOLDER_PATTERN) if p not in current]
    if added:
        current.update(dict.fromkeys(added, PLUGIN_NAME))
        prefs.extension2reader = current
    return added


def _looks_like_dicom_folder(folder: Path, max_files: int = 20) -> bool:
    """True when one of the first files of ``folder`` is DICOM (``.dcm`` or ``DICM`` tag)."""
    try:
        files = [f for f in sorted(folder.iterdir())[:200] if f.is_file()][:max_files]
    except OSError:
        return False
    for f in files:
        if f.suffix.lower() == ".dcm":
            return True
        try:
            with open(f, "rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if head[128:132] == b"DICM":
            return True
    return False
