"""napari reader: CT volumes and label maps (NIfTI, NRRD, MHA/MHD, DICOM folder).

Volumes come in the canonical LPS orientation of :func:`napari_vertebra.core.io.read_ct`
with ``scale`` / ``translate`` in mm, so a CT and its label map overlay. Label maps
(integer, non-negative, few distinct values; or an integer file named like a mask) open
as Labels layers. Errors become a napari notification, never a traceback.
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
        sample = array[::2, ::2, ::2] if array.size > 4_000_000 else array
        n = np.unique(sample).size
        if n <= MAX_LABEL_VALUES and (hi <= 1024 or n <= 32):
            return True
    if path is not None and _MASK_NAME.search(_stem(Path(path))):
        return lo >= 0
    return False


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
            notify(f"napari-vertebra could not open {path}: {error_message(e)}", "error")
    # [(None,)] tells napari the reader handled the path but has nothing to add
    # (the error was shown as a notification).
    return out or [(None,)]


def get_reader(path: str | Sequence[str]) -> Callable[..., list[tuple]] | None:
    """npe2 reader hook: a reader function for volume files / DICOM folders, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for p in paths:
        if not is_supported_path(p):
            return None
        if Path(p).is_dir() and not _looks_like_dicom_folder(Path(p)):
            return None
    return _reader_function


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
    (what the dialog's "remember" box does) removes the question. A pattern the user has
    already given a reader is left alone. Called when any of the plugin's widgets, its
    sample or its launcher is first used.
    """
    from napari.settings import get_settings

    prefs = get_settings().plugins
    current = dict(prefs.extension2reader)
    added = [p for p in _reader_patterns() if p not in current]
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
