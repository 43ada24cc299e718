"""An autosaved annotation store for the annotate widget: one folder, many MIP images.

Layout::

    folder/project.json              index: {key: file_name, height, width, scan, meta}
    folder/images/<key>.png          the MIP, 16-bit PNG (see image_files.write_mip_png)
    folder/annotations/<key>.json    {"image": key, "annotations": [{"class": "L1",
                                      "class_id": 13, "polygons": [[[row, col], ...]],
                                      "score": null}]}

    folder/history/<key>/            undo / redo of the image's annotations: index.json
                                     and one snapshot per step (see annotation.history)

Every write goes to a temporary file in the same folder and is then renamed over the old
one, so a crash mid-save leaves the previous version intact. Keys are safe file names
(letters, digits, ``._-``; :func:`safe_key` makes one from any name).

Every :meth:`AnnotationProject.save` is one step of the image's history, whoever calls
it (drawing, import, labels from 3D, review), so that :meth:`~AnnotationProject.undo`
takes it back, also after a restart. The last :data:`~.history.MAX_STEPS` steps per image
are kept. With ``background=True`` the files are written on one background thread (in
order; reads wait for pending writes; a failed write is raised by the next save or read).

The annotation file and its history step are one unit: a save (and an undo or redo)
writes the step's snapshot, then the history index, then the annotation file, which
names the step it holds (``"step": id``). Reading an image's history (before its first
load or save in a process) makes the two agree, whatever moment a crash or kill -9
stopped the writes at: an annotation file one step behind its history (the last write
did not happen) is rewritten from the history's current step; a missing one is restored
from it; one that holds another state (an older file without ``step``, a hand edit, a
save outside the history) becomes a new step "changes found in the annotation file".
Each repair is said in :attr:`AnnotationProject.warnings`.

Opening a project checks its files (:mod:`~.project_files`): the index is repaired or
rebuilt from the image files, temporary files of interrupted writes are deleted, and
annotation files and history snapshots are validated when read (a ValueError naming the
file, the annotation and the polygon).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from ._atomic import atomic_write_text
from .coco import write_coco
from .history import MAX_STEPS, History, Writer, background_writer
from .image_files import HU_SCALE, read_image, write_mip_png
from .project_files import (
    INDEX_NAME,
    annotation_from_json,
    annotation_to_json,
    check_payload,
    read_annotation_file,
    read_index,
    remove_stale_temporaries,
    small_polygons,
)
from .regrid import mip_pixel_spacing
from .types import AnnotatedImage, VertebraAnnotation

__all__ = ["AnnotationProject", "safe_key"]

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def safe_key(name: str) -> str:
    """A safe image key from any name: other characters become ``_`` (e.g. a scan path
    ``"case 1/ct.nii.gz"`` -> ``"case_1_ct"``)."""
    s = str(name).replace("\\", "/")
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".json"):
        if s.lower().endswith(suffix):
            s = s[: -len(suffix)]
            break
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._-")
    return (s or "image")[:200]


def _is_key(key: object) -> bool:
    return isinstance(key, str) and bool(_KEY_RE.match(key)) and ".." not in key


def _check_key(key: str) -> str:
    if not _is_key(key):
        raise ValueError(
            f"image key {key!r} is not a safe file name (letters, digits, '._-', not "
            "starting with '.'); use safe_key()"
        )
    return key


_UNCHANGED = "; the annotations are unchanged"


#: Histories shared by every project object on the same folder in this process (so that
#: the Annotate and Review widgets, each with a project, undo one history).
_HISTORIES: dict[tuple[str, str], History] = {}


class AnnotationProject:
    """Autosaved per-image annotations and their MIPs in ``folder`` (created if needed)."""

    def __init__(
        self, folder: str | os.PathLike, background: bool = False, max_steps: int = MAX_STEPS
    ):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder}: not a folder")
        self.max_steps = int(max_steps)
        self._writer = background_writer() if background else Writer()
        #: What opening and reading the project repaired, in plain words (oldest first).
        self.warnings: list[str] = []
        self._taken = 0
        self._flush()
        remove_stale_temporaries(self.folder)
        self._index, notes, changed = read_index(self.folder, _is_key)
        self.warnings.extend(notes)
        if changed:
            self._write_index()

    def _flush(self) -> None:
        """Wait for pending background writes (of any project in this process), so that
        a read sees every save; a failed write is raised by the saver's next save/flush."""
        from . import history

        if history._BACKGROUND is not None:
            history._BACKGROUND.wait()

    def flush(self) -> None:
        """Wait until every save so far is on disk (raises the error of a failed one)."""
        self._flush()
        self._writer.flush()

    def close(self) -> None:
        """Flush, and forget this folder's histories (the next project reads the disk)."""
        self.flush()
        root = str(self.folder.resolve())
        for k in [k for k in _HISTORIES if k[0] == root]:
            del _HISTORIES[k]

    # -- index
    @property
    def _index_path(self) -> Path:
        return self.folder / INDEX_NAME

    def take_warnings(self) -> list[str]:
        """The warnings not taken yet (see :attr:`warnings`), oldest first."""
        new, self._taken = self.warnings[self._taken :], len(self.warnings)
        return new

    def _write_index(self) -> None:
        atomic_write_text(
            self._index_path,
            json.dumps({"version": 1, "images": self._index}, indent=1, default=str),
        )

    def _ann_path(self, key: str) -> Path:
        return self.folder / "annotations" / f"{_check_key(key)}.json"

    # -- public
    def list_images(self) -> list[str]:
        """Keys of the stored images, sorted."""
        return sorted(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def add_image(
        self,
        key: str,
        mip: np.ndarray,
        scan: str | None = None,
        meta: dict | None = None,
        hu_scale: float = HU_SCALE,
        overwrite: bool = False,
    ) -> AnnotatedImage:
        """Store a 2D MIP (float, windowed HU) under ``key`` as a 16-bit PNG.

        The image is written once: if ``key`` is already stored with the same shape it is
        kept unless ``overwrite``; a different shape raises ValueError (saved polygons
        would not fit). Returns the stored image (pixels as given, no annotations).
        """
        _check_key(key)
        mip = np.asarray(mip)
        if mip.ndim != 2:
            raise ValueError(f"add_image({key!r}): expected a 2D MIP, got shape {mip.shape}")
        old = self._index.get(key)
        if old is not None and (old["height"], old["width"]) != mip.shape:
            raise ValueError(
                f"{self.folder}: image {key!r} is stored as {old['height']}x{old['width']}, "
                f"the new one is {mip.shape[0]}x{mip.shape[1]}"
            )
        file_name = f"images/{key}.png"
        if old is None or overwrite or not (self.folder / file_name).is_file():
            write_mip_png(self.folder / file_name, mip, hu_scale)
        self._index[key] = {
            "file_name": file_name,
            "height": int(mip.shape[0]),
            "width": int(mip.shape[1]),
            "scan": scan if scan is not None else (old or {}).get("scan", key),
            "hu_scale": float(hu_scale),
            "meta": dict(meta if meta is not None else (old or {}).get("meta", {})),
        }
        self._write_index()
        return AnnotatedImage(
            file_name,
            mip.shape[0],
            mip.shape[1],
            [],
            mip,
            self._index[key]["scan"],
            dict(self._index[key]["meta"], hu_scale=float(hu_scale)),
        )

    def fill_meta(self, key: str, meta: dict) -> bool:
        """Record the entries of ``meta`` that image ``key`` does not record yet (never
        overwriting one); True when something was added."""
        stored = self._index[_check_key(key)]["meta"]
        new = {k: v for k, v in meta.items() if k not in stored}
        if new:
            stored.update(new)
            self._write_index()
        return bool(new)

    # -- annotations and their history
    def history(self, key: str) -> History:
        """The undo history of image ``key`` (shared by the project objects of a folder),
        made to agree with the annotation file when first read (see the module doc)."""
        _check_key(key)
        root = str(self.folder.resolve())
        hist = _HISTORIES.get((root, key))
        if hist is None:
            self._flush()
            hist = History(self.folder / "history" / key, self.max_steps, self._writer)
            hist.check = partial(check_payload, what="history snapshot", hint=_UNCHANGED)
            _HISTORIES[(root, key)] = hist
            if hist.warning:
                self.warnings.append(hist.warning)
            self._reconcile(key, hist)
        return hist

    def _reconcile(self, key: str, hist: History) -> None:
        """Make the annotation file of ``key`` and the current step of ``hist`` agree."""
        path = self._ann_path(key)
        try:
            found = read_annotation_file(path)
        except ValueError:
            return  # load() refuses it, naming the file
        current = hist.payload() if len(hist) else None
        if current is not None:
            try:
                check_payload(current, path, "history snapshot")
            except ValueError:
                current = None
        if found is None:
            if current is not None and current != []:
                self._write_payload(key, current, hist.current_id)
                self.warnings.append(f"{path} was missing: restored from the undo history")
            return
        payload, step = found
        if hist.cursor_lost and step is not None and hist.move_to(step):
            current = hist.payload()
        if current is not None and payload == current:
            if step != hist.current_id:
                self._write_payload(key, current, hist.current_id)
            return
        behind = hist.index_of(step) is not None and payload == hist.payload(hist.index_of(step))
        if current is not None and behind:  # the last write (of an interrupted save) is missing
            self._write_payload(key, current, hist.current_id)
            label = hist.steps[hist.cursor]["label"]
            self.warnings.append(
                f"{path}: the last change ({label!r}) had not reached the annotation file "
                "when napari-vertebra stopped: restored from the undo history"
            )
            return
        if len(hist):
            hist.record(payload, "changes found in the annotation file")
            self._write_payload(key, payload, hist.current_id)

    def _write_payload(self, key: str, payload: list[dict], step: int | None) -> Path:
        path = self._ann_path(key)
        data = {"image": key, "step": step, "annotations": payload}  # encoded on the writer
        self._writer.submit(lambda: atomic_write_text(path, json.dumps(data, indent=1)))
        return path

    def save(
        self,
        key: str,
        annotations: Sequence[VertebraAnnotation],
        label: str = "edit",
        record: bool = True,
    ) -> Path:
        """Save the annotations of image ``key`` (atomic; replaces the previous save).

        The change is a step of the image's history named ``label`` (e.g. "draw L3"),
        unless ``record`` is False. Returns the annotation file's path.
        """
        _check_key(key)
        self._raise_failed()
        payload = [annotation_to_json(a) for a in annotations]
        check_payload(payload, self._ann_path(key), "annotations to save", "; nothing was saved")
        step = None
        if record:
            hist = self.history(key)
            base = None
            if len(hist) == 0:  # the state saved before this history began
                base = self._read_payload(key)
            hist.record(payload, label, base=base)
            step = hist.current_id
        return self._write_payload(key, payload, step)

    def _raise_failed(self) -> None:
        """Raise the error of a failed background write, without waiting."""
        errors = self._writer._errors
        if errors:
            err = errors.pop(0)
            raise err

    def _read_payload(self, key: str) -> list[dict]:
        self._flush()
        path = self._ann_path(key)
        hist_dir = self.folder / "history" / key
        hint = ""
        if (hist_dir / "index.json").is_file():
            hint = (
                f". Fix the file, or delete it to restore the last state of the undo "
                f"history ({hist_dir})"
            )
        found = read_annotation_file(path, hint)
        if found is None:
            return []
        for note in small_polygons(found[0]):
            msg = f"{path}: {note}: kept as saved (Export leaves it out)"
            if msg not in self.warnings:
                self.warnings.append(msg)
        return found[0]

    def load(self, key: str) -> list[VertebraAnnotation]:
        """The saved annotations of image ``key`` ([] when none were saved); ValueError
        naming the file, annotation and polygon for a file that is not valid."""
        self.history(key)  # the annotation file agrees with the history
        return [annotation_from_json(a) for a in self._read_payload(key)]

    def can_undo(self, key: str) -> bool:
        """Whether image ``key`` has a change to undo."""
        return self.history(key).can_undo

    def can_redo(self, key: str) -> bool:
        """Whether image ``key`` has an undone change to redo."""
        return self.history(key).can_redo

    def undo(self, key: str) -> list[VertebraAnnotation] | None:
        """Take back the last change of image ``key``: saves and returns the annotations
        before it, or None when there is nothing to undo."""
        return self._step(key, self.history(key).undo())

    def redo(self, key: str) -> list[VertebraAnnotation] | None:
        """Bring back the last undone change of image ``key`` (None when none)."""
        return self._step(key, self.history(key).redo())

    def _step(self, key: str, payload: list[dict] | None) -> list[VertebraAnnotation] | None:
        if payload is None:
            return None
        self._write_payload(key, payload, self.history(key).current_id)
        return [annotation_from_json(a) for a in payload]

    def image(self, key: str, load_pixels: bool = True) -> AnnotatedImage:
        """Image ``key`` with its saved annotations (and pixels in float HU if asked)."""
        self._flush()
        if key not in self._index:
            raise KeyError(f"{self.folder}: no image {key!r}")
        e = self._index[key]
        pixels = None
        if load_pixels:
            pixels = read_image(self.folder / e["file_name"], hu_scale=e["hu_scale"])
        meta = dict(e.get("meta") or {}, hu_scale=e["hu_scale"])
        grid_spacing = mip_pixel_spacing(meta.get("mip_grid"))  # a MIP of Preprocess CT
        if "spacing_mm" not in meta and grid_spacing is not None:
            meta["spacing_mm"] = grid_spacing
        return AnnotatedImage(
            e["file_name"], e["height"], e["width"], self.load(key), pixels, e.get("scan"), meta
        )

    def images(self, keys: Iterable[str] | None = None, load_pixels: bool = False):
        """The stored images (all or ``keys``) with their annotations."""
        return [self.image(k, load_pixels) for k in (self.list_images() if keys is None else keys)]

    def export_coco(self, out_dir: str | os.PathLike, json_name: str = "annotations.json") -> Path:
        """Write the whole project as COCO (``out_dir/json_name`` + ``images/*.png``)."""
        return write_coco(self.images(load_pixels=True), out_dir, json_name)
